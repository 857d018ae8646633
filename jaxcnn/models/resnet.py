"""ResNet (He et al., 2016), ResNeXt (Xie et al., 2017) and Wide ResNet (Zagoruyko & Komodakis,
2016) as torchvision builds them.

Faithful to torchvision (parameter counts to the unit, layer order, padding, BN eps 1e-5):
- "ResNet v1.5": in a bottleneck the stride sits in the 3x3 conv, not in the first 1x1;
- the projection shortcut (``downsample``: 1x1 conv + BN) appears where the stride or the width
  changes; identity otherwise;
- convs without bias, He-normal (fan_out) initialisation as torchvision;
  ``zero_init_residual=True`` zeroes the scale of the last BN of every block (torchvision's
  option; Goyal et al. 2017), so each block starts as the identity.

Written like the Flax ImageNet example: blocks take ``conv``/``norm``/``act`` and the variants
are ``functools.partial``-style constructors. Parameter tree::

    stem/{conv,bn}  stage1..stage4/block0../{conv1,bn1,conv2,bn2[,conv3,bn3][,downsample/{conv,bn}]}
    head

``stem_type="cifar"`` replaces the 7x7/2 conv + 3x3/2 max pool with a 3x3/1 conv (He et al.
2016, section 4.2, CIFAR-10), so 32x32 images reach stage4 at 4x4 instead of 1x1.
Any side >= 1 works (every conv/pool keeps at least one output pixel), so ``min_size`` is 1.

``scan_blocks=True`` runs blocks 1.. of every stage (identical: stride 1, no projection) under
one ``nn.scan`` each, stacked under ``stageN/blocks`` (:mod:`jaxcnn.models.scan`), so that
ResNet-101/152 compile one block body per stage; ``scan_remat=True`` rematerialises them.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.layers import batch_norm, check_image, conv2d, global_avg_pool, max_pool
from jaxcnn.models import register_model
from jaxcnn.models.scan import STACKED, check_scan_options, run_scanned

ModuleDef = Any
# torchvision: nn.init.kaiming_normal_(mode="fan_out", nonlinearity="relu")
he_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class ConvBN(nn.Module):
    """Conv -> BN without activation: the stem (before its ReLU) and the projection shortcut."""

    features: int
    kernel_size: int
    stride: int
    conv: ModuleDef
    norm: ModuleDef

    @nn.compact
    def __call__(self, x):
        x = self.conv(self.features, self.kernel_size, self.stride, name="conv")(x)
        return self.norm(name="bn")(x)


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34). Output channels = ``features``."""

    features: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable
    stride: int = 1
    groups: int = 1  # unused: torchvision's BasicBlock supports only groups=1, width 64
    base_width: int = 64
    zero_init_residual: bool = False
    expansion = 1

    @nn.compact
    def __call__(self, x):
        residual = x
        y = self.act(
            self.norm(name="bn1")(self.conv(self.features, 3, self.stride, name="conv1")(x))
        )
        y = self.conv(self.features, 3, 1, name="conv2")(y)
        y = self.norm(
            scale_init=nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones,
            name="bn2",
        )(y)
        if self.stride != 1 or x.shape[-1] != self.features:
            residual = ConvBN(
                self.features, 1, self.stride, self.conv, self.norm, name="downsample"
            )(x)
        return self.act(y + residual)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (stride, groups) -> 1x1 expand x4 (ResNet-50+, ResNeXt, Wide ResNet).

    Inner width = ``int(features * base_width / 64) * groups`` as in torchvision, so
    ResNeXt-50 32x4d has 128 inner channels in stage1 and Wide ResNet-50-2 has 128.
    """

    features: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable
    stride: int = 1
    groups: int = 1
    base_width: int = 64
    zero_init_residual: bool = False
    expansion = 4

    @nn.compact
    def __call__(self, x):
        width = int(self.features * (self.base_width / 64.0)) * self.groups
        out = self.features * self.expansion
        residual = x
        y = self.act(self.norm(name="bn1")(self.conv(width, 1, 1, name="conv1")(x)))
        y = self.conv(width, 3, self.stride, groups=self.groups, name="conv2")(y)
        y = self.act(self.norm(name="bn2")(y))
        y = self.conv(out, 1, 1, name="conv3")(y)
        y = self.norm(
            scale_init=nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones,
            name="bn3",
        )(y)
        if self.stride != 1 or x.shape[-1] != out:
            residual = ConvBN(out, 1, self.stride, self.conv, self.norm, name="downsample")(x)
        return self.act(y + residual)


class ResNetStage(nn.Module):
    """``num_blocks`` blocks; the first carries the stride (and the projection shortcut).
    ``scan``: blocks 1.. run under one ``nn.scan`` as ``blocks`` (``remat``: rematerialised)."""

    block_cls: ModuleDef
    num_blocks: int
    features: int
    stride: int
    block_kwargs: dict
    scan: bool = False
    remat: bool = False

    @nn.compact
    def __call__(self, x):
        for i in range(1 if self.scan else self.num_blocks):
            x = self.block_cls(
                self.features,
                stride=self.stride if i == 0 else 1,
                name=f"block{i}",
                **self.block_kwargs,
            )(x)
        if self.scan and self.num_blocks > 1:
            block = self.block_cls(self.features, stride=1, name=STACKED, **self.block_kwargs)
            x = run_scanned(block, x, self.num_blocks - 1, remat=self.remat)
        return x


class ResNet(nn.Module):
    """ResNet / ResNeXt / Wide ResNet. ``features_only=True`` returns the four stage outputs."""

    stage_sizes: Sequence[int]
    block_cls: ModuleDef
    num_classes: int = 1000
    groups: int = 1
    width_per_group: int = 64
    num_filters: int = 64
    zero_init_residual: bool = False
    stem_type: str = "imagenet"  # "imagenet": 7x7/2 conv + 3x3/2 max pool; "cifar": 3x3/1 conv
    act: Callable = nn.relu
    in_channels: int = 3
    features_only: bool = False
    dtype: Any = None
    param_dtype: Any = jnp.float32
    variant: str = "resnet"
    conv_impl: str = "fast"  # "xla": plain lax convolutions (jaxcnn.layers.fast_conv)
    scan_blocks: bool = False  # blocks 1.. of each stage under nn.scan (jaxcnn.models.scan)
    scan_remat: bool = False  # with scan_blocks: nn.remat around each scanned block

    def scan_groups(self) -> tuple[tuple[str, int, int], ...]:
        """``(scope, first, count)`` of the blocks ``scan_blocks=True`` stacks."""
        return tuple((f"stage{i + 1}", 1, n - 1) for i, n in enumerate(self.stage_sizes) if n > 1)

    @nn.compact
    def __call__(self, x, train: bool = False):
        check_image(x, model=self.variant, channels=self.in_channels, min_size=1)
        check_scan_options(self.variant, self.scan_blocks, self.scan_remat)
        if self.stem_type not in ("imagenet", "cifar"):
            raise ValueError(
                f"{self.variant}: stem_type must be 'imagenet' or 'cifar', got {self.stem_type!r}"
            )
        conv = functools.partial(
            conv2d,
            use_bias=False,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=he_fan_out,
        )
        norm = functools.partial(
            batch_norm, train, 0.9, 1e-5, dtype=self.dtype, param_dtype=self.param_dtype
        )
        if self.stem_type == "imagenet":
            x = self.act(ConvBN(self.num_filters, 7, 2, conv, norm, name="stem")(x))
            x = max_pool(x, 3, 2, padding=1)
        else:
            x = self.act(ConvBN(self.num_filters, 3, 1, conv, norm, name="stem")(x))
        block_kwargs = dict(
            conv=conv,
            norm=norm,
            act=self.act,
            groups=self.groups,
            base_width=self.width_per_group,
            zero_init_residual=self.zero_init_residual,
        )
        features = []
        for i, n in enumerate(self.stage_sizes):
            x = ResNetStage(
                self.block_cls,
                n,
                self.num_filters * 2**i,
                1 if i == 0 else 2,
                block_kwargs,
                scan=self.scan_blocks,
                remat=self.scan_remat,
                name=f"stage{i + 1}",
            )(x)
            features.append(x)
        if self.features_only:
            return features
        x = global_avg_pool(x)
        return nn.Dense(
            self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="head"
        )(x)


def _feature_info(block_cls, cifar: bool = False):
    exp = block_cls.expansion
    return tuple(
        {
            "name": f"stage{i + 1}",
            "channels": 64 * 2**i * exp,
            "reduction": (1 if cifar else 4) * 2**i,
        }
        for i in range(4)
    )


_HE = "He, Zhang, Ren, Sun. Deep residual learning for image recognition. CVPR 2016"
_XIE = (
    "Xie, Girshick, Dollar, Tu, He. Aggregated residual transformations for deep neural "
    "networks (ResNeXt). CVPR 2017"
)
_WRN = "Zagoruyko, Komodakis. Wide residual networks. BMVC 2016"
_TV = "torchvision 0.29 (ResNet v1.5)"


def _resnet(variant, stage_sizes, block_cls, **kwargs):
    return ResNet(stage_sizes=tuple(stage_sizes), block_cls=block_cls, variant=variant, **kwargs)


def _register(name, params, paper, block_cls, slow=False, **extra):
    return register_model(
        name,
        params=params,
        input_size=(224, 224, 3),
        paper=paper,
        reference=_TV,
        feature_info=_feature_info(block_cls),
        min_size=1,
        slow=slow,
        **extra,
    )


@_register("resnet18", 11_689_512, _HE, BasicBlock)
def resnet18(**kwargs) -> ResNet:
    return _resnet("resnet18", (2, 2, 2, 2), BasicBlock, **kwargs)


@_register("resnet34", 21_797_672, _HE, BasicBlock)
def resnet34(**kwargs) -> ResNet:
    return _resnet("resnet34", (3, 4, 6, 3), BasicBlock, **kwargs)


@_register("resnet50", 25_557_032, _HE, Bottleneck)
def resnet50(**kwargs) -> ResNet:
    return _resnet("resnet50", (3, 4, 6, 3), Bottleneck, **kwargs)


@_register("resnet101", 44_549_160, _HE, Bottleneck, slow=True)
def resnet101(**kwargs) -> ResNet:
    return _resnet("resnet101", (3, 4, 23, 3), Bottleneck, **kwargs)


@_register("resnet152", 60_192_808, _HE, Bottleneck, slow=True)
def resnet152(**kwargs) -> ResNet:
    return _resnet("resnet152", (3, 8, 36, 3), Bottleneck, **kwargs)


@_register("resnext50_32x4d", 25_028_904, _XIE, Bottleneck)
def resnext50_32x4d(**kwargs) -> ResNet:
    kwargs = {"groups": 32, "width_per_group": 4, **kwargs}
    return _resnet("resnext50_32x4d", (3, 4, 6, 3), Bottleneck, **kwargs)


@_register("wide_resnet50_2", 68_883_240, _WRN, Bottleneck, slow=True)
def wide_resnet50_2(**kwargs) -> ResNet:
    kwargs = {"width_per_group": 128, **kwargs}
    return _resnet("wide_resnet50_2", (3, 4, 6, 3), Bottleneck, **kwargs)


@register_model(
    params=11_173_962,
    input_size=(32, 32, 3),
    num_classes=10,
    paper=_HE,
    reference="He et al. 2016 CIFAR-style stem; torchvision resnet18 body",
    feature_info=_feature_info(BasicBlock, cifar=True),
    min_size=1,
)
def resnet18_cifar(**kwargs) -> ResNet:
    """ResNet-18 for 32x32 images: 3x3/1 stem conv, no max pool, 10 classes by default."""
    kwargs = {"num_classes": 10, "stem_type": "cifar", **kwargs}
    return _resnet("resnet18_cifar", (2, 2, 2, 2), BasicBlock, **kwargs)
