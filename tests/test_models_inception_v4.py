"""Inception-v4 and Inception-ResNet-v2 (timm forms) beyond the registry sweep: parameters per
stage equal timm's, shapes per stage at the smallest and the default input, the residual
blocks' scale and ReLU, the pool branch not counting its padding, too-small inputs, BatchNorm
folding and receptive fields. Numerical agreement with timm: experiments/verify_timm.py."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcnn.inspect as ji
from jaxcnn import models
from jaxcnn.inspect._common import random_variables
from jaxcnn.models.inception_resnet import ResidualInception
from jaxcnn.models.inception_v4 import pool_branch

# timm 1.0.31, num_classes=1000: parameters of the timm modules that form each stage here
# (features.0-2 | 3 | 4-9 | 10-17 | 18-21 | last_linear for Inception-v4; conv2d_1a-2b |
# conv2d_3b, 4a | mixed_5b, repeat | mixed_6a, repeat_1 | mixed_7a, repeat_2, block8, conv2d_7b
# | classif for Inception-ResNet-v2).
TIMM_STAGES = {
    "inception_v4": {
        "stem": 28_768,
        "stage1": 55_488,
        "stage2": 1_792_000,
        "stage3": 22_859_904,
        "stage4": 16_406_656,
        "head": 1_537_000,
    },
    "inception_resnet_v2": {
        "stem": 28_768,
        "stage1": 143_904,
        "stage2": 1_500_000,
        "stage3": 25_200_640,
        "stage4": 27_433_152,
        "head": 1_537_000,
    },
}
SHAPES_75 = {
    "inception_v4": [(35, 64), (17, 160), (7, 384), (3, 1024), (1, 1536)],
    "inception_resnet_v2": [(35, 64), (15, 192), (7, 320), (3, 1088), (1, 1536)],
}
SHAPES_299 = {
    "inception_v4": [(147, 64), (73, 160), (35, 384), (17, 1024), (8, 1536)],
    "inception_resnet_v2": [(147, 64), (71, 192), (35, 320), (17, 1088), (8, 1536)],
}
NAMES = sorted(TIMM_STAGES)


def n_params(tree):
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("name", NAMES)
def test_parameters_per_stage_equal_timm(name):
    params = models.abstract_variables(models.create_model(name), (1, 299, 299, 3))["params"]
    assert list(params) == list(TIMM_STAGES[name])  # creation order: stem, stages, head
    assert {k: n_params(v) for k, v in params.items()} == TIMM_STAGES[name]


def test_layout_names():
    v4 = models.abstract_variables(models.create_model("inception_v4"), (1, 75, 75, 3))
    p = v4["params"]
    assert list(p["stem"]) == ["conv2d_1a", "conv2d_2a", "conv2d_2b"]
    assert list(p["stage2"]) == ["mixed_4a", "mixed_5a", "block0", "block1", "block2", "block3"]
    assert list(p["stage3"])[0] == "mixed_6a" and len(p["stage3"]) == 8
    assert list(p["stage4"]["block2"]) == [
        "branch0",
        "branch1_0",
        "branch1_1a",
        "branch1_1b",
        "branch2_0",
        "branch2_1",
        "branch2_2",
        "branch2_3a",
        "branch2_3b",
        "branch3_1",
    ]
    assert set(p["stage1"]["mixed_3a"]["conv"]) == {"conv", "bn"}
    assert v4["batch_stats"]["stage1"]["mixed_3a"]["conv"]["bn"]["var"].shape == (96,)
    ir = models.abstract_variables(models.create_model("inception_resnet_v2"), (1, 75, 75, 3))
    s4 = ir["params"]["stage4"]
    assert list(s4)[-3:] == ["block8", "block9", "conv2d_7b"] and len(s4) == 12
    assert s4["block9"]["conv2d"]["kernel"].shape == (1, 1, 448, 2080)
    assert s4["block9"]["conv2d"]["bias"].shape == (2080,)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("side", [75, 299])
def test_stage_shapes(name, side):
    model = models.create_model(name, features_only=True)
    shape = (1, side, side, 3)
    feats = jax.eval_shape(
        lambda: model.apply(model.init(jax.random.key(0), jnp.zeros(shape)), jnp.zeros(shape))
    )
    want = (SHAPES_75 if side == 75 else SHAPES_299)[name]
    assert [(f.shape[1], f.shape[3]) for f in feats] == want
    assert all(f.shape[1] == f.shape[2] for f in feats)


@pytest.mark.parametrize("name", NAMES)
def test_train_step_shapes_abstract(name):
    """Training mode traces end to end (logits and every BatchNorm's statistics) at 75x75."""
    model = models.create_model(name, num_classes=10, dropout=0.2)
    x = jnp.zeros((2, 75, 75, 3))
    v = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    out, upd = jax.eval_shape(
        lambda v: model.apply(
            v, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(1)}
        ),
        v,
    )
    chex.assert_shape(out, (2, 10))
    chex.assert_trees_all_equal_shapes(upd["batch_stats"], v["batch_stats"])


