"""VGG (Simonyan & Zisserman, 2015) in torchvision's form, with and without BatchNorm.

Five stages of 3x3 convolutions (padding 1, with bias) and ReLU, each followed by a 2x2/2 max
pool; configurations A (VGG-11), B (13), D (16) and E (19) as in the paper's Table 1. The ``_bn``
variants put a BatchNorm (eps 1e-5) between each convolution and its ReLU (convolutions keep
their bias, as in torchvision). Then, like torchvision, an adaptive average pool to 7x7 (a no-op
at 224x224, a replication at 32x32) and the classifier
``fc1 (4096) -> ReLU -> dropout -> fc2 (4096) -> ReLU -> dropout -> head``.

Parameters (1000 classes): 132,863,336 / 133,047,848 / 138,357,544 / 143,667,240, and with BN
132,868,840 / 133,053,736 / 138,365,992 / 143,678,248. The smallest input is 32x32 (five
halvings). Names: ``stage{1..5}/conv{i}`` (and ``stage{s}/bn{i}``), ``fc1``, ``fc2``, ``head``.

``features_only=True`` returns each stage's ReLU output *before* its max pool (timm's
convention), reductions 1, 2, 4, 8, 16.

Deviations: flattening is NHWC; converting torchvision's ``classifier.0.weight`` (4096, 25088)
means ``w.reshape(4096, 512, 7, 7).transpose(2, 3, 1, 0).reshape(25088, 4096)``.
Initialisation follows torchvision (convolutions Kaiming-normal fan-out, linear N(0, 0.01),
zero biases), which matters for training the BN-free variants from scratch.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.layers import adaptive_avg_pool, batch_norm, check_image, conv2d, max_pool
from jaxcnn.models import register_model

# convolutions per stage (widths 64, 128, 256, 512, 512)
VGG_DEPTHS = {11: (1, 1, 2, 2, 2), 13: (2, 2, 2, 2, 2), 16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}
VGG_WIDTHS = (64, 128, 256, 512, 512)
VGG_FEATURES = tuple(
    {"name": f"stage{i + 1}", "channels": c, "reduction": 2**i} for i, c in enumerate(VGG_WIDTHS)
)
VGG_MIN_SIZE = 32

conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")  # kaiming_normal_ fan_out
dense_init = nn.initializers.normal(0.01)


class VGGStage(nn.Module):
    """``depth`` x (3x3 conv [-> BN] -> ReLU); the max pool is applied by the caller."""

    features: int
    depth: int
    norm: bool = False
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        for i in range(1, self.depth + 1):
            x = conv2d(
                self.features, 3, padding=1, kernel_init=conv_init, name=f"conv{i}", **common
            )(x)
            if self.norm:
                x = batch_norm(train, name=f"bn{i}", **common)(x)
            x = nn.relu(x)
        return x


class VGG(nn.Module):
    """VGG; ``depths`` are the convolutions per stage, ``norm`` adds BatchNorm."""

    depths: Sequence[int] = VGG_DEPTHS[16]
    norm: bool = False
    num_classes: int = 1000
    dropout: float = 0.5
    in_channels: int = 3
    features_only: bool = False
    dtype: Any = None
    param_dtype: Any = jnp.float32
    variant: str = "vgg"
    conv_impl: str = "fast"  # "xla": plain lax convolutions (jaxcnn.layers.fast_conv)

    @nn.compact
    def __call__(self, x, train: bool = False):
        check_image(x, model=self.variant, channels=self.in_channels, min_size=VGG_MIN_SIZE)
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        feats = []
        for i, (width, depth) in enumerate(zip(VGG_WIDTHS, self.depths)):
            if i > 0:
                x = max_pool(x, 2, 2)
            x = VGGStage(width, depth, self.norm, name=f"stage{i + 1}", **common)(x, train)
            feats.append(x)
        if self.features_only:
            return feats
        x = max_pool(x, 2, 2)
        x = adaptive_avg_pool(x, 7)
        x = x.reshape((x.shape[0], -1))
        dense = functools.partial(
            nn.Dense, kernel_init=dense_init, dtype=self.dtype, param_dtype=self.param_dtype
        )
        x = nn.relu(dense(4096, name="fc1")(x))
        x = nn.Dropout(self.dropout)(x, deterministic=not train)
        x = nn.relu(dense(4096, name="fc2")(x))
        x = nn.Dropout(self.dropout)(x, deterministic=not train)
        return dense(self.num_classes, name="head")(x)


_PAPER = (
    "Simonyan, Zisserman. Very deep convolutional networks for large-scale image "
    "recognition. ICLR 2015"
)


def _register(depth: int, norm: bool, params: int):
    name = f"vgg{depth}" + ("_bn" if norm else "")

    @register_model(
        name,
        params=params,
        input_size=(224, 224, 3),
        paper=_PAPER,
        reference="torchvision 0.29",
        feature_info=VGG_FEATURES,
        min_size=VGG_MIN_SIZE,
        slow=True,
    )
    def constructor(**kwargs) -> VGG:
        return VGG(depths=VGG_DEPTHS[depth], norm=norm, variant=name, **kwargs)

    constructor.__name__ = constructor.__qualname__ = name
    constructor.__doc__ = f"VGG-{depth}{' with BatchNorm' if norm else ''} (torchvision)."
    return constructor


vgg11 = _register(11, False, 132_863_336)
vgg13 = _register(13, False, 133_047_848)
vgg16 = _register(16, False, 138_357_544)
vgg19 = _register(19, False, 143_667_240)
vgg11_bn = _register(11, True, 132_868_840)
vgg13_bn = _register(13, True, 133_053_736)
vgg16_bn = _register(16, True, 138_365_992)
vgg19_bn = _register(19, True, 143_678_248)
