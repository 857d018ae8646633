"""Inception-ResNet-v2 (Szegedy, Ioffe, Vanhoucke, Alemi, 2016) as timm builds it
(``inception_resnet_v2``).

Convolutions are timm's ``ConvNormAct`` (conv without bias, BatchNorm eps 1e-3, ReLU; see
:mod:`jaxcnn.models.inception_v4`). The residual blocks concatenate their branches, project
back with a 1x1 conv *with* bias (``conv2d``, no BatchNorm), scale the result and add it to
the input, then apply ReLU: ``relu(x + scale * conv2d(concat(branches)))``. Layout (299x299
input, side in brackets):

    stem    conv2d_1a 3x3/2 (32) [149] -> conv2d_2a 3x3 (32) [147] -> conv2d_2b 3x3 pad 1 (64)
    stage1  maxpool 3/2 [73] -> conv2d_3b 1x1 (80) -> conv2d_4a 3x3 (192) [71]
    stage2  maxpool 3/2 [35] -> mixed_5b (320) -> block0..9 (Block35, scale 0.17)
    stage3  mixed_6a (1088) [17] -> block0..19 (Block17, scale 0.10)
    stage4  mixed_7a (2080) [8] -> block0..8 (Block8, scale 0.20) -> block9 (Block8, scale 1,
            no ReLU) -> conv2d_7b 1x1 (1536)
    global average pool -> dropout (timm default 0) -> ``head``

55,843,464 parameters with 1000 classes (timm 1.0). The smallest input is 75x75.
``features_only=True`` returns ``stem`` (64, reduction 2), ``stage1`` (192, 4), ``stage2``
(320, 8), ``stage3`` (1088, 16), ``stage4`` (1536, 32): timm's ``conv2d_2b``, ``conv2d_4a``,
``repeat``, ``repeat_1``, ``conv2d_7b``.

Names vs timm: ``conv2d_1a/2a/2b`` -> ``stem/...``; ``conv2d_3b/4a`` -> ``stage1/...``;
``mixed_5b`` and ``repeat.N`` -> ``stage2/mixed_5b``, ``stage2/blockN``; ``mixed_6a``,
``repeat_1.N`` -> ``stage3/...``; ``mixed_7a``, ``repeat_2.N`` -> ``stage4/mixed_7a``,
``stage4/blockN``; ``block8`` -> ``stage4/block9``; ``conv2d_7b`` -> ``stage4/conv2d_7b``;
``classif`` -> ``head``. Branches as in Inception-v4 (``branch1.2`` -> ``branch1_2``).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.layers import check_image, conv2d, global_avg_pool, max_pool
from jaxcnn.models import register_model
from jaxcnn.models.inception_v4 import ConvNormAct, Stage, conv_chain, pool_branch

__all__ = ["InceptionResNetV2"]

MIN_SIZE = 75
INCEPTION_RESNET_V2_FEATURES: tuple[dict[str, Any], ...] = (
    {"name": "stem", "channels": 64, "reduction": 2},
    {"name": "stage1", "channels": 192, "reduction": 4},
    {"name": "stage2", "channels": 320, "reduction": 8},
    {"name": "stage3", "channels": 1088, "reduction": 16},
    {"name": "stage4", "channels": 1536, "reduction": 32},
)


class Mixed5b(nn.Module):
    """35x35: 1x1 (96) | 1x1 -> 5x5 (64) | 1x1 -> 3x3 -> 3x3 (96) | avgpool -> 1x1 (64)."""

    conv: Any = ConvNormAct

    @nn.compact
    def __call__(self, x, train: bool = False):
        c = functools.partial(conv_chain, self.conv, x, train)
        b0 = self.conv(96, 1, name="branch0")(x, train)
        b1 = c("branch1", [(48, 1, 1, 0), (64, 5, 1, 2)])
        b2 = c("branch2", [(64, 1, 1, 0), (96, 3, 1, 1), (96, 3, 1, 1)])
        b3 = self.conv(64, 1, name="branch3_1")(pool_branch(x), train)
        return jnp.concatenate([b0, b1, b2, b3], -1)


class Mixed6a(nn.Module):
    """35x35 -> 17x17: 3x3/2 (384) | 1x1 -> 3x3 -> 3x3/2 (384) | maxpool (1088 out)."""

    conv: Any = ConvNormAct

    @nn.compact
    def __call__(self, x, train: bool = False):
        b0 = self.conv(384, 3, 2, name="branch0")(x, train)
        b1 = conv_chain(
            self.conv, x, train, "branch1", [(256, 1, 1, 0), (256, 3, 1, 1), (384, 3, 2, 0)]
        )
        return jnp.concatenate([b0, b1, max_pool(x, 3, 2)], -1)


class Mixed7a(nn.Module):
    """17x17 -> 8x8: 1x1 -> 3x3/2 (384) | 1x1 -> 3x3/2 (288) | 1x1 -> 3x3 -> 3x3/2 (320) |
    maxpool (2080 out)."""

    conv: Any = ConvNormAct

    @nn.compact
    def __call__(self, x, train: bool = False):
        c = functools.partial(conv_chain, self.conv, x, train)
        b0 = c("branch0", [(256, 1, 1, 0), (384, 3, 2, 0)])
        b1 = c("branch1", [(256, 1, 1, 0), (288, 3, 2, 0)])
        b2 = c("branch2", [(256, 1, 1, 0), (288, 3, 1, 1), (320, 3, 2, 0)])
        return jnp.concatenate([b0, b1, b2, max_pool(x, 3, 2)], -1)


class ResidualInception(nn.Module):
    """``act(x + scale * conv2d(concat(branches(x))))``: Block35 / Block17 / Block8.

    ``kind`` picks the branches: "35" (1x1 32 | 1x1 -> 3x3 32 | 1x1 -> 3x3 48 -> 3x3 64),
    "17" (1x1 192 | 1x1 128 -> 1x7 160 -> 7x1 192), "8" (1x1 192 | 1x1 192 -> 1x3 224 ->
    3x1 256). ``conv2d`` is a 1x1 conv with bias back to the input width; ``relu=False`` is the
    last Block8 (timm ``block8``, ``no_relu=True``).
    """

    kind: str
    scale: float = 1.0
    relu: bool = True
    conv: Any = ConvNormAct
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        c = functools.partial(conv_chain, self.conv, x, train)
        if self.kind == "35":
            branches = [
                self.conv(32, 1, name="branch0")(x, train),
                c("branch1", [(32, 1, 1, 0), (32, 3, 1, 1)]),
                c("branch2", [(32, 1, 1, 0), (48, 3, 1, 1), (64, 3, 1, 1)]),
            ]
        elif self.kind == "17":
            branches = [
                self.conv(192, 1, name="branch0")(x, train),
                c("branch1", [(128, 1, 1, 0), (160, (1, 7), 1, (0, 3)), (192, (7, 1), 1, (3, 0))]),
            ]
        elif self.kind == "8":
            branches = [
                self.conv(192, 1, name="branch0")(x, train),
                c("branch1", [(192, 1, 1, 0), (224, (1, 3), 1, (0, 1)), (256, (3, 1), 1, (1, 0))]),
            ]
        else:
            raise ValueError(
                f"ResidualInception: kind must be '35', '17' or '8', got {self.kind!r}"
            )
        y = conv2d(
            x.shape[-1],
            1,
            padding=0,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="conv2d",
        )(jnp.concatenate(branches, -1))
        y = y * self.scale + x
        return nn.relu(y) if self.relu else y


class InceptionResNetV2(nn.Module):
    """Inception-ResNet-v2, timm form; see the module docstring.

    Attributes:
      dropout: before ``head`` (timm ``drop_rate``, default 0).
    """

    num_classes: int = 1000
    dropout: float = 0.0
    in_channels: int = 3
    features_only: bool = False
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        check_image(x, model="inception_resnet_v2", channels=self.in_channels, min_size=MIN_SIZE)
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        conv = functools.partial(ConvNormAct, **common)
        p = functools.partial
        res = lambda kind, scale, relu=True: p(  # noqa: E731
            ResidualInception, kind, scale, relu, conv=conv, **common
        )
        stages: dict[str, list[tuple[str, Callable[..., Any] | None]]] = {
            "stem": [
                ("conv2d_1a", p(conv, 32, 3, 2)),
                ("conv2d_2a", p(conv, 32, 3)),
                ("conv2d_2b", p(conv, 64, 3, padding=1)),
            ],
            "stage1": [
                ("maxpool_3a", None),
                ("conv2d_3b", p(conv, 80, 1)),
                ("conv2d_4a", p(conv, 192, 3)),
            ],
            "stage2": [("maxpool_5a", None), ("mixed_5b", p(Mixed5b, conv=conv))]
            + [(f"block{i}", res("35", 0.17)) for i in range(10)],
            "stage3": [("mixed_6a", p(Mixed6a, conv=conv))]
            + [(f"block{i}", res("17", 0.10)) for i in range(20)],
            "stage4": [("mixed_7a", p(Mixed7a, conv=conv))]
            + [(f"block{i}", res("8", 0.20)) for i in range(9)]
            + [("block9", res("8", 1.0, False)), ("conv2d_7b", p(conv, 1536, 1))],
        }
        feats = []
        for name, layers in stages.items():
            x = Stage(tuple(layers), name=name)(x, train)
            feats.append(x)
        if self.features_only:
            return feats
        x = nn.Dropout(self.dropout)(global_avg_pool(x), deterministic=not train)
        return nn.Dense(self.num_classes, name="head", **common)(x)


@register_model(
    params=55_843_464,
    input_size=(299, 299, 3),
    paper="Szegedy, Ioffe, Vanhoucke, Alemi. Inception-v4, Inception-ResNet and the Impact of "
    "Residual Connections on Learning. AAAI 2017 (arXiv 2016)",
    reference="timm 1.0 inception_resnet_v2",
    feature_info=INCEPTION_RESNET_V2_FEATURES,
    min_size=MIN_SIZE,
    slow=True,
)
def inception_resnet_v2(**kwargs) -> InceptionResNetV2:
    """Inception-ResNet-v2 (timm ``inception_resnet_v2``), 299x299, 1536 features."""
    return InceptionResNetV2(**kwargs)
