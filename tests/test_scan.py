"""Scanned blocks (``scan_blocks=True``, jaxcnn.models.scan): with the same weights (stacked by
``stack_blocks``) a scanned model computes what the unscanned one does, in eval and train mode,
with the same gradients and BatchNorm statistics; the converters are inverse; stochastic depth
keeps its per-block schedule; weights load through jaxcnn.interop. Tiny models, a few seconds."""

import json
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import models
from jaxcnn.interop import from_torch_state_dict, load_variables, to_torch_state_dict
from jaxcnn.interop.files import save_variables
from jaxcnn.models.convnext import ConvNeXt
from jaxcnn.models.resnet import BasicBlock, Bottleneck, ResNet
from jaxcnn.models.scan import is_stacked, scan_groups, stack_blocks, unstack_blocks
from jaxcnn.models.vit import VisionTransformer
from jaxcnn.train.remat import remat_blocks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _resnet(**kw):
    return ResNet(stage_sizes=(2, 3), block_cls=Bottleneck, num_filters=4, num_classes=5, **kw)


def _resnet_basic(**kw):
    return ResNet(stage_sizes=(1, 3), block_cls=BasicBlock, num_filters=4, num_classes=5, **kw)


def _vit(**kw):
    cfg = dict(patch_size=4, img_size=16, hidden_dim=16, depth=3, num_heads=2, mlp_dim=32)
    return VisionTransformer(num_classes=5, **{**cfg, **kw})


def _convnext(**kw):
    # layer_scale 1 (not 1e-6) so that every block changes the output visibly; plain XLA
    # convolutions: the scan is what is compared here, and the default path's sliced 7x7
    # depthwise convolutions (the same function, tests/test_fast_conv.py) are slow to compile
    cfg = {
        "depths": (2, 3),
        "dims": (8, 16),
        "drop_path_rate": 0.0,
        "layer_scale": 1.0,
        "conv_impl": "xla",
    }
    return ConvNeXt(**{**cfg, **kw})


# (builder, input side): ConvNeXt needs 32 pixels
FAMILIES = {
    "resnet": (_resnet, 16),
    "resnet_basic": (_resnet_basic, 16),
    "vit": (_vit, 16),
    "convnext": (_convnext, 32),
}


def _x(side, n=2):
    return jax.random.normal(jax.random.key(1), (n, side, side, 3))


def _pair(family, **kw):
    build, side = FAMILIES[family]
    plain, scanned = build(**kw), build(scan_blocks=True, **kw)
    x = _x(side)
    v = _random_head(plain.init(jax.random.key(0), x))
    return plain, scanned, v, stack_blocks(v, plain), x


def _random_head(v):
    """ViT zero-initialises its head: a random one makes the logits depend on everything."""
    head = v["params"]["head"]
    kernel = jax.random.normal(jax.random.key(3), head["kernel"].shape)
    return {**v, "params": {**v["params"], "head": {**head, "kernel": kernel}}}


