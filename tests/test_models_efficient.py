"""MobileNet v1/v2/v3, EfficientNet and ConvNeXt beyond the registry sweep: width multipliers
and compound scaling against their references (counted abstractly), the small-input MobileNet v2,
and stochastic depth (drop connect) drawing from the ``dropout`` stream, off in eval.

Reference numbers: Keras 3 ``keras.applications.MobileNet(alpha=a, weights=None)`` (trainable
weights; ``count_params()`` adds the BatchNorm moving statistics) and torchvision 0.29
(``mobilenet_v2(width_mult=w)``, ``MobileNetV3(*_mobilenet_v3_conf(arch, width_mult=w))``,
``efficientnet_bN().features``), computed once with those libraries; nothing imports them here.
"""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import models
from jaxcnn.inspect import random_variables
from jaxcnn.models.convnext import ConvNeXt
from jaxcnn.models.efficientnet import EfficientNet
from jaxcnn.models.mobilenet import MobileNetV1

SMALL = (1, 32, 32, 3)  # parameter counts do not depend on the input size


def counts(model, shape=SMALL):
    """(params, batch_stats) scalars of ``model``, from shapes only."""
    v = models.abstract_variables(model, shape)
    n = lambda col: sum(math.prod(a.shape) for a in jax.tree.leaves(v.get(col, {})))  # noqa
    return n("params"), n("batch_stats")


# ---------------------------------------------------------------- MobileNet v1 (Keras)
# alpha: (trainable parameters, Keras count_params() incl. BN moving mean/variance)
KERAS_V1 = {
    0.25: (470_072, 475_544),
    0.5: (1_331_592, 1_342_536),
    0.75: (2_585_560, 2_601_976),
    1.0: (4_231_976, 4_253_864),
}


@pytest.mark.parametrize("alpha", sorted(KERAS_V1))
def test_mobilenet_v1_width_multiplier_matches_keras(alpha):
    params, stats = counts(MobileNetV1(alpha=alpha))
    assert params == KERAS_V1[alpha][0]
    assert params + stats == KERAS_V1[alpha][1]  # Keras also counts the BN statistics
    name = {
        0.25: "mobilenet_v1_025",
        0.5: "mobilenet_v1_050",
        0.75: "mobilenet_v1_075",
        1.0: "mobilenet_v1",
    }[alpha]
    info = models.model_info(name)
    assert info.params == params and info.extra["keras_count_params"] == params + stats


def test_mobilenet_v1_channels_scale_without_rounding():
    v = models.abstract_variables(MobileNetV1(alpha=0.25, features_only=True), SMALL)
    chex.assert_shape(v["params"]["stem"]["conv"]["kernel"], (3, 3, 3, 8))  # int(32 * 0.25)
    feats = jax.eval_shape(
        MobileNetV1(alpha=0.25, features_only=True).apply,
        v,
        jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32),
    )
    assert [f.shape for f in feats] == [
        (1, 32, 32, 16),
        (1, 16, 16, 32),
        (1, 8, 8, 64),
        (1, 4, 4, 128),
        (1, 2, 2, 256),
    ]


# ---------------------------------------------------------------- MobileNet v2/v3 widths
@pytest.mark.parametrize(
    "name,width,expected",
    [
        ("mobilenet_v2", 0.5, 1_968_680),
        ("mobilenet_v2", 0.75, 2_636_424),
        ("mobilenet_v2", 1.4, 6_108_776),
        ("mobilenet_v3_large", 0.75, 3_377_576),
        ("mobilenet_v3_small", 0.75, 1_653_920),
    ],
)
def test_mobilenet_width_mult_matches_torchvision(name, width, expected):
    assert models.count_params(name, SMALL, width_mult=width) == expected


def test_mobilenet_v2_small_input_keeps_resolution():
    # the MNIST variant: 1 channel, 10 classes, stride 8 overall (28 -> 4 before pooling)
    model = models.create_model("mobilenet_v2", small_input=True, in_channels=1, num_classes=10)
    shape = (2, 28, 28, 1)
    assert models.count_params(model, shape) == 2_236_106  # torchvision, 1-channel stem
    v = models.abstract_variables(model, shape)
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    feats = jax.eval_shape(model.clone(features_only=True).apply, v, x)
    assert [f.shape[1] for f in feats] == [28, 28, 14, 7, 4]
    logits = jax.eval_shape(model.apply, v, x)
    assert logits.shape == (2, 10)


