"""DenseNet-BC (Huang et al., 2017) as torchvision builds it.

Faithful to torchvision (parameter counts to the unit, BN eps 1e-5, convs without bias):
growth rate 32, bottleneck width ``bn_size * growth = 128``, compression 0.5 in the transitions.

- stem: 7x7/2 conv (64) + BN + ReLU + 3x3/2 max pool (torchvision ``conv0/norm0/pool0``);
- ``stage1..stage4``: dense blocks of (6, 12, 24, 16) / (6, 12, 32, 32) / (6, 12, 48, 32) dense
  layers named ``block0..``; each is BN-ReLU-1x1 conv (128) - BN-ReLU-3x3 conv (32), and its 32
  new maps are concatenated onto its input;
- ``stage2..stage4`` open with the torchvision transition (``transition``: BN-ReLU-1x1 conv
  halving the channels - 2x2/2 average pool), so that stage k works at reduction 4 * 2**(k-1);
- ``final_norm`` (torchvision ``norm5``) + ReLU, global average pool, ``head``.

Parameter tree: ``stem/{conv,bn}``, ``stage1/block0/{bn1,conv1,bn2,conv2}``,
``stage2/transition/{bn,conv}``, ..., ``final_norm``, ``head``.

``memory_efficient=True`` wraps each dense layer in ``nn.remat``: activations are recomputed in
the backward pass instead of stored (torchvision checkpoints the bottleneck the same way);
parameters, their names and the outputs are identical.

``features_only=True`` returns the four dense-block outputs; the last one after
``final_norm`` + ReLU (what the classifier sees). Stages 1-3 are the raw concatenations.

Minimum input side 29: the stem gives ceil(n/4) and each of the three 2x2/2 average pools needs
at least 2 pixels, so ceil(n/4) >= 8 (torchvision fails at 28 as well).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.layers import avg_pool, batch_norm, check_image, conv2d, global_avg_pool, max_pool
from jaxcnn.models import register_model

ModuleDef = Any
MIN_SIZE = 29
# torchvision: nn.init.kaiming_normal_ (fan_in, gain sqrt(2)) for every conv
he_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def _norm(train: bool, **kwargs) -> nn.BatchNorm:
    return batch_norm(train, 0.9, 1e-5, **kwargs)


class StemConvBN(nn.Module):
    """7x7/2 conv + BN (torchvision ``conv0``, ``norm0``)."""

    features: int
    conv: ModuleDef
    norm: ModuleDef

    @nn.compact
    def __call__(self, x, train: bool = False):
        return self.norm(train, name="bn")(self.conv(self.features, 7, 2, name="conv")(x))


class DenseLayer(nn.Module):
    """BN-ReLU-1x1 conv (``bn_size * growth_rate``) - BN-ReLU-3x3 conv (``growth_rate``);
    returns the input with the ``growth_rate`` new maps concatenated (channels last)."""

    growth_rate: int
    bn_size: int
    drop_rate: float
    conv: ModuleDef
    norm: ModuleDef
    act: Callable = nn.relu

    @nn.compact
    def __call__(self, x, train: bool = False):
        y = self.act(self.norm(train, name="bn1")(x))
        y = self.conv(self.bn_size * self.growth_rate, 1, name="conv1")(y)
        y = self.act(self.norm(train, name="bn2")(y))
        y = self.conv(self.growth_rate, 3, name="conv2")(y)
        if self.drop_rate > 0:
            y = nn.Dropout(self.drop_rate)(y, deterministic=not train)
        return jnp.concatenate([x, y.astype(x.dtype)], axis=-1)


class Transition(nn.Module):
    """BN-ReLU-1x1 conv to ``features`` - 2x2/2 average pool."""

    features: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable = nn.relu

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = self.act(self.norm(train, name="bn")(x))
        x = self.conv(self.features, 1, name="conv")(x)
        return avg_pool(x, 2, 2)


class DenseStage(nn.Module):
    """[transition] + ``num_layers`` dense layers (``block0..``)."""

    num_layers: int
    growth_rate: int
    bn_size: int
    drop_rate: float
    conv: ModuleDef
    norm: ModuleDef
    transition: bool
    memory_efficient: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.transition:
            x = Transition(x.shape[-1] // 2, self.conv, self.norm, name="transition")(x, train)
        layer_cls = (
            nn.remat(DenseLayer, static_argnums=(2,)) if self.memory_efficient else DenseLayer
        )
        for i in range(self.num_layers):
            x = layer_cls(
                self.growth_rate,
                self.bn_size,
                self.drop_rate,
                self.conv,
                self.norm,
                name=f"block{i}",
            )(x, train)
        return x


class DenseNet(nn.Module):
    """DenseNet-BC. ``features_only=True`` returns the four dense-block outputs."""

    block_config: Sequence[int] = (6, 12, 24, 16)
    growth_rate: int = 32
    num_init_features: int = 64
    bn_size: int = 4
    drop_rate: float = 0.0
    memory_efficient: bool = False
    num_classes: int = 1000
    in_channels: int = 3
    features_only: bool = False
    dtype: Any = None
    param_dtype: Any = jnp.float32
    variant: str = "densenet"
    conv_impl: str = "fast"  # "xla": plain lax convolutions (jaxcnn.layers.fast_conv)

    @nn.compact
    def __call__(self, x, train: bool = False):
        min_size = 4 * 2 ** (len(self.block_config) - 1) - 3  # 29 for four blocks
        check_image(x, model=self.variant, channels=self.in_channels, min_size=min_size)
        conv = functools.partial(
            conv2d,
            use_bias=False,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=he_normal,
        )
        # norm(train, name=...): train is given at call time, a static argument of nn.remat
        norm = functools.partial(_norm, dtype=self.dtype, param_dtype=self.param_dtype)
        x = StemConvBN(self.num_init_features, conv, norm, name="stem")(x, train)
        x = max_pool(nn.relu(x), 3, 2, padding=1)
        features = []
        for i, n in enumerate(self.block_config):
            x = DenseStage(
                n,
                self.growth_rate,
                self.bn_size,
                self.drop_rate,
                conv,
                norm,
                transition=i > 0,
                memory_efficient=self.memory_efficient,
                name=f"stage{i + 1}",
            )(x, train)
            features.append(x)
        x = nn.relu(norm(train, name="final_norm")(x))
        if self.features_only:
            return features[:-1] + [x]
        x = global_avg_pool(x)
        return nn.Dense(
            self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="head"
        )(x)


def _feature_info(block_config, growth=32, init=64):
    info, c = [], init
    for i, n in enumerate(block_config):
        if i > 0:
            c //= 2
        c += n * growth
        info.append({"name": f"stage{i + 1}", "channels": c, "reduction": 4 * 2**i})
    return tuple(info)


_PAPER = (
    "Huang, Liu, van der Maaten, Weinberger. Densely connected convolutional networks. CVPR 2017"
)


def _register(name, params, block_config, **extra):
    return register_model(
        name,
        params=params,
        input_size=(224, 224, 3),
        paper=_PAPER,
        reference="torchvision 0.29",
        feature_info=_feature_info(block_config),
        min_size=MIN_SIZE,
        **extra,
    )


@_register("densenet121", 7_978_856, (6, 12, 24, 16))
def densenet121(**kwargs) -> DenseNet:
    return DenseNet(block_config=(6, 12, 24, 16), variant="densenet121", **kwargs)


@_register("densenet169", 14_149_480, (6, 12, 32, 32))
def densenet169(**kwargs) -> DenseNet:
    return DenseNet(block_config=(6, 12, 32, 32), variant="densenet169", **kwargs)


@_register("densenet201", 20_013_928, (6, 12, 48, 32))
def densenet201(**kwargs) -> DenseNet:
    return DenseNet(block_config=(6, 12, 48, 32), variant="densenet201", **kwargs)
