"""Inception-v4 (Szegedy, Ioffe, Vanhoucke, Alemi, 2016) as timm builds it (``inception_v4``).

Every convolution is timm's ``ConvNormAct``: conv (no bias, padding 0 unless given) ->
BatchNorm (eps 1e-3) -> ReLU. Average pools in the branches are 3x3/1, padding 1, not
counting the padding (``count_include_pad=False``). Layout (299x299 input, side in brackets):

    stem    conv2d_1a 3x3/2 (32) [149] -> conv2d_2a 3x3 (32) [147] -> conv2d_2b 3x3 pad 1 (64)
    stage1  mixed_3a: maxpool 3/2 | conv 3x3/2 (96) -> 160 [73]
    stage2  mixed_4a (192) [71] -> mixed_5a: conv 3x3/2 | maxpool (384) [35]
            -> block0..3 (Inception-A, 384)
    stage3  mixed_6a (Reduction-A, 1024) [17] -> block0..6 (Inception-B, 1024)
    stage4  mixed_7a (Reduction-B, 1536) [8] -> block0..2 (Inception-C, 1536)
    global average pool -> dropout (timm default 0) -> ``head``

42,679,816 parameters with 1000 classes (timm 1.0). The smallest input is 75x75
(75 -> 37 -> 35 -> 17 -> 15 -> 7 -> 3 -> 1). ``features_only=True`` returns the outputs of
``stem`` (64, reduction 2), ``stage1`` (160, 4), ``stage2`` (384, 8), ``stage3`` (1024, 16)
and ``stage4`` (1536, 32): timm's ``features.2/3/9/17/21``.

Names vs timm: ``features.0..2`` -> ``stem/conv2d_1a, 2a, 2b``; ``features.3`` ->
``stage1/mixed_3a``; ``features.4, 5`` -> ``stage2/mixed_4a, 5a``; ``features.6..9`` ->
``stage2/block0..3``; ``features.10`` -> ``stage3/mixed_6a``; ``features.11..17`` ->
``stage3/block0..6``; ``features.18`` -> ``stage4/mixed_7a``; ``features.19..21`` ->
``stage4/block0..2``; ``last_linear`` -> ``head``. Inside a block a timm ``nn.Sequential``
branch ``branch1.2`` is ``branch1_2`` (the average-pool branch's conv is ``branch3_1``), and
each conv has ``conv`` and ``bn`` as in timm.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.layers import ConvBNAct, avg_pool, check_image, global_avg_pool, max_pool
from jaxcnn.models import register_model

__all__ = ["ConvNormAct", "InceptionV4", "Stage"]

MIN_SIZE = 75
INCEPTION_V4_FEATURES = (
    {"name": "stem", "channels": 64, "reduction": 2},
    {"name": "stage1", "channels": 160, "reduction": 4},
    {"name": "stage2", "channels": 384, "reduction": 8},
    {"name": "stage3", "channels": 1024, "reduction": 16},
    {"name": "stage4", "channels": 1536, "reduction": 32},
)


class ConvNormAct(ConvBNAct):
    """timm's ``ConvNormAct`` in the Inception-v4 / Inception-ResNet-v2 ports: conv (no bias;
    padding 0, ``VALID``, unless given) -> BatchNorm (eps 1e-3) -> ReLU."""

    padding: Any = 0
    bn_eps: float = 1e-3


def pool_branch(x):
    """The 3x3/1 average pool (padding 1, padding not counted) in front of a pool branch."""
    return avg_pool(x, 3, 1, padding=1, count_include_pad=False)


def conv_chain(conv, x, train, prefix, specs):
    """Convs ``prefix_0, prefix_1, ...`` in sequence (a timm ``nn.Sequential`` branch); each
    spec is ``(features, kernel, stride, padding)``."""
    for i, (f, k, s, p) in enumerate(specs):
        x = conv(f, k, s, p, name=f"{prefix}_{i}")(x, train)
    return x


_ROW7, _COL7 = ((1, 7), 1, (0, 3)), ((7, 1), 1, (3, 0))
_ROW3, _COL3 = ((1, 3), 1, (0, 1)), ((3, 1), 1, (1, 0))


class Mixed3a(nn.Module):
    """Stem part 1: maxpool 3x3/2 | conv 3x3/2 (96), concatenated (64 + 96 = 160)."""

    conv: Any = ConvNormAct

    @nn.compact
    def __call__(self, x, train: bool = False):
        return jnp.concatenate([max_pool(x, 3, 2), self.conv(96, 3, 2, name="conv")(x, train)], -1)


class Mixed4a(nn.Module):
    """Stem part 2: 1x1 -> 3x3 (96) | 1x1 -> 1x7 -> 7x1 -> 3x3 (96), both unpadded 3x3."""

    conv: Any = ConvNormAct

    @nn.compact
    def __call__(self, x, train: bool = False):
        c = functools.partial(conv_chain, self.conv, x, train)
        b0 = c("branch0", [(64, 1, 1, 0), (96, 3, 1, 0)])
        b1 = c("branch1", [(64, 1, 1, 0), (64, *_ROW7), (64, *_COL7), (96, 3, 1, 0)])
        return jnp.concatenate([b0, b1], -1)


class Mixed5a(nn.Module):
    """Stem part 3: conv 3x3/2 (192) | maxpool 3x3/2 (192 + 192 = 384)."""

    conv: Any = ConvNormAct

    @nn.compact
    def __call__(self, x, train: bool = False):
        return jnp.concatenate([self.conv(192, 3, 2, name="conv")(x, train), max_pool(x, 3, 2)], -1)


class InceptionA(nn.Module):
    """35x35: 1x1 (96) | 1x1 -> 3x3 (96) | 1x1 -> 3x3 -> 3x3 (96) | avgpool -> 1x1 (96)."""

    conv: Any = ConvNormAct

    @nn.compact
    def __call__(self, x, train: bool = False):
        c = functools.partial(conv_chain, self.conv, x, train)
        b0 = self.conv(96, 1, name="branch0")(x, train)
        b1 = c("branch1", [(64, 1, 1, 0), (96, 3, 1, 1)])
        b2 = c("branch2", [(64, 1, 1, 0), (96, 3, 1, 1), (96, 3, 1, 1)])
        b3 = self.conv(96, 1, name="branch3_1")(pool_branch(x), train)
        return jnp.concatenate([b0, b1, b2, b3], -1)


class ReductionA(nn.Module):
    """35x35 -> 17x17: 3x3/2 (384) | 1x1 -> 3x3 -> 3x3/2 (256) | maxpool 3x3/2 (1024 out)."""

    conv: Any = ConvNormAct

    @nn.compact
    def __call__(self, x, train: bool = False):
        b0 = self.conv(384, 3, 2, name="branch0")(x, train)
        b1 = conv_chain(
            self.conv, x, train, "branch1", [(192, 1, 1, 0), (224, 3, 1, 1), (256, 3, 2, 0)]
        )
        return jnp.concatenate([b0, b1, max_pool(x, 3, 2)], -1)


class InceptionB(nn.Module):
    """17x17: 1x1 (384) | 1x1 -> 1x7 -> 7x1 (256) | 1x1 -> 7x1 -> 1x7 -> 7x1 -> 1x7 (256) |
    avgpool -> 1x1 (128)."""

    conv: Any = ConvNormAct

    @nn.compact
    def __call__(self, x, train: bool = False):
        c = functools.partial(conv_chain, self.conv, x, train)
        b0 = self.conv(384, 1, name="branch0")(x, train)
        b1 = c("branch1", [(192, 1, 1, 0), (224, *_ROW7), (256, *_COL7)])
        b2 = c(
            "branch2",
            [(192, 1, 1, 0), (192, *_COL7), (224, *_ROW7), (224, *_COL7), (256, *_ROW7)],
        )
        b3 = self.conv(128, 1, name="branch3_1")(pool_branch(x), train)
        return jnp.concatenate([b0, b1, b2, b3], -1)


class ReductionB(nn.Module):
    """17x17 -> 8x8: 1x1 -> 3x3/2 (192) | 1x1 -> 1x7 -> 7x1 -> 3x3/2 (320) | maxpool 3x3/2."""

    conv: Any = ConvNormAct

    @nn.compact
    def __call__(self, x, train: bool = False):
        c = functools.partial(conv_chain, self.conv, x, train)
        b0 = c("branch0", [(192, 1, 1, 0), (192, 3, 2, 0)])
        b1 = c("branch1", [(256, 1, 1, 0), (256, *_ROW7), (320, *_COL7), (320, 3, 2, 0)])
        return jnp.concatenate([b0, b1, max_pool(x, 3, 2)], -1)


class InceptionC(nn.Module):
    """8x8: 1x1 (256) | 1x1 -> (1x3 | 3x1) (512) | 1x1 -> 3x1 -> 1x3 -> (1x3 | 3x1) (512) |
    avgpool -> 1x1 (256)."""

    conv: Any = ConvNormAct

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv = self.conv
        b0 = conv(256, 1, name="branch0")(x, train)
        b1 = conv(384, 1, name="branch1_0")(x, train)
        b1 = [
            conv(256, *_ROW3, name="branch1_1a")(b1, train),
            conv(256, *_COL3, name="branch1_1b")(b1, train),
        ]
        b2 = conv(384, 1, name="branch2_0")(x, train)
        b2 = conv(448, *_COL3, name="branch2_1")(b2, train)
        b2 = conv(512, *_ROW3, name="branch2_2")(b2, train)
        b2 = [
            conv(256, *_ROW3, name="branch2_3a")(b2, train),
            conv(256, *_COL3, name="branch2_3b")(b2, train),
        ]
        b3 = conv(256, 1, name="branch3_1")(pool_branch(x), train)
        return jnp.concatenate([b0, *b1, *b2, b3], -1)


class Stage(nn.Module):
    """Layers run in order: ``(name, factory)`` pairs, each factory called as
    ``factory(name=name)(x, train)``; a ``None`` factory is a 3x3/2 max pool (no parameters)."""

    layers: Sequence[tuple[str, Callable | None]]

    @nn.compact
    def __call__(self, x, train: bool = False):
        for name, make in self.layers:
            x = max_pool(x, 3, 2) if make is None else make(name=name)(x, train)
        return x


class InceptionV4(nn.Module):
    """Inception-v4, timm form; see the module docstring.

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
        check_image(x, model="inception_v4", channels=self.in_channels, min_size=MIN_SIZE)
        conv = functools.partial(ConvNormAct, dtype=self.dtype, param_dtype=self.param_dtype)
        p = functools.partial
        blk = lambda cls: p(cls, conv=conv)  # noqa: E731
        stages = {
            "stem": [
                ("conv2d_1a", p(conv, 32, 3, 2)),
                ("conv2d_2a", p(conv, 32, 3)),
                ("conv2d_2b", p(conv, 64, 3, padding=1)),
            ],
            "stage1": [("mixed_3a", blk(Mixed3a))],
            "stage2": [("mixed_4a", blk(Mixed4a)), ("mixed_5a", blk(Mixed5a))]
            + [(f"block{i}", blk(InceptionA)) for i in range(4)],
            "stage3": [("mixed_6a", blk(ReductionA))]
            + [(f"block{i}", blk(InceptionB)) for i in range(7)],
            "stage4": [("mixed_7a", blk(ReductionB))]
            + [(f"block{i}", blk(InceptionC)) for i in range(3)],
        }
        feats = []
        for name, layers in stages.items():
            x = Stage(tuple(layers), name=name)(x, train)
            feats.append(x)
        if self.features_only:
            return feats
        x = nn.Dropout(self.dropout)(global_avg_pool(x), deterministic=not train)
        return nn.Dense(
            self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="head"
        )(x)


@register_model(
    params=42_679_816,
    input_size=(299, 299, 3),
    paper="Szegedy, Ioffe, Vanhoucke, Alemi. Inception-v4, Inception-ResNet and the Impact of "
    "Residual Connections on Learning. AAAI 2017 (arXiv 2016)",
    reference="timm 1.0 inception_v4",
    feature_info=INCEPTION_V4_FEATURES,
    min_size=MIN_SIZE,
    slow=True,
)
def inception_v4(**kwargs) -> InceptionV4:
    """Inception-v4 (timm ``inception_v4``), 299x299, 1536 features."""
    return InceptionV4(**kwargs)