@pytest.mark.parametrize("name", NAMES)
def test_too_small_and_wrong_inputs(name):
    model = models.create_model(name)
    with pytest.raises(ValueError, match=rf"{name}: input images must be at least 75x75.*74x74"):
        model.init(jax.random.key(0), jnp.zeros((1, 74, 74, 3)))
    with pytest.raises(ValueError, match="expected 3 input channel"):
        model.init(jax.random.key(0), jnp.zeros((1, 3, 75, 75)))


def test_residual_block_scale_and_relu():
    """``relu(x + scale * conv2d(branches))``; the last Block8 has no ReLU."""
    x = jax.random.normal(jax.random.key(0), (1, 5, 5, 2080))
    block = ResidualInception("8", 0.2)
    v = random_variables(jax.eval_shape(lambda: block.init(jax.random.key(1), x)))
    zero = jax.tree.map(jnp.zeros_like, v["params"]["conv2d"])
    v0 = {**v, "params": {**v["params"], "conv2d": zero}}
    apply = jax.jit(lambda blk, v, x: blk.apply(v, x), static_argnums=0)
    chex.assert_trees_all_close(apply(block, v0, x), jax.nn.relu(x))  # a zero branch: relu(x)
    last = ResidualInception("8", 1.0, relu=False)
    chex.assert_trees_all_close(apply(last, v0, x), x)
    # the residual part scales linearly: (y(0.2) - x) = 0.2 * (y(1) - x) without the ReLU
    y1 = apply(last, v, x)
    y02 = apply(ResidualInception("8", 0.2, relu=False), v, x)
    chex.assert_trees_all_close(y02 - x, 0.2 * (y1 - x), atol=1e-5)


def test_pool_branch_does_not_count_padding():
    y = pool_branch(jnp.ones((1, 4, 4, 2)))
    chex.assert_trees_all_close(y, jnp.ones((1, 4, 4, 2)))  # corners: 4/4, not 4/9
    x = jnp.arange(9.0).reshape(1, 3, 3, 1)
    np.testing.assert_allclose(float(pool_branch(x)[0, 0, 0, 0]), (0 + 1 + 3 + 4) / 4)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_forward_at_smallest_size(name):
    model = models.create_model(name, num_classes=7)
    x = jax.random.normal(jax.random.key(0), (2, 75, 75, 3))
    v = random_variables(models.abstract_variables(model, x.shape))

    @jax.jit
    def run(v, x):
        return model.apply(v, x), model.apply(v, x, train=True, mutable=["batch_stats"])

    out, (out_t, upd) = run(v, x)
    chex.assert_shape(out, (2, 7))
    chex.assert_tree_all_finite((out, out_t))
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), v["batch_stats"], upd["batch_stats"])
    assert all(jax.tree.leaves(changed))


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_batchnorm_folding_is_exact(name):
    r = ji.fold_report(name, (75, 75, 3), timing=False)
    convs = {"inception_v4": 149, "inception_resnet_v2": 204}[name]
    assert r.pairs == convs  # every ConvNormAct; IRv2's conv2d projections have no BatchNorm
    assert r.max_abs_diff <= 1e-5 * max(1.0, r.max_abs_output), r


@pytest.mark.slow
def test_receptive_fields():
    rf = ji.receptive_fields("inception_v4", (75, 75, 3))
    assert rf.modules["stem"].size == (11, 11)  # 3x3/2, 3x3, 3x3
    assert rf.modules["stem"].jump == (2, 2)
    assert rf.modules["stage4"].jump == (32, 32)
    rf = ji.receptive_fields("inception_resnet_v2", (75, 75, 3))
    assert rf.modules["stage1"].size == (23, 23)  # + maxpool 3/2, 1x1, 3x3 at jump 4
