"""MobileNet v1 (Keras applications form) and MobileNet v2 (torchvision form).

``mobilenet_v1`` (Howard et al. 2017) follows ``keras.applications.MobileNet``: a 3x3 stride-2
stem conv (``"SAME"``) and 13 depthwise-separable blocks, each depthwise 3x3 + BN + ReLU6 and
pointwise 1x1 + BN + ReLU6. Keras pads a stride-2 depthwise conv by ``ZeroPadding2D(((0, 1),
(0, 1)))`` and then convolves ``"valid"``; that asymmetric padding is reproduced, and stride-1
depthwise convs are ``"same"`` (1 pixel on every side). BatchNorm eps 1e-3, momentum 0.99.
Head: global average pool -> dropout (Keras default 0.001) -> 1x1 conv with bias ``head``.
Channels are ``int(c * alpha)`` (the width multiplier; no rounding to multiples of 8).
Parameter counts are Keras' *trainable* counts: ``model.count_params()`` in Keras also counts
the BatchNorm moving mean/variance (here in ``batch_stats``), e.g. 4,253,864 vs 4,231,976.
The smallest side that runs is 31 (Keras itself asks for 32).

``mobilenet_v2`` (Sandler et al. 2018) follows ``torchvision.models.mobilenet_v2``: inverted
residuals with linear bottlenecks and ReLU6, channels ``make_divisible(c * width_mult, 8)``, last
conv ``1280 * max(1, width_mult)``, dropout 0.2 before the ``head`` Dense. BN eps 1e-5.
``small_input=True`` adapts it to 28x28 / 32x32 images as the CIFAR MobileNetV2 of
kuangliu/pytorch-cifar does: the stem conv and the first stride-2 stage (``stage2``, 24
channels) run at stride 1, so the network downsamples by 8 instead of 32 (28x28 -> 4x4 before
the pooling, instead of 1x1) and the feature reductions become 1, 1, 2, 4, 8. The parameters are
the same as ``mobilenet_v2``'s (3,504,872 for 1000 classes; 2,236,682 for 10). ``in_channels``
sets the input channels (1 for MNIST; only the stem's kernel changes).

Stages (``features_only``, reductions 2/4/8/16/32, as timm's ``features_only``):
v1 ``stage1``..``stage5`` (64, 128, 256, 512, 1024 channels); v2 ``stage1``, ``stage2``,
``stage3``, ``stage5``, ``stage7`` (16, 24, 32, 96, 320) of its seven stages.
Both support ``drop_path_rate`` only where the reference has residuals (v2; default 0, as in
torchvision; the rate grows linearly over blocks as in torchvision's EfficientNet).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.layers import ConvBNAct, DepthwiseSeparableConv, check_image, make_divisible
from jaxcnn.layers.blocks import drop_path_schedule
from jaxcnn.layers.inverted_residual import InvertedResidual
from jaxcnn.models import register_model

_PAPER_V1 = (
    "Howard, Zhu, Chen, Kalenichenko, Wang, Weyand, Andreetto, Adam. MobileNets: "
    "Efficient convolutional neural networks for mobile vision applications. 2017"
)
_PAPER_V2 = (
    "Sandler, Howard, Zhu, Zhmoginov, Chen. MobileNetV2: Inverted residuals and linear "
    "bottlenecks. CVPR 2018"
)


# MobileNet v1: (pointwise channels, stride) per block, grouped into stages ending at
# reductions 2, 4, 8, 16, 32
V1_STAGES = (
    ((64, 1),),
    ((128, 2), (128, 1)),
    ((256, 2), (256, 1)),
    ((512, 2),) + ((512, 1),) * 5,
    ((1024, 2), (1024, 1)),
)
# MobileNet v2 (torchvision's inverted_residual_setting): expansion t, channels c, repeats n,
# stride s of each of the seven stages
V2_STAGES = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
V2_FEATURE_STAGES = (1, 2, 3, 5, 7)


def _feature_info(names, channels, reductions=(2, 4, 8, 16, 32)):
    return tuple(
        {"name": n, "channels": c, "reduction": r} for n, c, r in zip(names, channels, reductions)
    )


V1_FEATURES = _feature_info([f"stage{i}" for i in range(1, 6)], (64, 128, 256, 512, 1024))
V2_FEATURES = _feature_info([f"stage{i}" for i in V2_FEATURE_STAGES], (16, 24, 32, 96, 320))


class MobileNetV1Stage(nn.Module):
    """Keras MobileNet depthwise-separable blocks ``block0``.. (depthwise ``depthwise``/``bn_dw``,
    pointwise ``pointwise``/``bn_pw``, ReLU6 after each)."""

    blocks: tuple  # ((channels, stride), ...), channels already multiplied by alpha
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        for i, (c, s) in enumerate(self.blocks):
            # Keras: ZeroPadding2D(((0, 1), (0, 1))) then "valid" at stride 2; "same" at 1
            pad = ((0, 1), (0, 1)) if s == 2 else 1
            x = DepthwiseSeparableConv(
                c,
                3,
                s,
                padding=pad,
                norm=True,
                act=nn.relu6,
                bn_eps=1e-3,
                bn_momentum=0.99,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=f"block{i}",
            )(x, train)
        return x


class MobileNetV1(nn.Module):
    """MobileNet v1 as in Keras applications (see the module docstring)."""

    num_classes: int = 1000
    alpha: float = 1.0
    dropout: float = 1e-3
    in_channels: int = 3
    features_only: bool = False
    dtype: Any = None
    param_dtype: Any = jnp.float32
    variant: str = "mobilenet_v1"
    conv_impl: str = "fast"  # "xla": plain lax convolutions (jaxcnn.layers.fast_conv)

    @nn.compact
    def __call__(self, x, train: bool = False):
        check_image(x, model=self.variant, channels=self.in_channels, min_size=31)
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = ConvBNAct(
            int(32 * self.alpha),
            3,
            2,
            padding="SAME",
            act=nn.relu6,
            bn_eps=1e-3,
            bn_momentum=0.99,
            name="stem",
            **common,
        )(x, train)
        feats = []
        for i, stage in enumerate(V1_STAGES):
            blocks = tuple((int(c * self.alpha), s) for c, s in stage)
            x = MobileNetV1Stage(blocks, name=f"stage{i + 1}", **common)(x, train)
            feats.append(x)
        if self.features_only:
            return feats
        x = jnp.mean(x, axis=(1, 2), keepdims=True)
        x = nn.Dropout(self.dropout)(x, deterministic=not train)
        x = nn.Conv(self.num_classes, (1, 1), name="head", **common)(x)
        return x.reshape((x.shape[0], -1))


class MobileNetV2Stage(nn.Module):
    """``depth`` inverted residuals ``block0``.. (ReLU6, no SE); only the first one strides."""

    features: int
    expand_ratio: int
    depth: int
    stride: int
    drop_paths: tuple = ()
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        for i in range(self.depth):
            hidden = int(round(x.shape[-1] * self.expand_ratio))
            x = InvertedResidual(
                self.features,
                hidden,
                3,
                self.stride if i == 0 else 1,
                act=nn.relu6,
                drop_path=self.drop_paths[i] if self.drop_paths else 0.0,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=f"block{i}",
            )(x, train)
        return x


class MobileNetV2(nn.Module):
    """MobileNet v2 as in torchvision (see the module docstring for ``small_input``)."""

    num_classes: int = 1000
    width_mult: float = 1.0
    dropout: float = 0.2
    drop_path_rate: float = 0.0
    small_input: bool = False
    in_channels: int = 3
    features_only: bool = False
    dtype: Any = None
    param_dtype: Any = jnp.float32
    variant: str = "mobilenet_v2"
    conv_impl: str = "fast"  # "xla": plain lax convolutions (jaxcnn.layers.fast_conv)

    @nn.compact
    def __call__(self, x, train: bool = False):
        check_image(x, model=self.variant, channels=self.in_channels, min_size=1)
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        wm = self.width_mult
        x = ConvBNAct(
            make_divisible(32 * wm),
            3,
            1 if self.small_input else 2,
            act=nn.relu6,
            name="stem",
            **common,
        )(x, train)
        rates = drop_path_schedule(self.drop_path_rate, [n for _, _, n, _ in V2_STAGES])
        feats = []
        for i, (t, c, n, s) in enumerate(V2_STAGES):
            if self.small_input and i == 1:
                s = 1  # the first stride-2 stage keeps the resolution of small images
            x = MobileNetV2Stage(
                make_divisible(c * wm), t, n, s, rates[i], name=f"stage{i + 1}", **common
            )(x, train)
            if i + 1 in V2_FEATURE_STAGES:
                feats.append(x)
        if self.features_only:
            return feats
        x = ConvBNAct(
            make_divisible(1280 * max(1.0, wm)), 1, act=nn.relu6, name="conv_head", **common
        )(x, train)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dropout(self.dropout)(x, deterministic=not train)
        return nn.Dense(self.num_classes, name="head", **common)(x)


def _v1(variant, alpha, kwargs):
    return MobileNetV1(alpha=alpha, variant=variant, **kwargs)


_V1_INFO = dict(
    input_size=(224, 224, 3),
    paper=_PAPER_V1,
    reference="keras 3.15",
    feature_info=V1_FEATURES,
    min_size=31,
)


@register_model(params=4_231_976, keras_count_params=4_253_864, **_V1_INFO)
def mobilenet_v1(**kwargs) -> MobileNetV1:
    """MobileNet v1, alpha 1.0 (Keras ``MobileNet(alpha=1.0)``)."""
    return _v1("mobilenet_v1", 1.0, kwargs)


@register_model(
    params=2_585_560,
    keras_count_params=2_601_976,
    **{
        **_V1_INFO,
        "feature_info": _feature_info([f"stage{i}" for i in range(1, 6)], (48, 96, 192, 384, 768)),
    },
)
def mobilenet_v1_075(**kwargs) -> MobileNetV1:
    """MobileNet v1, alpha 0.75 (Keras ``MobileNet(alpha=0.75)``)."""
    return _v1("mobilenet_v1_075", 0.75, kwargs)


@register_model(
    params=1_331_592,
    keras_count_params=1_342_536,
    **{
        **_V1_INFO,
        "feature_info": _feature_info([f"stage{i}" for i in range(1, 6)], (32, 64, 128, 256, 512)),
    },
)
def mobilenet_v1_050(**kwargs) -> MobileNetV1:
    """MobileNet v1, alpha 0.5 (Keras ``MobileNet(alpha=0.5)``)."""
    return _v1("mobilenet_v1_050", 0.5, kwargs)


@register_model(
    params=470_072,
    keras_count_params=475_544,
    **{
        **_V1_INFO,
        "feature_info": _feature_info([f"stage{i}" for i in range(1, 6)], (16, 32, 64, 128, 256)),
    },
)
def mobilenet_v1_025(**kwargs) -> MobileNetV1:
    """MobileNet v1, alpha 0.25 (Keras ``MobileNet(alpha=0.25)``)."""
    return _v1("mobilenet_v1_025", 0.25, kwargs)


@register_model(
    params=3_504_872,
    input_size=(224, 224, 3),
    paper=_PAPER_V2,
    reference="torchvision 0.29",
    feature_info=V2_FEATURES,
    min_size=1,
)
def mobilenet_v2(**kwargs) -> MobileNetV2:
    """MobileNet v2, width 1.0 (torchvision ``mobilenet_v2``); ``small_input=True`` for
    28x28/32x32 images (same parameters, downsampling by 8)."""
    return MobileNetV2(variant="mobilenet_v2", **kwargs)