def _run(model, variables, x, train):
    if not train:
        return model.apply(variables, x), {}
    out, upd = model.apply(
        variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(2)}
    )
    return out, upd


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_scanned_tree_matches_stacked_and_counts(family):
    plain, scanned, v, vs, x = _pair(family)
    abstract = jax.eval_shape(lambda: scanned.init(jax.random.key(0), x))
    chex.assert_trees_all_equal_shapes_and_dtypes(abstract, vs)
    assert models.count_params(vs["params"]) == models.count_params(v["params"])
    assert is_stacked(vs, plain) and not is_stacked(v, plain)
    chex.assert_trees_all_equal(unstack_blocks(vs, scanned), v)  # round trip, both ways
    chex.assert_trees_all_equal(stack_blocks(unstack_blocks(vs, plain), plain), vs)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_same_outputs_and_batch_stats(family, train):
    plain, scanned, v, vs, x = _pair(family)
    a, ua = _run(plain, v, x, train)
    b, ub = _run(scanned, vs, x, train)
    chex.assert_trees_all_close(a, b, atol=2e-5, rtol=2e-5)
    if ua:  # BatchNorm statistics updated in the scan, row by row
        chex.assert_trees_all_close(unstack_blocks(ub, scanned), ua, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("remat", [False, True], ids=["scan", "scan_remat"])
def test_same_gradients(family, remat):
    build, side = FAMILIES[family]
    plain = build()
    scanned = build(scan_blocks=True, scan_remat=remat)
    x = _x(side)
    v = _random_head(plain.init(jax.random.key(0), x))
    vs = stack_blocks(v, plain)

    def grads(model, variables):
        def loss(p):
            out, _ = _run(model, {**variables, "params": p}, x, True)
            return jnp.sum(out**2) + jnp.sum(jnp.sin(out))

        return jax.jit(jax.grad(loss))(variables["params"])

    g, gs = grads(plain, v), grads(scanned, vs)
    scale = max(float(jnp.abs(a).max()) for a in jax.tree.leaves(g))
    assert scale > 0
    # float32 rounding of sums taken in another order, relative to the largest gradient
    # (BatchNorm biases followed by another BatchNorm have gradients of pure rounding noise)
    chex.assert_trees_all_close(
        unstack_blocks({"params": gs}, plain)["params"], g, atol=1e-5 * scale, rtol=1e-4
    )


@pytest.mark.parametrize("family", ["vit", "convnext"])
def test_drop_path_schedule_is_kept_per_block(family):
    """Rates 0 .. 1 over two blocks (endpoint schedule): the first block is never dropped, the
    last always, so the train-mode outputs are deterministic and equal; a scan sharing one rate
    between the blocks would differ."""
    kw = {"depth": 2} if family == "vit" else {"depths": (2,), "dims": (8,)}
    plain, scanned, v, vs, x = _pair(family, drop_path_rate=1.0, **kw)
    a, _ = _run(plain, v, x, True)
    b, _ = _run(scanned, vs, x, True)
    chex.assert_trees_all_close(a, b, atol=2e-5, rtol=2e-5)
    no_drop, _ = _run(scanned.clone(drop_path_rate=0.0), vs, x, True)
    assert float(jnp.abs(no_drop - b).max()) > 1e-4  # the last block was dropped


def test_scanned_drop_path_draws_per_sample():
    """Rate 0.5 on the last block (0 on the first): of 128 identical images, each of the four
    keep/drop combinations of its two branches (attention, MLP) turns up about 32 times."""
    _, scanned, _, vs, _ = _pair("vit", depth=2, drop_path_rate=0.5)
    x = jnp.broadcast_to(_x(16, 1), (128, 16, 16, 3))
    out, _ = _run(scanned, vs, x, True)
    rows = np.round(np.asarray(out), 3)
    values, counts = np.unique(rows, axis=0, return_counts=True)
    assert len(values) == 4 and counts.min() >= 12, counts


@pytest.mark.parametrize("family", ["vit", "convnext"])
def test_bfloat16_with_scanned_drop_path_rates(family):
    """A traced drop-path rate scales in the activations' dtype (the scan's carry keeps it)."""
    build, side = FAMILIES[family]
    model = build(scan_blocks=True, dtype=jnp.bfloat16, drop_path_rate=0.3)
    x = _x(side)
    out, _ = _run(model, model.init(jax.random.key(0), x), x, True)
    assert out.dtype == jnp.bfloat16


def test_scanned_attention_maps_are_stacked():
    _, scanned, _, vs, x = _pair("vit")
    _, inter = scanned.apply(vs, x, mutable=["intermediates"])
    (att,) = inter["intermediates"]["blocks"]["attn"]["attention"]
    assert att.shape == (3, 2, 2, 17, 17)  # (blocks, batch, heads, tokens, tokens)


def test_remat_blocks_of_the_trainer_works_with_scan():
    plain, scanned, v, vs, x = _pair("resnet")
    a, _ = _run(plain, v, x, True)
    b, _ = _run(remat_blocks(scanned), vs, x, True)
    chex.assert_trees_all_close(a, b, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize(
    "name,groups",
    [
        ("resnet101", (("stage1", 1, 2), ("stage2", 1, 3), ("stage3", 1, 22), ("stage4", 1, 2))),
        ("vit_l_16", (("", 0, 24),)),
        ("convnext_large", tuple((f"stage{i + 1}", 0, n) for i, n in enumerate((3, 3, 27, 3)))),
    ],
)
def test_registered_models_scan_with_reference_counts(name, groups):
    assert scan_groups(name) == groups
    info = models.model_info(name)
    assert models.count_params(name, scan_blocks=True) == info.params


def test_bad_combinations_raise():
    x = _x(16)
    with pytest.raises(ValueError, match="scan_remat=True .* needs scan_blocks=True"):
        _resnet(scan_remat=True).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="densenet121: scan_blocks .* dense layers"):
        models.create_model("densenet121", scan_blocks=True)
    with pytest.raises(ValueError, match="not swin"):
        models.create_model("swin_t", scan_remat=True)
    models.create_model("densenet121", scan_blocks=False)  # off is accepted everywhere
    plain, scanned, v, vs, _ = _pair("resnet")
    with pytest.raises(ValueError, match="already stacked"):
        stack_blocks(vs, plain)
    deeper = ResNet(stage_sizes=(2, 4), block_cls=Bottleneck, num_filters=4, num_classes=5)
    with pytest.raises(ValueError, match="stacked along \\[2\\] blocks, the model scans 3"):
        unstack_blocks(vs, deeper)
    with pytest.raises(ValueError, match="missing"):
        stack_blocks(v, deeper)
    with pytest.raises(ValueError, match="no scanned blocks"):
        stack_blocks(v, models.create_model("densenet121"))


def test_interop_loads_into_and_exports_from_a_scanned_model(tmp_path):
    plain, scanned, v, vs, x = _pair("resnet")
    shape = x.shape[1:]
    sd = to_torch_state_dict(plain, v, input_shape=shape)
    assert any(k.startswith("layer2.2.") for k in sd)  # torchvision names of block 2
    got = from_torch_state_dict(scanned, sd, input_shape=shape)
    chex.assert_trees_all_close(got, vs)
    chex.assert_trees_all_close(to_torch_state_dict(scanned, vs, input_shape=shape), sd)
    # a scanned run's variables (its options recorded: they do not bind the loading model) ...
    save_variables(tmp_path / "scanned", vs, {"model_kwargs": {"scan_blocks": True}})
    chex.assert_trees_all_close(load_variables(tmp_path / "scanned", plain, input_shape=shape), v)
    save_variables(tmp_path / "plain", v)  # ... and a converted unscanned checkpoint
    chex.assert_trees_all_close(load_variables(tmp_path / "plain", scanned, input_shape=shape), vs)


def _benchmark(tmp_path, *flags):
    out = tmp_path / "compile.json"
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.benchmark_compile", "--quick", "--json", str(out)]
        + list(flags),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [r["scan_blocks"] for r in rows] == [False, True]
    assert "scan=on" in proc.stdout and "scan=off" in proc.stdout
    return rows


def test_benchmark_compile_quick_cold(tmp_path):
    """The cold measurement (two fresh processes, the persistent cache off)."""
    rows = _benchmark(tmp_path, "--no-warm")
    for r in rows:
        assert r["cold_lower_s"] > 0 and r["cold_compile_s"] > 0 and "warm_start_s" not in r
    assert rows[1]["stablehlo_lines"] < rows[0]["stablehlo_lines"]  # 4 blocks, one body


@pytest.mark.slow
def test_benchmark_compile_quick(tmp_path):
    """Cold and warm starts: six processes (~40 s on a busy 2-core machine)."""
    for r in _benchmark(tmp_path):
        assert r["cold_compile_s"] > 0 and r["warm_start_s"] > 0
        assert r["warm_compile_s"] < r["cold_compile_s"]  # the second start hit the cache
        assert r["warm_ready_s"] == pytest.approx(r["warm_lower_s"] + r["warm_compile_s"])


def test_interop_create_model_with_scan_blocks():
    """``jaxcnn.interop.create_model(name, pretrained, scan_blocks=True)``: the weights go into
    the unscanned model, the returned model scans and its variables are stacked."""
    from jaxcnn.interop import create_model as pretrained_model

    name, shape = "resnet18_cifar", (32, 32, 3)
    abstract = models.abstract_variables(models.create_model(name), (1, *shape))
    rng = np.random.default_rng(0)
    v = jax.tree.map(lambda a: rng.normal(size=a.shape).astype(np.float32), abstract)
    sd = to_torch_state_dict(name, v)
    model, got = pretrained_model(name, sd, scan_blocks=True)
    assert model.scan_blocks and got["params"]["stage2"]["blocks"]["conv1"]["kernel"].ndim == 5
    chex.assert_trees_all_close(unstack_blocks(got, model), v)
