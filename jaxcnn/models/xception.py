"""Xception (Chollet, 2017) in the form of ``tf.keras.applications.Xception``.

Faithful to Keras: the two stem convs use "valid" padding, every other conv, separable conv
and max pool "same" (TensorFlow's rule: extra padding at the bottom/right, which Flax's
``"SAME"`` reproduces); convs and separable convs have no bias; BatchNorm eps 1e-3, momentum
0.99; Glorot-uniform kernels. At 299x299 the final map is 10x10x2048.

Parameter count: 22,855,952 trainable parameters (the ``params`` collection), which is Keras'
``count_params()`` of 22,910,480 minus the 54,528 BatchNorm moving means/variances that Keras
counts as non-trainable weights (they live in ``batch_stats`` here).

Naming: the paper's entry / middle / exit flows are laid out as four stages at reductions
4, 8, 16, 32 (like ResNet's), so that transfer-learning rules address them the same way:

=========  ====================================  ===========================
jaxcnn     Keras                                 paper
=========  ====================================  ===========================
stem       block1_conv1/_bn, block1_conv2/_bn    entry flow, two convs
stage1     block2 (128, stride 2)                entry flow
stage2     block3 (256, stride 2)                entry flow
stage3     block0: block4 (728, stride 2);       entry flow (last block);
           block1..8: block5..block12            middle flow (8 x 3 sep convs)
stage4     block0: block13 (728, 1024, stride 2) exit flow
           block1: block14 (1536, 2048)
head       predictions                           logistic regression layer
=========  ====================================  ===========================

Inside a block: ``sepconv{i}/{depthwise,pointwise}``, ``bn{i}`` and, for the stride-2 blocks,
the 1x1/2 projection shortcut ``downsample/{conv,bn}`` (Keras' unnamed ``conv2d``/
``batch_normalization`` layers). ``features_only=True`` returns the four stage outputs.

Minimum input side 7 (the two "valid" stem convs need 7 -> 3 -> 1; everything after is "same").
Keras refuses inputs below 71 by policy (``obtain_input_shape``), not by arithmetic.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.layers import (
    batch_norm,
    check_image,
    conv2d,
    depthwise_conv,
    global_avg_pool,
    max_pool,
    pointwise_conv,
)
from jaxcnn.models import register_model

ModuleDef = Any
MIN_SIZE = 7
glorot = nn.initializers.xavier_uniform()  # Keras' default kernel initializer


class SeparableConv2D(nn.Module):
    """Keras ``SeparableConv2D(features, 3, padding="same", use_bias=False)``:
    a 3x3 depthwise conv (``depthwise``) followed by a 1x1 conv (``pointwise``)."""

    features: int
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=glorot)
        x = depthwise_conv(
            x.shape[-1], 3, padding="SAME", use_bias=False, name="depthwise", **common
        )(x)
        return pointwise_conv(self.features, use_bias=False, name="pointwise", **common)(x)


class Stem(nn.Module):
    """Keras block1: 3x3/2 conv (32) - BN - ReLU - 3x3 conv (64) - BN - ReLU, "valid" padding."""

    conv: ModuleDef
    norm: ModuleDef

    @nn.compact
    def __call__(self, x):
        x = nn.relu(self.norm(name="bn1")(self.conv(32, 3, 2, padding="VALID", name="conv1")(x)))
        return nn.relu(self.norm(name="bn2")(self.conv(64, 3, 1, padding="VALID", name="conv2")(x)))


class DownsampleBN(nn.Module):
    """1x1 conv (stride, "same", no bias) + BN: the projection shortcut."""

    features: int
    stride: int
    conv: ModuleDef
    norm: ModuleDef

    @nn.compact
    def __call__(self, x):
        x = self.conv(self.features, 1, self.stride, padding="SAME", name="conv")(x)
        return self.norm(name="bn")(x)


class XceptionBlock(nn.Module):
    """``[ReLU] -> SepConv -> BN`` per entry of ``channels``, then a residual sum.

    ``stride=2``: a 3x3/2 "same" max pool ends the main path and the shortcut is a 1x1/2 conv +
    BN (``downsample``) of the block input; ``stride=1``: identity shortcut (middle flow).
    ``pre_act=False`` drops the first ReLU (Keras block2 follows the stem's ReLU directly).
    ``post_act=True`` and no residual: the exit flow's last two separable convs (Keras block14).
    """

    channels: Sequence[int]
    conv: ModuleDef
    sepconv: ModuleDef
    norm: ModuleDef
    act: Callable = nn.relu
    stride: int = 1
    pre_act: bool = True
    residual: bool = True
    post_act: bool = False
    pool_padding: Any = "SAME"

    @nn.compact
    def __call__(self, x):
        y = x
        for i, c in enumerate(self.channels):
            if not self.post_act and (i > 0 or self.pre_act):
                y = self.act(y)
            y = self.norm(name=f"bn{i + 1}")(self.sepconv(c, name=f"sepconv{i + 1}")(y))
            if self.post_act:
                y = self.act(y)
        if self.stride != 1:
            y = max_pool(y, 3, self.stride, padding=self.pool_padding)
        if not self.residual:
            return y
        if self.stride != 1 or x.shape[-1] != self.channels[-1]:
            x = DownsampleBN(
                self.channels[-1], self.stride, self.conv, self.norm, name="downsample"
            )(x)
        return y + x


class XceptionStage(nn.Module):
    """A list of ``XceptionBlock`` keyword sets, named ``block0..``."""

    blocks: Sequence[dict]
    conv: ModuleDef
    sepconv: ModuleDef
    norm: ModuleDef
    pool_padding: Any = "SAME"

    @nn.compact
    def __call__(self, x):
        for i, kw in enumerate(self.blocks):
            x = XceptionBlock(
                conv=self.conv,
                sepconv=self.sepconv,
                norm=self.norm,
                pool_padding=self.pool_padding,
                name=f"block{i}",
                **kw,
            )(x)
        return x


# (Keras block) -> XceptionBlock keywords, per stage
STAGES = (
    ({"channels": (128, 128), "stride": 2, "pre_act": False},),  # block2
    ({"channels": (256, 256), "stride": 2},),  # block3
    ({"channels": (728, 728), "stride": 2},) + ({"channels": (728,) * 3},) * 8,  # block4-12
    (
        {"channels": (728, 1024), "stride": 2},  # block13
        {"channels": (1536, 2048), "residual": False, "post_act": True},
    ),  # block14
)


class Xception(nn.Module):
    """Xception as in Keras applications. ``features_only=True`` returns the stage outputs.

    ``bn_eps`` (Keras: 1e-3) and ``pool_padding`` (Keras: TensorFlow's ``"SAME"``) exist for
    timm's ``legacy_xception`` weights, a port of the Keras ones whose BatchNorm eps is 1e-5 and
    whose max pools pad 1 on every side (PyTorch style): ``bn_eps=1e-5, pool_padding=1``.
    """

    num_classes: int = 1000
    in_channels: int = 3
    features_only: bool = False
    bn_eps: float = 1e-3
    pool_padding: Any = "SAME"
    dtype: Any = None
    param_dtype: Any = jnp.float32
    variant: str = "xception"
    conv_impl: str = "fast"  # "xla": plain lax convolutions (jaxcnn.layers.fast_conv)

    @nn.compact
    def __call__(self, x, train: bool = False):
        check_image(x, model=self.variant, channels=self.in_channels, min_size=MIN_SIZE)
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        norm = functools.partial(batch_norm, train, 0.99, self.bn_eps, **common)
        conv = functools.partial(conv2d, use_bias=False, kernel_init=glorot, **common)
        sepconv = functools.partial(SeparableConv2D, **common)
        x = Stem(conv, norm, name="stem")(x)
        features = []
        for i, blocks in enumerate(STAGES):
            x = XceptionStage(blocks, conv, sepconv, norm, self.pool_padding, name=f"stage{i + 1}")(
                x
            )
            features.append(x)
        if self.features_only:
            return features
        x = global_avg_pool(x)
        return nn.Dense(self.num_classes, kernel_init=glorot, name="head", **common)(x)


FEATURE_INFO = tuple(
    {"name": f"stage{i + 1}", "channels": c, "reduction": 4 * 2**i}
    for i, c in enumerate((128, 256, 728, 2048))
)


@register_model(
    params=22_855_952,
    input_size=(299, 299, 3),
    paper="Chollet. Xception: deep learning with depthwise separable convolutions. CVPR 2017",
    reference="keras (tf.keras.applications.Xception)",
    feature_info=FEATURE_INFO,
    min_size=MIN_SIZE,
    keras_count_params=22_910_480,
)
def xception(**kwargs) -> Xception:
    """Xception, 299x299 input; 22,855,952 parameters (+54,528 BatchNorm statistics)."""
    return Xception(variant="xception", **kwargs)
