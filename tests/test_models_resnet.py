"""ResNet family: what the registry sweep does not cover (stems, zero_init_residual, ResNeXt and
Wide ResNet widths, projection shortcuts, names, options). Mostly abstract (``jax.eval_shape``)
or on a tiny ResNet (``num_filters=8``) to stay fast."""

import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from jaxcnn import models
from jaxcnn.models.resnet import BasicBlock, Bottleneck, ResNet


def _abstract(model, shape):
    return models.abstract_variables(model, shape)


def _features(model, shape):
    x = jnp.zeros(shape)
    return jax.eval_shape(lambda: model.apply(model.init(jax.random.key(0), x), x))


def _tiny(block_cls=Bottleneck, stages=(1, 1, 1, 1), **kw):
    return ResNet(stage_sizes=stages, block_cls=block_cls, num_filters=8, num_classes=5, **kw)


def test_cifar_stem_keeps_resolution_and_imagenet_stem_divides_by_4():
    cifar = _features(models.create_model("resnet18_cifar", features_only=True), (1, 32, 32, 3))
    assert [f.shape for f in cifar] == [
        (1, 32, 32, 64),
        (1, 16, 16, 128),
        (1, 8, 8, 256),
        (1, 4, 4, 512),
    ]
    imnet = _features(models.create_model("resnet18", features_only=True), (1, 32, 32, 3))
    assert [f.shape[1] for f in imnet] == [8, 4, 2, 1]
    info = models.model_info("resnet18_cifar")
    assert [f["reduction"] for f in info.feature_info] == [1, 2, 4, 8]
    assert info.num_classes == 10 and info.input_size == (32, 32, 3)
    stem = _abstract(models.create_model("resnet18_cifar"), (1, 32, 32, 3))["params"]["stem"]
    assert stem["conv"]["kernel"].shape == (3, 3, 3, 64)


def test_resnet18_cifar_counts_and_channels():
    # 10 classes: 11,173,962; every extra class adds 512 weights + 1 bias
    assert models.count_params("resnet18_cifar") == 11_173_962
    assert models.count_params("resnet18_cifar", num_classes=100) == 11_173_962 + 90 * 513
    # MNIST-style single-channel input
    m = models.create_model("resnet18_cifar", in_channels=1)
    x = jnp.zeros((2, 28, 28, 1))
    out = jax.eval_shape(lambda: m.apply(m.init(jax.random.key(0), x), x))
    assert out.shape == (2, 10)
    with pytest.raises(ValueError, match="expected 3 input channel"):
        models.create_model("resnet18_cifar").init(jax.random.key(0), x)


@pytest.mark.parametrize("block_cls,last_bn", [(Bottleneck, "bn3"), (BasicBlock, "bn2")])
def test_zero_init_residual_zeroes_last_bn_scale(block_cls, last_bn):
    x = jnp.ones((1, 16, 16, 3))
    init = jax.jit(_tiny(block_cls, zero_init_residual=True).init)  # jit: faster than eager
    params = init(jax.random.key(0), x)["params"]
    flat = flatten_dict(params)
    last = [v for k, v in flat.items() if k[-2] == last_bn and k[-1] == "scale"]
    others = [v for k, v in flat.items() if k[-1] == "scale" and k[-2] != last_bn]
    assert len(last) == 4 and all(np.all(v == 0) for v in last)
    assert others and all(np.all(v == 1) for v in others)
    default = flatten_dict(jax.jit(_tiny(block_cls).init)(jax.random.key(0), x)["params"])
    assert all(np.all(v == 1) for k, v in default.items() if k[-1] == "scale")


def test_zero_init_residual_makes_identity_blocks_pass_input_through():
    model = _tiny(BasicBlock, stages=(2, 2, 2, 2), zero_init_residual=True)
    x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
    variables = model.init(jax.random.key(0), x)
    _, state = model.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
    inter = state["intermediates"]
    for s in ("stage1", "stage2", "stage3", "stage4"):
        b0 = inter[s]["block0"]["__call__"][0]
        b1 = inter[s]["block1"]["__call__"][0]
        # block1 has an identity shortcut: relu(0 + x) == x because x is already post-ReLU
        chex.assert_trees_all_close(b1, b0)


