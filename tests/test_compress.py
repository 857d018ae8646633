"""jaxcnn.compress: int8 quantization, magnitude pruning, ensembles (and experiments.evaluate)."""

import dataclasses
import json
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcnn import models
from jaxcnn.checkpoint import Checkpointer
from jaxcnn.compress import (
    Ensemble,
    apply_masks,
    ensemble_probs,
    get_masks,
    magnitude_masks,
    magnitude_pruning,
    polynomial_sparsity,
    prunable_paths,
    quantize,
    quantize_weights,
    sparsity_report,
    tree_nbytes,
)
from jaxcnn.train import create_train_state, make_train_step


def _lenet(seed=0):
    model = models.create_model("lenet5_modern")
    variables = model.init(jax.random.key(seed), jnp.zeros((1, 28, 28, 1)))
    return model, variables


def _images(n=32, seed=0):
    return jax.random.normal(jax.random.key(100 + seed), (n, 28, 28, 1))


def _kernel_count(params) -> int:
    return len(prunable_paths(params))


# ------------------------------------------------------------------------------ quantization
@pytest.mark.parametrize("mode,tol", [("weights", 0.02), ("dynamic", 0.05), ("static", 0.1)])
def test_quantized_logits_close_to_float_on_fixed_input(mode, tol):
    model, variables = _lenet()
    x = _images(32)
    ref = model.apply(variables, x)
    kw = {
        "weights": {},
        "dynamic": {"input_shape": (28, 28, 1)},
        "static": {"calibration": np.asarray(_images(64, seed=1)), "calibration_batch_size": 32},
    }[mode]
    qm = quantize(model, variables, mode, **kw)
    out = qm(x)
    rel = float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref))
    # quantized (not identical), yet close; static scales are per tensor, fixed beforehand
    assert 0 < rel < tol, rel
    assert float(jnp.mean(out.argmax(-1) == ref.argmax(-1))) >= 0.9
    leaves = jax.tree.leaves(qm.variables["params"])
    assert sum(x.dtype == jnp.int8 for x in leaves) == _kernel_count(variables["params"]) == 5
    assert qm.nbytes < tree_nbytes(variables) / 3.5  # int8 kernels: ~4x smaller
    assert model.conv_impl == "fast"  # the float model is left as it was


