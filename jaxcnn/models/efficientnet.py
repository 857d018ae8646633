"""EfficientNet B0-B7 (Tan & Le 2019), in torchvision's form.

MBConv blocks (``jaxcnn.layers.inverted_residual``): 1x1 expansion (ratio 6; none in stage 1),
k x k depthwise conv, squeeze-and-excitation with ``max(1, in_channels // 4)`` squeeze channels
(of the *block input*, not the expanded width), SiLU inside and a sigmoid gate, linear 1x1
projection; residual blocks pass their branch through stochastic depth whose rate grows
linearly from 0 to ``drop_path_rate * (n - 1) / n`` over the n blocks (0.2 by default; non-
residual blocks take their index too), as torchvision does. Stem 3x3 stride-2 conv + BN + SiLU;
``conv_head`` 1x1 to ``4 * last`` channels + SiLU; global average pool, dropout, ``head`` Dense.

Compound scaling: channels ``make_divisible(c * width, 8)``, repeats ``ceil(n * depth)``:

    name  width depth  size dropout  BN eps (torch momentum)
    b0    1.0   1.0    224  0.2      1e-5 (0.1)
    b1    1.0   1.1    240  0.2      1e-5
    b2    1.1   1.2    260  0.3      1e-5
    b3    1.2   1.4    300  0.3      1e-5
    b4    1.4   1.8    380  0.4      1e-5
    b5    1.6   2.2    456  0.4      1e-3 (0.01)
    b6    1.8   2.6    528  0.5      1e-3 (0.01)
    b7    2.0   3.1    600  0.5      1e-3 (0.01)

(torchvision builds B5-B7 with ``BatchNorm2d(eps=1e-3, momentum=0.01)`` because their weights
come from TensorFlow; B0-B4 use the PyTorch default.) Padding is PyTorch's symmetric
``(k - 1) // 2``, not TensorFlow's ``"SAME"``, so any input side >= 1 runs.

``features_only`` returns timm's five maps ``stage1``, ``stage2``, ``stage3``, ``stage5``,
``stage7`` (reductions 2, 4, 8, 16, 32; 16, 24, 40, 112, 320 channels for B0).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.layers import ConvBNAct, check_image, make_divisible
from jaxcnn.layers.blocks import drop_path_schedule
from jaxcnn.layers.inverted_residual import InvertedResidual
from jaxcnn.models import register_model

_PAPER = (
    "Tan, Le. EfficientNet: Rethinking model scaling for convolutional neural networks. ICML 2019"
)

# B0 (torchvision's bneck_conf): expansion, kernel, stride, out channels, repeats per stage
STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
FEATURE_STAGES = (1, 2, 3, 5, 7)


class EfficientNetStage(nn.Module):
    """``depth`` MBConv blocks ``block0``..; only the first one strides."""

    features: int
    expand_ratio: int
    kernel_size: int
    stride: int
    depth: int
    drop_paths: tuple
    bn_eps: float = 1e-5
    bn_momentum: float = 0.9
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        for i in range(self.depth):
            cin = x.shape[-1]
            x = InvertedResidual(
                self.features,
                make_divisible(cin * self.expand_ratio, 8),
                self.kernel_size,
                self.stride if i == 0 else 1,
                act=nn.silu,
                se_channels=max(1, cin // 4),
                se_act=nn.silu,
                se_gate=nn.sigmoid,
                drop_path=self.drop_paths[i],
                bn_eps=self.bn_eps,
                bn_momentum=self.bn_momentum,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=f"block{i}",
            )(x, train)
        return x


class EfficientNet(nn.Module):
    """EfficientNet B0-B7 (see the module docstring); ``width``/``depth`` are the compound
    scaling coefficients."""

    width: float = 1.0
    depth: float = 1.0
    num_classes: int = 1000
    dropout: float = 0.2
    drop_path_rate: float = 0.2
    bn_eps: float = 1e-5
    bn_momentum: float = 0.9
    in_channels: int = 3
    features_only: bool = False
    dtype: Any = None
    param_dtype: Any = jnp.float32
    variant: str = "efficientnet_b0"
    conv_impl: str = "fast"  # "xla": plain lax convolutions (jaxcnn.layers.fast_conv)

    @nn.compact
    def __call__(self, x, train: bool = False):
        check_image(x, model=self.variant, channels=self.in_channels, min_size=1)
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        bn = dict(bn_eps=self.bn_eps, bn_momentum=self.bn_momentum, **common)
        adjust = lambda c: make_divisible(c * self.width, 8)  # noqa: E731
        depths = [int(math.ceil(n * self.depth)) for *_, n in STAGES]
        rates = drop_path_schedule(self.drop_path_rate, depths)
        x = ConvBNAct(adjust(32), 3, 2, act=nn.silu, name="stem", **bn)(x, train)
        feats = []
        for i, ((t, k, s, c, _), d) in enumerate(zip(STAGES, depths)):
            x = EfficientNetStage(adjust(c), t, k, s, d, rates[i], name=f"stage{i + 1}", **bn)(
                x, train
            )
            if i + 1 in FEATURE_STAGES:
                feats.append(x)
        if self.features_only:
            return feats
        x = ConvBNAct(4 * x.shape[-1], 1, act=nn.silu, name="conv_head", **bn)(x, train)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dropout(self.dropout)(x, deterministic=not train)
        return nn.Dense(self.num_classes, name="head", **common)(x)


def _feature_info(width):
    return tuple(
        {
            "name": f"stage{i}",
            "channels": make_divisible(STAGES[i - 1][3] * width, 8),
            "reduction": r,
        }
        for i, r in zip(FEATURE_STAGES, (2, 4, 8, 16, 32))
    )


def _efficientnet(name, width, depth, dropout, tf_bn=False, **kwargs) -> EfficientNet:
    kwargs.setdefault("dropout", dropout)
    kwargs.setdefault("bn_eps", 1e-3 if tf_bn else 1e-5)  # timm's B5-B7 weights: 1e-5
    kwargs.setdefault("bn_momentum", 0.99 if tf_bn else 0.9)
    return EfficientNet(width=width, depth=depth, variant=name, **kwargs)


def _info(width, side):
    return dict(
        input_size=(side, side, 3),
        paper=_PAPER,
        reference="torchvision 0.29",
        feature_info=_feature_info(width),
        min_size=1,
        slow=side >= 380,
    )


@register_model(params=5_288_548, **_info(1.0, 224))
def efficientnet_b0(**kwargs) -> EfficientNet:
    """EfficientNet-B0: width 1.0, depth 1.0, 224x224, dropout 0.2."""
    return _efficientnet("efficientnet_b0", 1.0, 1.0, 0.2, **kwargs)


@register_model(params=7_794_184, **_info(1.0, 240))
def efficientnet_b1(**kwargs) -> EfficientNet:
    """EfficientNet-B1: width 1.0, depth 1.1, 240x240, dropout 0.2."""
    return _efficientnet("efficientnet_b1", 1.0, 1.1, 0.2, **kwargs)


@register_model(params=9_109_994, **_info(1.1, 260))
def efficientnet_b2(**kwargs) -> EfficientNet:
    """EfficientNet-B2: width 1.1, depth 1.2, 260x260, dropout 0.3."""
    return _efficientnet("efficientnet_b2", 1.1, 1.2, 0.3, **kwargs)


@register_model(params=12_233_232, **_info(1.2, 300))
def efficientnet_b3(**kwargs) -> EfficientNet:
    """EfficientNet-B3: width 1.2, depth 1.4, 300x300, dropout 0.3."""
    return _efficientnet("efficientnet_b3", 1.2, 1.4, 0.3, **kwargs)


@register_model(params=19_341_616, **_info(1.4, 380))
def efficientnet_b4(**kwargs) -> EfficientNet:
    """EfficientNet-B4: width 1.4, depth 1.8, 380x380, dropout 0.4."""
    return _efficientnet("efficientnet_b4", 1.4, 1.8, 0.4, **kwargs)


@register_model(params=30_389_784, **_info(1.6, 456))
def efficientnet_b5(**kwargs) -> EfficientNet:
    """EfficientNet-B5: width 1.6, depth 2.2, 456x456, dropout 0.4, BN eps 1e-3."""
    return _efficientnet("efficientnet_b5", 1.6, 2.2, 0.4, tf_bn=True, **kwargs)


@register_model(params=43_040_704, **_info(1.8, 528))
def efficientnet_b6(**kwargs) -> EfficientNet:
    """EfficientNet-B6: width 1.8, depth 2.6, 528x528, dropout 0.5, BN eps 1e-3."""
    return _efficientnet("efficientnet_b6", 1.8, 2.6, 0.5, tf_bn=True, **kwargs)


@register_model(params=66_347_960, **_info(2.0, 600))
def efficientnet_b7(**kwargs) -> EfficientNet:
    """EfficientNet-B7: width 2.0, depth 3.1, 600x600, dropout 0.5, BN eps 1e-3."""
    return _efficientnet("efficientnet_b7", 2.0, 3.1, 0.5, tf_bn=True, **kwargs)