# ---------------------------------------------------------------- EfficientNet scaling
# torchvision efficientnet_bN: blocks per stage (features[1..7]), conv_head channels, params
TV_EFFICIENTNET = {
    0: ((1, 2, 2, 3, 3, 4, 1), 1280, 5_288_548),
    1: ((2, 3, 3, 4, 4, 5, 2), 1280, 7_794_184),
    2: ((2, 3, 3, 4, 4, 5, 2), 1408, 9_109_994),
    3: ((2, 3, 3, 5, 5, 6, 2), 1536, 12_233_232),
    4: ((2, 4, 4, 6, 6, 8, 2), 1792, 19_341_616),
    5: ((3, 5, 5, 7, 7, 9, 3), 2048, 30_389_784),
    6: ((3, 6, 6, 8, 8, 11, 3), 2304, 43_040_704),
    7: ((4, 7, 7, 10, 10, 13, 4), 2560, 66_347_960),
}
# the paper's compound coefficients (width, depth) of B0..B7
COMPOUND = {
    0: (1.0, 1.0),
    1: (1.0, 1.1),
    2: (1.1, 1.2),
    3: (1.2, 1.4),
    4: (1.4, 1.8),
    5: (1.6, 2.2),
    6: (1.8, 2.6),
    7: (2.0, 3.1),
}


@pytest.mark.parametrize("b", range(8))
def test_efficientnet_compound_scaling_matches_torchvision(b):
    width, depth = COMPOUND[b]
    model = EfficientNet(width=width, depth=depth)
    p = models.abstract_variables(model, SMALL)["params"]
    repeats, head_channels, total = TV_EFFICIENTNET[b]
    assert tuple(len(p[f"stage{i}"]) for i in range(1, 8)) == repeats  # ceil(n * depth)
    assert p["conv_head"]["conv"]["kernel"].shape[-1] == head_channels  # 4 * width-scaled 320
    assert sum(math.prod(a.shape) for a in jax.tree.leaves(p)) == total
    assert models.model_info(f"efficientnet_b{b}").params == total
    named = models.create_model(f"efficientnet_b{b}")
    assert (named.width, named.depth) == (width, depth)
    assert (named.bn_eps, named.bn_momentum) == ((1e-3, 0.99) if b >= 5 else (1e-5, 0.9))


# ---------------------------------------------------------------- stochastic depth
def _tiny_efficientnet(rate):
    # no dropout before the head: only stochastic depth consumes the key; depth 0.5: stages
    # of 1, 1, 1, 2, 2, 2, 1 blocks, three of them residual
    return EfficientNet(width=0.25, depth=0.5, num_classes=3, dropout=0.0, drop_path_rate=rate)


def _tiny_convnext(rate):
    return ConvNeXt(depths=(1, 1, 2, 1), dims=(8, 16, 32, 64), num_classes=3, drop_path_rate=rate)


def _outputs(model, x, with_bn):
    """Train outputs for two dropout keys and eval outputs for two keys (one compilation)."""
    v = random_variables(models.abstract_variables(model, x.shape))
    mutable = ["batch_stats"] if with_bn else False

    def one(key):
        train = model.apply(v, x, train=True, rngs={"dropout": key}, mutable=mutable)
        train = train[0] if with_bn else train
        return train, model.apply(v, x, train=False, rngs={"dropout": key})

    return jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(3), 2))


@pytest.mark.parametrize(
    "build,with_bn",
    [(_tiny_efficientnet, True), (_tiny_convnext, False)],
    ids=["efficientnet", "convnext"],
)
def test_stochastic_depth_uses_dropout_stream_and_is_off_in_eval(build, with_bn):
    x = jax.random.normal(jax.random.key(0), (8, 32, 32, 3))
    (train, evals) = _outputs(build(0.8), x, with_bn)
    chex.assert_tree_all_finite((train, evals))
    assert not np.allclose(train[0], train[1], atol=1e-5)  # another key drops other blocks
    chex.assert_trees_all_equal(evals[0], evals[1])  # eval ignores the key
    if not with_bn:  # (with BatchNorm, train and eval differ anyway: batch statistics)
        assert not np.allclose(train[0], evals[0], atol=1e-5)


def test_stochastic_depth_schedules():
    from jaxcnn.layers import drop_path_schedule

    # torchvision EfficientNet: rate * block_id / total_blocks (last block below the rate)
    sched = drop_path_schedule(0.2, (1, 2, 2))
    assert [len(s) for s in sched] == [1, 2, 2]
    np.testing.assert_allclose(sum(sched, ()), [0.0, 0.04, 0.08, 0.12, 0.16])
    # torchvision ConvNeXt / Swin: rate * block_id / (total - 1) (last block at the rate)
    convnext = drop_path_schedule(0.4, (2, 3), endpoint=True)
    assert [len(s) for s in convnext] == [2, 3]
    np.testing.assert_allclose(sum(convnext, ()), [0.0, 0.1, 0.2, 0.3, 0.4])
    assert models.create_model("convnext_tiny").drop_path_rate == 0.1
    assert models.create_model("efficientnet_b0").drop_path_rate == 0.2
    assert models.create_model("mobilenet_v2").drop_path_rate == 0.0  # torchvision has none