def test_every_kernel_of_a_depthwise_bn_model_is_quantized():
    # MobileNet v2's depthwise convs take the fast (sliced) path by default; the quantized
    # model runs XLA convs (conv_impl="xla") so Qwix sees (and quantizes) them too.
    model = models.create_model("mobilenet_v2", num_classes=10, small_input=True, width_mult=0.25)
    # the float model's variables and reference logits through its XLA twin, jitted: the same
    # function (tests/test_fast_conv.py), without dispatching the sliced path op by op
    twin = model.clone(conv_impl="xla")
    variables = jax.jit(twin.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    qm = quantize(model, variables, "dynamic", input_shape=(32, 32, 3))
    int8 = [
        x for x in jax.tree.leaves(qm.variables["params"]) if getattr(x, "dtype", None) == jnp.int8
    ]
    assert len(int8) == _kernel_count(variables["params"]) > 50
    assert qm.module.conv_impl == "xla" and model.conv_impl == "fast"
    x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
    ref = jax.jit(twin.apply)(variables, x)
    rel = float(jnp.linalg.norm(qm(x) - ref) / jnp.linalg.norm(ref))
    assert 0 < rel < 0.1, rel


def test_weight_quantization_is_per_output_channel_symmetric_int8():
    w = jax.random.normal(jax.random.key(0), (3, 3, 4, 8)) * jnp.arange(1, 9)  # channel scales
    q = quantize_weights({"conv": {"kernel": w, "bias": jnp.ones(8)}})["conv"]
    k = q["kernel"]
    assert k.qvalue.dtype == jnp.int8 and k.scale.shape == (1, 1, 1, 8)
    # Qwix's symmetric int8: scale = absmax / 127.5 per channel, values rounded and clipped to
    # [-128, 127]: every channel uses the full range
    np.testing.assert_allclose(k.scale.reshape(-1), jnp.abs(w).max((0, 1, 2)) / 127.5, rtol=1e-6)
    qmax = jnp.abs(k.qvalue.astype(jnp.int32)).max((0, 1, 2))
    assert bool(jnp.all((qmax == 127) | (qmax == 128)))
    err = jnp.abs(k.qvalue * k.scale - w)
    assert bool(jnp.all(err <= k.scale / 2 + 1e-6))
    assert q["bias"] is not None and q["bias"].dtype == jnp.float32  # biases stay float


def test_quantize_rejects_bad_arguments():
    model, variables = _lenet()
    with pytest.raises(ValueError, match="mode must be one of"):
        quantize(model, variables, "int8")
    with pytest.raises(ValueError, match="needs a calibration set"):
        quantize(model, variables, "static")
    with pytest.raises(ValueError, match="input_shape"):
        quantize(model, variables, "dynamic")
    with pytest.raises(ValueError, match="smaller than one batch"):
        quantize(model, variables, "static", calibration=np.zeros((8, 28, 28, 1), np.float32))


def test_skipped_layers_stay_float():
    model, variables = _lenet()
    qm = quantize(model, variables, "dynamic", input_shape=(28, 28, 1), skip=("c1", "head"))
    p = qm.variables["params"]
    assert p["c1"]["kernel"].dtype == jnp.float32 and p["head"]["kernel"].dtype == jnp.float32
    assert p["c3"]["kernel"].array.qvalue.dtype == jnp.int8


# ----------------------------------------------------------------------------------- pruning
@pytest.mark.parametrize("sparsity", [0.5, 0.7, 0.9])
def test_pruned_fraction_is_exact(sparsity):
    _, variables = _lenet()
    params = variables["params"]
    sizes = {p: np.asarray(x).size for p, x in _flat(params).items() if p.endswith("kernel")}
    total = sum(sizes.values())
    g = sparsity_report(apply_masks(params, magnitude_masks(params, sparsity)))
    assert g["zeros"] == round(sparsity * total) and g["size"] == total == 61_470
    # global: the pruned weights are the smallest ones
    flat, masks = _flat(params), _flat(magnitude_masks(params, sparsity))
    pruned = np.concatenate([np.abs(flat[p])[~np.asarray(masks[p])] for p in sizes])
    kept = np.concatenate([np.abs(flat[p])[np.asarray(masks[p])] for p in sizes])
    assert pruned.max() <= kept.min()
    layer = sparsity_report(apply_masks(params, magnitude_masks(params, sparsity, scope="layer")))
    for p, n in sizes.items():
        assert layer["layers"][p]["zeros"] == round(sparsity * n), p
    # biases are never pruned
    biased = jax.tree.map(lambda p: p + 1.0, params)
    kept = apply_masks(biased, magnitude_masks(biased, 0.9))
    assert all(bool(jnp.all(kept[k]["bias"] == biased[k]["bias"])) for k in kept)


def test_exact_count_with_tied_magnitudes_and_include_exclude():
    params = {"a": {"kernel": jnp.ones((10, 10))}, "b": {"kernel": jnp.ones((5, 4))}}
    rep = sparsity_report(apply_masks(params, magnitude_masks(params, 0.33)))
    assert rep["zeros"] == round(0.33 * 120)
    only_a = magnitude_masks(params, 0.5, exclude="b/.*")
    assert bool(jnp.all(only_a["b"]["kernel"])) and int((~only_a["a"]["kernel"]).sum()) == 50
    with pytest.raises(ValueError, match="no prunable weights"):
        magnitude_masks(params, 0.5, include="nothing/.*")
    with pytest.raises(ValueError, match="sparsity must be in"):
        magnitude_masks(params, 1.0)


def _flat(tree):
    from jaxcnn.compress.prune import _flat as flat

    return flat(tree)


def _train_setup(tx):
    model = models.create_model("lenet5_modern")
    state = create_train_state(model, tx, (1, 28, 28, 1), seed=0)
    x = _images(16)
    batch = {"image": x, "label": jnp.arange(16) % 10, "mask": jnp.ones(16)}
    return state, make_train_step(), batch


def _gradual_tx():
    return optax.chain(
        optax.adam(1e-2),
        magnitude_pruning(polynomial_sparsity(0.8, begin_step=0, end_step=6), update_every=2),
    )


def test_fixed_masks_keep_pruned_weights_zero_through_fine_tuning():
    _, variables = _lenet()
    masks = magnitude_masks(variables["params"], 0.7)
    tx = optax.chain(optax.adam(1e-2), magnitude_pruning(masks=masks))
    state, step, batch = _train_setup(tx)
    state = state.replace(params=apply_masks(state.params, masks))
    before = jax.tree.map(jnp.copy, state.params)
    for _ in range(5):
        state, _ = step(state, batch)
    rep = sparsity_report(state.params)
    assert rep["zeros"] == round(0.7 * rep["size"])  # adam's momentum cannot revive them
    moved = jax.tree.map(lambda a, b, m: bool(jnp.any((a != b) & m)), state.params, before, masks)
    assert any(jax.tree.leaves(moved))  # the kept weights do train


def test_gradual_pruning_reaches_the_final_sparsity_and_masks_only_grow():
    state, step, batch = _train_setup(_gradual_tx())
    n = sparsity_report(state.params)["size"]
    seen, prev = [], None
    for _ in range(9):
        state, _ = step(state, batch)
        masks = jax.tree.map(np.asarray, get_masks(state.opt_state))  # the step donates buffers
        if prev is not None:  # a pruned weight is never revived
            assert all(
                jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.all(a <= b)), masks, prev))
            )
        prev = masks
        seen.append(sparsity_report(state.params)["zeros"])
    assert seen == sorted(seen) and seen[0] < seen[-1]
    assert seen[-1] == round(0.8 * n)