def test_resnext_and_wide_resnet_widths():
    shape = (1, 64, 64, 3)

    def conv2(name):
        p = _abstract(models.create_model(name), shape)["params"]
        return p["stage1"]["block0"]["conv2"]["kernel"].shape, p["stage4"]["block0"]["conv2"][
            "kernel"
        ].shape

    # grouped 3x3: 32 groups of 4 (stage1, width 128) / of 32 (stage4, width 1024)
    assert conv2("resnext50_32x4d") == ((3, 3, 4, 128), (3, 3, 32, 1024))
    assert conv2("resnet50") == ((3, 3, 64, 64), (3, 3, 512, 512))
    assert conv2("wide_resnet50_2") == ((3, 3, 128, 128), (3, 3, 1024, 1024))


def test_stride_in_3x3_and_projection_shortcuts():
    p50 = _abstract(models.create_model("resnet50"), (1, 64, 64, 3))["params"]
    # bottleneck: 64 -> 256 channels in stage1 needs a projection even at stride 1
    assert p50["stage1"]["block0"]["downsample"]["conv"]["kernel"].shape == (1, 1, 64, 256)
    assert "downsample" not in p50["stage1"]["block1"]
    p18 = _abstract(models.create_model("resnet18"), (1, 64, 64, 3))["params"]
    assert "downsample" not in p18["stage1"]["block0"]
    assert p18["stage2"]["block0"]["downsample"]["conv"]["kernel"].shape == (1, 1, 64, 128)
    # v1.5: the stride sits in the 3x3 conv2; conv1 (1x1) keeps the block input's 8x8
    m = _tiny(Bottleneck)
    x = jnp.zeros((1, 32, 32, 3))
    v = m.init(jax.random.key(0), x)
    _, st = m.apply(
        v,
        x,
        capture_intermediates=lambda mdl, _: mdl.name in ("conv1", "conv2"),
        mutable=["intermediates"],
    )
    s2 = st["intermediates"]["stage2"]["block0"]
    assert s2["conv1"]["__call__"][0].shape[1] == 8 and s2["conv2"]["__call__"][0].shape[1] == 4


def test_param_tree_names_and_order():
    p = _abstract(models.create_model("resnet34", num_classes=3), (1, 64, 64, 3))["params"]
    assert list(p) == ["stem", "stage1", "stage2", "stage3", "stage4", "head"]
    assert [len(p[f"stage{i}"]) for i in range(1, 5)] == [3, 4, 6, 3]
    assert list(p["stage2"]["block0"]) == ["conv1", "bn1", "conv2", "bn2", "downsample"]
    assert p["head"]["kernel"].shape == (512, 3)


def test_batchnorm_hyperparameters_match_torchvision():
    seen = []

    def spy(next_fun, args, kwargs, context):
        if isinstance(context.module, nn.BatchNorm):
            seen.append((context.module.epsilon, context.module.momentum))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(spy):
        _abstract(models.create_model("resnet18"), (1, 32, 32, 3))
    assert len(seen) == 20 and set(seen) == {(1e-5, 0.9)}


def test_options_and_errors():
    with pytest.raises(ValueError, match="stem_type"):
        _tiny(stem_type="tiny").init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    with pytest.raises(ValueError, match="at least 1x1"):
        models.create_model("resnet18").init(jax.random.key(0), jnp.zeros((1, 0, 0, 3)))
    # min_size 1 is real: a 1x1 image runs through every stage
    feats = _features(models.create_model("resnet50", features_only=True), (1, 1, 1, 3))
    assert [f.shape[1:3] for f in feats] == [(1, 1)] * 4
    # computation dtype reaches the head
    out = _features(_tiny(dtype=jnp.bfloat16), (1, 16, 16, 3))
    assert out.dtype == jnp.bfloat16


def test_tiny_resnet_train_step_is_finite_and_jittable():
    model = _tiny(Bottleneck, groups=2, width_per_group=32)  # width int(8 * 32/64) * 2 = 8
    x = jax.random.normal(jax.random.key(0), (4, 16, 16, 3))
    v = jax.jit(model.init)(jax.random.key(1), x)  # jit: faster than eager dispatch

    @jax.jit
    def loss_fn(params):
        out, upd = model.apply(
            {"params": params, "batch_stats": v["batch_stats"]},
            x,
            train=True,
            mutable=["batch_stats"],
        )
        return jnp.mean(out**2), upd

    (loss, upd), grads = jax.value_and_grad(loss_fn, has_aux=True)(v["params"])
    chex.assert_tree_all_finite((loss, grads))
    assert math.isfinite(float(loss))
    assert float(jnp.abs(grads["stem"]["conv"]["kernel"]).sum()) > 0
