"""Hybrid Vision Transformer R50+ViT-B/16 (Dosovitskiy et al., 2021, section 3.1 "Hybrid
Architecture"), as timm builds ``vit_base_r50_s16_224``: CNN early layers, Transformer after.

The CNN is timm's ResNet-v2 backbone without pre-activation (``preact=False``), three stages
(3, 4, 9 bottlenecks; ResNet-50's first three) with GroupNorm (32 groups, eps 1e-5) and
weight-standardised convolutions (``StdConv2dSame``: each filter is normalised to zero mean and
unit variance, eps 1e-8, before the convolution) with TensorFlow ``SAME`` padding:

    stem    conv 7x7/2 (64) -> GN + ReLU -> maxpool 3x3/2 SAME          [224 -> 56]
    stage1  3 bottlenecks, 256 out                                       [56]
    stage2  4 bottlenecks, 512 out, stride 2 in the first 3x3            [28]
    stage3  9 bottlenecks, 1024 out, stride 2 in the first 3x3           [14]

A bottleneck is ``relu(shortcut + GN(conv3(relu(GN(conv2(relu(GN(conv1(x)))))))))`` with a
``downsample`` (StdConv 1x1 + GN) shortcut in each stage's first block. The 14x14x1024 map is
projected to 768 channels by a 1x1 conv with bias (``patch_embed``, timm
``patch_embed.proj``: patch size 1 on the feature map, i.e. 16 on the image), then ViT-B: class
token, learned position embeddings, 12 pre-norm blocks (:class:`jaxcnn.models.vit.EncoderBlock`,
12 heads, MLP 3072), LayerNorm ``norm``, ``head`` on the class token.

98,659,112 parameters with 1000 classes (timm 1.0, ``num_classes=1000``; its default
pretrained tag is the 21k-class one without a head). Image size: built for ``img_size``
(default 224); the input must have that size (the position embeddings fix the grid,
``ceil(side / 16)``); :func:`jaxcnn.models.vit.resample_pos_embed` converts them to another
grid. ``features_only=True`` returns ``stage1`` (256, reduction 4), ``stage2`` (512, 8),
``stage3`` (1024, 16) and ``tokens`` (768, 16: the patch tokens after ``norm`` as an NHWC
grid). Attention weights: as ViT (``mutable=["intermediates"]``; the attention-rollout tool of
:mod:`jaxcnn.inspect.attention` applies). ``drop_path_rate`` acts on the transformer blocks
(linear per block, as timm) and draws from the ``dropout`` RNG stream.

Names vs timm: ``patch_embed.backbone.stem.{conv,norm}`` -> ``stem/{conv,norm}``;
``patch_embed.backbone.stages.N.blocks.M`` -> ``stage{N+1}/block{M}`` (with ``conv1..3``,
``norm1..3``, ``downsample/{conv,norm}`` as in timm); ``patch_embed.proj`` -> ``patch_embed``;
``blocks.N`` -> ``block{N}``; ``cls_token``, ``pos_embed``, ``norm``, ``head`` keep their names.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcnn.layers import check_image, conv2d, max_pool, pair
from jaxcnn.models import register_model
from jaxcnn.models.vit import EncoderBlock, embed_tokens, token_head

__all__ = ["HybridVisionTransformer", "ResNetV2Bottleneck", "StdConv"]

_he = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _grid(side: int) -> int:
    """Tokens per side: the backbone's four SAME stride-2 steps give ``ceil(side / 16)``."""
    return -(-side // 16)


class StdConv(nn.Module):
    """Weight-standardised convolution with TF ``SAME`` padding (timm ``StdConv2dSame``, no
    bias): ``W' = (W - mean) / sqrt(var + eps)`` per output filter, then the convolution."""

    features: int
    kernel_size: int = 1
    stride: int = 1
    eps: float = 1e-8
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        k = self.kernel_size
        kernel = self.param("kernel", _he, (k, k, x.shape[-1], self.features), self.param_dtype)
        w = kernel.astype(jnp.promote_types(kernel.dtype, jnp.float32))  # f32 at least
        mean = jnp.mean(w, axis=(0, 1, 2), keepdims=True)
        var = jnp.mean(jnp.square(w - mean), axis=(0, 1, 2), keepdims=True)
        w = (w - mean) * jax.lax.rsqrt(var + self.eps)
        x, w = nn.dtypes.promote_dtype(x, w, dtype=self.dtype)
        return jax.lax.conv_general_dilated(
            x, w, (self.stride, self.stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )


def _group_norm(name, dtype, param_dtype):
    return nn.GroupNorm(
        num_groups=32,
        epsilon=1e-5,
        use_fast_variance=False,
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
    )


class ResNetV2Bottleneck(nn.Module):
    """timm ResNet-v2 ``Bottleneck`` (``preact=False``): 1x1 -> 3x3 (stride) -> 1x1 (4x), each
    StdConv + GroupNorm, ReLU inside and after the residual sum; ``downsample`` (StdConv 1x1 +
    GroupNorm) when the shape changes."""

    features: int
    stride: int = 1
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        mid = self.features // 4
        shortcut = x
        if self.stride != 1 or x.shape[-1] != self.features:
            shortcut = _DownsampleConv(self.features, self.stride, name="downsample", **common)(x)
        y = nn.relu(_group_norm("norm1", **common)(StdConv(mid, 1, name="conv1", **common)(x)))
        y = StdConv(mid, 3, self.stride, name="conv2", **common)(y)
        y = nn.relu(_group_norm("norm2", **common)(y))
        y = _group_norm("norm3", **common)(StdConv(self.features, 1, name="conv3", **common)(y))
        return nn.relu(y + shortcut)


class _DownsampleConv(nn.Module):
    """StdConv 1x1 (``conv``, stride) then GroupNorm ``norm`` (timm ``DownsampleConv``)."""

    features: int
    stride: int = 1
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = StdConv(self.features, 1, self.stride, name="conv", **common)(x)
        return _group_norm("norm", **common)(x)


class _Stem(nn.Module):
    """StdConv 7x7/2 (``conv``) -> GroupNorm + ReLU (``norm``) -> maxpool 3x3/2, SAME."""

    features: int = 64
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = StdConv(self.features, 7, 2, name="conv", **common)(x)
        x = nn.relu(_group_norm("norm", **common)(x))
        return max_pool(x, 3, 2, padding="SAME")


class _Stage(nn.Module):
    features: int
    depth: int
    stride: int
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        for i in range(self.depth):
            x = ResNetV2Bottleneck(
                self.features,
                self.stride if i == 0 else 1,
                self.dtype,
                self.param_dtype,
                name=f"block{i}",
            )(x)
        return x


class HybridVisionTransformer(nn.Module):
    """ResNet-v2 stages + ViT; see the module docstring."""

    layers: Sequence[int] = (3, 4, 9)
    img_size: Any = 224
    hidden_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    dropout: float = 0.0
    attention_dropout: float = 0.0
    drop_path_rate: float = 0.0
    num_classes: int = 1000
    in_channels: int = 3
    features_only: bool = False
    dtype: Any = None
    param_dtype: Any = jnp.float32
    variant: str = "vit_hybrid"

    @nn.compact
    def __call__(self, x, train: bool = False):
        check_image(x, model=self.variant, channels=self.in_channels, min_size=16)
        ih, iw = pair(self.img_size)
        b, h, w, _ = x.shape
        if (h, w) != (ih, iw):
            raise ValueError(
                f"{self.variant}: built for {ih}x{iw} images (img_size), got {h}x{w}; build it "
                f"with img_size=({h}, {w}) and convert the weights with jaxcnn.models.vit."
                f"resample_pos_embed(params, new_grid=({_grid(h)}, {_grid(w)}))"
            )
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = _Stem(name="stem", **common)(x)
        feats = []
        for i, n in enumerate(self.layers):
            x = _Stage(256 * 2**i, n, 1 if i == 0 else 2, name=f"stage{i + 1}", **common)(x)
            feats.append(x)
        d = self.hidden_dim
        x = conv2d(d, 1, padding=0, name="patch_embed", **common)(x)
        gh, gw = x.shape[1:3]
        x = embed_tokens(
            self, x.reshape(b, gh * gw, d), nn.initializers.normal(1e-6), self.dropout, train
        )
        for i in range(self.depth):
            dp = self.drop_path_rate * i / max(self.depth - 1, 1)
            x = EncoderBlock(
                self.num_heads,
                self.mlp_dim,
                self.dropout,
                self.attention_dropout,
                dp,
                name=f"block{i}",
                **common,
            )(x, train)
        return token_head(self, x, (gh, gw), feats)


@register_model(
    params=98_659_112,
    input_size=(224, 224, 3),
    paper="Dosovitskiy et al. An Image is Worth 16x16 Words: Transformers for Image "
    "Recognition at Scale. ICLR 2021 (hybrid architecture, R50+ViT-B/16)",
    reference="timm 1.0 vit_base_r50_s16_224 (num_classes=1000)",
    feature_info=(
        {"name": "stage1", "channels": 256, "reduction": 4},
        {"name": "stage2", "channels": 512, "reduction": 8},
        {"name": "stage3", "channels": 1024, "reduction": 16},
        {"name": "tokens", "channels": 768, "reduction": 16},
    ),
    min_size=16,
    slow=True,
    test_size=224,
)
def vit_hybrid_r50_b16(**kwargs) -> HybridVisionTransformer:
    """R50 (3 stages, GroupNorm + weight standardisation) + ViT-B/16, 224x224."""
    return HybridVisionTransformer(**{"variant": "vit_hybrid_r50_b16", **kwargs})