def test_masks_survive_checkpoint_resume(tmp_path):
    full, step, batch = _train_setup(_gradual_tx())
    for _ in range(10):
        full, _ = step(full, batch)

    part, _, _ = _train_setup(_gradual_tx())
    for _ in range(4):
        part, _ = step(part, batch)
    ckpt = Checkpointer(tmp_path / "ckpt", keep=2, keep_best=0)
    ckpt.save(4, part)
    ckpt.close()
    part_masks = jax.tree.map(jnp.copy, get_masks(part.opt_state))
    template, _, _ = _train_setup(_gradual_tx())  # fresh: all-True masks, step 0
    ckpt = Checkpointer(tmp_path / "ckpt", keep=2, keep_best=0)
    restored = ckpt.restore(template)
    ckpt.close()
    resumed = restored[0]
    assert int(restored[1]) == 4 and int(resumed.step) == 4
    chex.assert_trees_all_equal(get_masks(resumed.opt_state), part_masks)
    for _ in range(6):
        resumed, _ = step(resumed, batch)
    chex.assert_trees_all_equal(get_masks(resumed.opt_state), get_masks(full.opt_state))
    chex.assert_trees_all_close(resumed.params, full.params, atol=1e-6)
    masks = get_masks(resumed.opt_state)
    zeros_where_masked = jax.tree.map(
        lambda p, m: bool(jnp.all(jnp.where(m, 0.0, p) == 0)), resumed.params, masks
    )
    assert all(jax.tree.leaves(zeros_where_masked))
    rep = sparsity_report(resumed.params)
    assert rep["zeros"] == round(0.8 * rep["size"])


# --------------------------------------------------------------------------------- ensembles
def test_ensemble_equals_the_mean_of_its_members():
    members = [_lenet(seed) for seed in range(3)]
    x = _images(40)
    ens = Ensemble(members)
    probs = [jax.nn.softmax(m.apply(v, x)) for m, v in members]
    chex.assert_trees_all_close(ens.predict_proba(x), sum(probs) / 3, atol=1e-6)
    weighted = Ensemble(members, weights=[2, 1, 1]).predict_proba(x)
    chex.assert_trees_all_close(weighted, (2 * probs[0] + probs[1] + probs[2]) / 4, atol=1e-6)
    labels = np.arange(40) % 10
    res = ens.evaluate(np.asarray(x), labels, batch_size=16)  # 16 + 16 + 8
    mean = np.asarray(sum(probs) / 3)
    assert res["accuracy"] == pytest.approx(np.mean(mean.argmax(-1) == labels))
    assert res["nll"] == pytest.approx(-np.mean(np.log(mean[np.arange(40), labels])), rel=1e-5)
    for r, p in zip(res["members"], probs):
        assert r["accuracy"] == pytest.approx(np.mean(np.asarray(p).argmax(-1) == labels))
    one = Ensemble(members[:1]).predict_proba(x)
    chex.assert_trees_all_close(one, probs[0], atol=1e-6)
    with pytest.raises(ValueError, match="at least one member"):
        Ensemble([])
    with pytest.raises(ValueError, match="differ in shape"):
        ensemble_probs([jnp.zeros((2, 10)), jnp.zeros((2, 5))])
    with pytest.raises(ValueError, match="non-negative"):
        Ensemble(members, weights=[1, -1, 1])


def _tiny_run(workdir, seed):
    """One epoch of LeNet-5 on digits through the engine (python -m experiments.train's
    Trainer + Classification): 300 training images, the default 10% validation hold-out."""
    from jaxcnn.tasks import Classification
    from jaxcnn.train import Trainer

    c = dict(
        model="lenet5_modern",
        dataset="digits",
        test_split=0.2,
        split_seed=0,
        num_train=300,  # of the 1,294 train images left beside validation and test
        batch_size=32,
        epochs=1,
        learning_rate=2e-3,
        seed=seed,
        progress=False,
    )
    Trainer(Classification(), c, str(workdir)).run()
    return str(workdir)


