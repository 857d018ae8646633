"""ConvNeXt (Liu et al., 2022), faithful to torchvision 0.2x (``convnext_tiny`` .. ``_large``) and
timm (``convnext_xlarge``).

Stem: 4x4 conv stride 4 + LayerNorm. Four stages; stages 2-4 start with a downsampling layer
(LayerNorm + 2x2 conv stride 2). Block: 7x7 depthwise conv (padding 3) -> LayerNorm -> Linear
``4C`` -> GELU (exact) -> Linear ``C`` -> layer scale (init ``1e-6``) -> stochastic depth ->
residual. Head: global average pool -> LayerNorm -> Linear ``head``. LayerNorm eps is 1e-6
everywhere. Stochastic depth grows linearly per block from 0 to ``drop_path_rate`` (torchvision's
``stochastic_depth_prob * block_id / (blocks - 1)``); the defaults are torchvision's
(tiny 0.1, small 0.4, base/large 0.5; xlarge 0.5, our choice: timm has no default).

Layout vs torchvision: torchvision keeps the downsampling layers between stages in
``features``; here (as in timm) they open ``stage2``..``stage4`` (``stageN/downsample``), so that
``features_only=True`` returns the four stage outputs at reductions 4, 8, 16, 32. Parameter
names: ``stem/{conv,norm}``, ``stageN/blockM/{dwconv,norm,fc1,fc2,layer_scale}``, ``norm``,
``head``. ``layer_scale`` has shape ``(C,)`` (torchvision ``(C, 1, 1)``).

``scan_blocks=True``: the (identical) blocks of every stage run under one ``nn.scan`` per stage,
stacked under ``stageN/blocks`` with the per-block drop-path rate a scanned input
(:mod:`jaxcnn.models.scan`); ``scan_remat=True`` rematerialises each scanned block.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.layers import DropPath, check_image, conv2d, drop_path_schedule
from jaxcnn.layers.attention import PatchEmbed
from jaxcnn.models import register_model
from jaxcnn.models.scan import STACKED, block_rates, check_scan_options, run_scanned

__all__ = ["ConvNeXt", "ConvNeXtBlock"]

_INIT = nn.initializers.truncated_normal(0.02)  # torchvision: trunc_normal_(std=0.02), bias 0
_EPS = 1e-6


def _layer_norm(dtype, param_dtype, name):
    return nn.LayerNorm(
        _EPS, use_fast_variance=False, dtype=dtype, param_dtype=param_dtype, name=name
    )


class ConvNeXtBlock(nn.Module):
    """dwconv 7x7 -> LN -> fc1 (4C) -> GELU -> fc2 (C) -> x layer_scale -> drop path -> + x.
    ``drop_path`` given to the call (a traced rate under ``nn.scan``) overrides the field."""

    drop_path: float = 0.0
    layer_scale: float = 1e-6
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False, drop_path=None):
        rate = self.drop_path if drop_path is None else drop_path
        c = x.shape[-1]
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        y = conv2d(c, 7, padding=3, groups=c, kernel_init=_INIT, name="dwconv", **common)(x)
        y = _layer_norm(name="norm", **common)(y)
        y = nn.Dense(4 * c, kernel_init=_INIT, name="fc1", **common)(y)
        y = nn.gelu(y, approximate=False)
        y = nn.Dense(c, kernel_init=_INIT, name="fc2", **common)(y)
        gamma = self.param(
            "layer_scale", nn.initializers.constant(self.layer_scale), (c,), self.param_dtype
        )
        y = y * gamma.astype(y.dtype)
        return x + DropPath(rate)(y, deterministic=not train)


class Downsample(nn.Module):
    """LayerNorm then 2x2 conv stride 2 (between stages)."""

    features: int
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = _layer_norm(name="norm", **common)(x)
        return conv2d(
            self.features, 2, stride=2, padding=0, kernel_init=_INIT, name="conv", **common
        )(x)


class ConvNeXtStage(nn.Module):
    features: int
    drop_paths: Sequence[float]
    downsample: bool = True
    layer_scale: float = 1e-6
    dtype: Any = None
    param_dtype: Any = jnp.float32
    scan: bool = False  # the blocks under one nn.scan, as ``blocks``
    remat: bool = False  # with scan: nn.remat around each scanned block

    @nn.compact
    def __call__(self, x, train: bool = False):
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        if self.downsample:
            x = Downsample(self.features, name="downsample", **common)(x)
        if self.scan and self.drop_paths:
            static, scanned = block_rates(self.drop_paths)
            return run_scanned(
                ConvNeXtBlock(static or 0.0, self.layer_scale, name=STACKED, **common),
                x,
                len(self.drop_paths),
                scanned,
                call=lambda mdl, y, rate: mdl(y, train, rate),
                remat=self.remat,
            )
        for i, dp in enumerate(self.drop_paths):
            x = ConvNeXtBlock(dp, self.layer_scale, name=f"block{i}", **common)(x, train)
        return x


class ConvNeXt(nn.Module):
    """ConvNeXt. ``features_only=True`` returns ``[stage1, ..., stage4]`` (NHWC, reductions
    4/8/16/32, before the final LayerNorm)."""

    depths: Sequence[int] = (3, 3, 9, 3)
    dims: Sequence[int] = (96, 192, 384, 768)
    drop_path_rate: float = 0.1
    layer_scale: float = 1e-6
    num_classes: int = 1000
    in_channels: int = 3
    features_only: bool = False
    dtype: Any = None
    param_dtype: Any = jnp.float32
    variant: str = "convnext"
    conv_impl: str = "fast"  # "xla": plain lax convolutions (jaxcnn.layers.fast_conv)
    scan_blocks: bool = False  # the blocks of each stage under nn.scan (jaxcnn.models.scan)
    scan_remat: bool = False  # with scan_blocks: nn.remat around each scanned block

    def scan_groups(self) -> tuple[tuple[str, int, int], ...]:
        """``(scope, first, count)`` of the blocks ``scan_blocks=True`` stacks."""
        return tuple((f"stage{i + 1}", 0, n) for i, n in enumerate(self.depths) if n > 0)

    @nn.compact
    def __call__(self, x, train: bool = False):
        check_image(x, model=self.variant, channels=self.in_channels, min_size=32)
        check_scan_options(self.variant, self.scan_blocks, self.scan_remat)
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = PatchEmbed(self.dims[0], 4, norm_eps=_EPS, kernel_init=_INIT, name="stem", **common)(x)
        rates = drop_path_schedule(self.drop_path_rate, self.depths, endpoint=True)
        feats = []
        for i, dim in enumerate(self.dims):
            x = ConvNeXtStage(
                dim,
                rates[i],
                downsample=i > 0,
                layer_scale=self.layer_scale,
                scan=self.scan_blocks,
                remat=self.scan_remat,
                name=f"stage{i + 1}",
                **common,
            )(x, train)
            feats.append(x)
        if self.features_only:
            return feats
        x = jnp.mean(x, axis=(1, 2))
        x = _layer_norm(name="norm", **common)(x)
        return nn.Dense(self.num_classes, kernel_init=_INIT, name="head", **common)(x)


_PAPER = "Liu, Mao, Wu, Feichtenhofer, Darrell, Xie. A ConvNet for the 2020s. CVPR 2022"


def _features(dims):
    return tuple(
        {"name": f"stage{i + 1}", "channels": c, "reduction": 4 * 2**i} for i, c in enumerate(dims)
    )


def _convnext(variant, kwargs, **defaults):
    cfg = dict(defaults, variant=variant)
    cfg.update(kwargs)
    return ConvNeXt(**cfg)


_T, _S = (3, 3, 9, 3), (3, 3, 27, 3)
_DIMS = {
    "tiny": (96, 192, 384, 768),
    "small": (96, 192, 384, 768),
    "base": (128, 256, 512, 1024),
    "large": (192, 384, 768, 1536),
    "xlarge": (256, 512, 1024, 2048),
}
_COMMON: dict[str, Any] = dict(input_size=(224, 224, 3), paper=_PAPER, min_size=32)


@register_model(
    params=28_589_128,
    reference="torchvision 0.29",
    slow=False,
    feature_info=_features(_DIMS["tiny"]),
    **_COMMON,
)
def convnext_tiny(**kwargs) -> ConvNeXt:
    return _convnext("convnext_tiny", kwargs, depths=_T, dims=_DIMS["tiny"], drop_path_rate=0.1)


@register_model(
    params=50_223_688,
    reference="torchvision 0.29",
    slow=True,
    feature_info=_features(_DIMS["small"]),
    **_COMMON,
)
def convnext_small(**kwargs) -> ConvNeXt:
    return _convnext("convnext_small", kwargs, depths=_S, dims=_DIMS["small"], drop_path_rate=0.4)


@register_model(
    params=88_591_464,
    reference="torchvision 0.29",
    slow=True,
    feature_info=_features(_DIMS["base"]),
    **_COMMON,
)
def convnext_base(**kwargs) -> ConvNeXt:
    return _convnext("convnext_base", kwargs, depths=_S, dims=_DIMS["base"], drop_path_rate=0.5)


@register_model(
    params=197_767_336,
    reference="torchvision 0.29",
    slow=True,
    feature_info=_features(_DIMS["large"]),
    **_COMMON,
)
def convnext_large(**kwargs) -> ConvNeXt:
    return _convnext("convnext_large", kwargs, depths=_S, dims=_DIMS["large"], drop_path_rate=0.5)


@register_model(
    params=350_196_968,
    reference="timm convnext_xlarge (1000 classes)",
    slow=True,
    feature_info=_features(_DIMS["xlarge"]),
    **_COMMON,
)
def convnext_xlarge(**kwargs) -> ConvNeXt:
    """ConvNeXt-XL (paper dims; released only as ImageNet-22k pretrained in timm)."""
    return _convnext("convnext_xlarge", kwargs, depths=_S, dims=_DIMS["xlarge"], drop_path_rate=0.5)