def _digit_split_sizes():
    """(train, validation, test) sizes of digits under test_split=0.2, validation_split=0.1,
    counted from the bundled data (a fraction of n is round(fraction * n))."""
    from jaxcnn.data.sources import bundled_digits

    n = len(bundled_digits()[1])
    n_test = round(0.2 * n)
    n_val = round(0.1 * (n - n_test))
    return n - n_test - n_val, n_val, n_test


def test_evaluate_cli_ensemble_of_runs(tmp_path):
    from experiments import runs
    from experiments.evaluate import evaluate_runs

    dirs = [_tiny_run(tmp_path / f"s{s}", s) for s in range(2)]
    _, n_val, n_test = _digit_split_sizes()
    out = evaluate_runs(dirs, split="validation", ensemble=True)
    assert [m["count"] for m in out["members"]] == [n_val, n_val]
    # the validation split: held out of train, disjoint from the 300 training and the test images
    data = runs.load_run_data(runs.read_config(dirs[0]))
    sp = data.splits
    assert len(sp.train) == 300 and len(sp.test) == n_test
    ids = [set(np.asarray(s.ids).tolist()) for s in (sp.train, sp.validation, sp.test)]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    # the ensemble is the mean of the loaded members' softmax
    x, y = data.validation
    assert len(y) == n_val and np.array_equal(y, np.asarray(sp.validation.labels))
    loaded = [runs.load_run(d) for d in dirs]
    assert loaded[0].step == 300 // 32
    mean = sum(jax.nn.softmax(r.model.apply(r.variables, x)) for r in loaded) / 2
    assert out["ensemble"]["accuracy"] == pytest.approx(np.mean(np.asarray(mean).argmax(-1) == y))
    assert out["members"][0]["accuracy"] != out["members"][1]["accuracy"] or (
        out["members"][0]["nll"] != out["members"][1]["nll"]
    )  # two different seeds
    # the loaded variables are the run's: its own test accuracy from metrics.json
    final = json.loads((tmp_path / "s0" / "metrics.json").read_text())["final"]
    single = evaluate_runs(dirs[:1], split="test", ensemble=False)
    assert single["members"][0]["accuracy"] == pytest.approx(final["test_accuracy"])

    res = subprocess.run(
        [sys.executable, "-m", "experiments.evaluate", "--ensemble", *dirs,
         "--json", str(tmp_path / "e.json")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert "ensemble of 2 (mean softmax)" in res.stdout
    saved = json.loads((tmp_path / "e.json").read_text())
    assert saved["split"] == "test" and saved["members"][0]["count"] == n_test

    # quantize and prune read the same runs
    from experiments.prune import prune_run
    from experiments.quantize import quantize_run

    q = quantize_run(dirs[0], ["weights", "static"], batch_size=8, repeats=1, calib_batch=16)
    assert q["num_test"] == n_test and q["step"] == 300 // 32
    assert q["rows"]["float"]["test_accuracy"] == pytest.approx(final["test_accuracy"])
    assert q["rows"]["static"]["calibration_images"] == (n_val // 16) * 16
    assert q["rows"]["weights"]["bytes"] < q["rows"]["float"]["bytes"]
    p = prune_run(dirs[0], [0.5], "global", 4, 0.1, ["oneshot", "finetune"])
    assert p["finetune_steps"] == 4
    for k in ("oneshot", "finetune"):
        assert p["results"][0][k]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    # fine-tuning on the engine: the kept weights move, the pruned ones stay zero
    from experiments.prune import finetune

    run = runs.load_run(dirs[0])
    masks = magnitude_masks(run.variables["params"], 0.5)
    pruned = apply_masks(run.variables["params"], masks)
    tuned = finetune(
        dataclasses.replace(run, variables={"params": pruned}), data,
        magnitude_pruning(masks=masks), 4, 0.1,
    )["params"]  # fmt: skip
    before, after = (np.asarray(t["c5"]["kernel"]) for t in (pruned, tuned))
    keep = np.asarray(masks["c5"]["kernel"])
    assert np.all(after[~keep] == 0) and not np.allclose(after[keep], before[keep])


def test_evaluate_rejects_runs_on_different_data(tmp_path):
    from experiments.evaluate import evaluate_runs

    a = tmp_path / "a"
    b = tmp_path / "b"
    for d, n in ((a, 300), (b, 200)):
        d.mkdir()
        cfg = {"model": "lenet5_modern", "dataset": "digits", "num_train": n}
        (d / "metrics.json").write_text(json.dumps({"config": cfg}))
    with pytest.raises(ValueError, match="saw other data.*num_train 300 vs 200"):
        evaluate_runs([str(a), str(b)])
    with pytest.raises(ValueError, match=">= 2 runs"):
        evaluate_runs([str(a)], ensemble=True)
    with pytest.raises(FileNotFoundError, match="no metrics.json"):
        evaluate_runs([str(tmp_path)], ensemble=False)
