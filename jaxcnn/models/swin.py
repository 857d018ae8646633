"""Swin Transformer v1 (Liu et al., 2021), faithful to torchvision 0.2x ``swin_t/s/b``.

Stem: 4x4 conv stride 4 + LayerNorm (``stem``). Four stages; stages 2-4 open with patch merging
(``stageN/downsample``: 2x2 neighbourhoods concatenated in torchvision's order
``[x(0,0), x(1,0), x(0,1), x(1,1)]`` -> LayerNorm(4C) -> Linear 2C without bias; odd sides are
zero-padded). Blocks alternate regular and shifted (by ``window // 2``) window attention:
``x + drop_path(attn(norm1(x)))``, ``x + drop_path(mlp(norm2(x)))``. Window attention pads the
map to a multiple of the window, rolls it by ``-shift``, attends within 7x7 windows with a learned
relative position bias (``attn/relative_position_bias_table``; its index is a NumPy constant)
and, for shifted windows, an additive -100 mask between tokens that were not neighbours before
the roll; the shift is dropped along a side no larger than the window (as torchvision).
Head: LayerNorm (``norm``) -> global average pool -> Linear ``head``. LayerNorm eps 1e-5;
stochastic depth linear per block up to ``drop_path_rate`` (torchvision defaults 0.2/0.3/0.5).

``features_only=True`` returns the four stage outputs (NHWC, reductions 4/8/16/32, before the
final LayerNorm). ``min_size`` is 32, so that the last stage sees at least one unpadded token
(torchvision would pad smaller inputs). Attention weights: ``mutable=["intermediates"]``, shape
``(batch * windows, heads, 49, 49)`` per block (see ``jaxcnn.layers.attention``).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.layers import DropPath, Mlp, check_image, drop_path_schedule
from jaxcnn.layers.attention import (
    MultiHeadSelfAttention,
    PatchEmbed,
    shifted_window_mask,
    window_partition,
    window_reverse,
)
from jaxcnn.models import register_model

__all__ = ["PatchMerging", "SwinBlock", "SwinTransformer", "window_attention_shift"]

_EPS = 1e-5
_INIT = nn.initializers.truncated_normal(0.02)
_gelu = functools.partial(nn.gelu, approximate=False)


def window_attention_shift(size: Sequence[int], window: Sequence[int], shift: Sequence[int]):
    """Padded size and effective shift for a map of ``size``: the map is padded to multiples of
    the window, and no shift is applied along a side that fits in a single window."""
    (h, w), (wh, ww) = size, window
    ph, pw = h + (-h) % wh, w + (-w) % ww
    return (ph, pw), (0 if wh >= ph else shift[0], 0 if ww >= pw else shift[1])


class PatchMerging(nn.Module):
    """2x2 patch merging: (B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 2C)."""

    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, h, w, c = x.shape
        x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
        x = jnp.concatenate(
            [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1
        )
        x = nn.LayerNorm(
            _EPS,
            use_fast_variance=False,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="norm",
        )(x)
        return nn.Dense(
            2 * c,
            use_bias=False,
            kernel_init=_INIT,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="reduction",
        )(x)


class SwinBlock(nn.Module):
    """Swin block with (shifted) window multi-head self-attention, on NHWC maps."""

    num_heads: int
    window_size: tuple[int, int] = (7, 7)
    shift_size: tuple[int, int] = (0, 0)
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    attention_dropout: float = 0.0
    drop_path: float = 0.0
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        b, h, w, c = x.shape
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)

        def ln(name):
            return nn.LayerNorm(
                _EPS,
                use_fast_variance=False,
                name=name,  # noqa: E731
                **common,
            )

        wh, ww = self.window_size
        win = (wh, ww)
        (ph, pw), (sh, sw) = window_attention_shift((h, w), win, self.shift_size)
        y = jnp.pad(ln("norm1")(x), ((0, 0), (0, ph - h), (0, pw - w), (0, 0)))
        mask = None
        if sh or sw:
            y = jnp.roll(y, (-sh, -sw), axis=(1, 2))
            m = shifted_window_mask((ph, pw), win, (sh, sw))  # (nW, N, N), a constant
            mask = jnp.tile(jnp.asarray(m), (b, 1, 1))[:, None]  # (B * nW, 1, N, N)
        y = MultiHeadSelfAttention(
            self.num_heads,
            attn_drop=self.attention_dropout,
            proj_drop=self.dropout,
            window_size=win,
            kernel_init=_INIT,
            name="attn",
            **common,
        )(window_partition(y, win), mask=mask, deterministic=not train)
        y = window_reverse(y, win, ph, pw)
        if sh or sw:
            y = jnp.roll(y, (sh, sw), axis=(1, 2))
        x = x + DropPath(self.drop_path)(y[:, :h, :w], deterministic=not train)
        y = Mlp(int(c * self.mlp_ratio), act=_gelu, drop=self.dropout, name="mlp", **common)(
            ln("norm2")(x), deterministic=not train
        )
        return x + DropPath(self.drop_path)(y, deterministic=not train)


class SwinStage(nn.Module):
    """Optional patch merging (``downsample``) then ``block0``.. alternating shifts."""

    num_heads: int
    drop_paths: Sequence[float]
    downsample: bool = True
    window_size: int = 7
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    attention_dropout: float = 0.0
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        if self.downsample:
            x = PatchMerging(name="downsample", **common)(x)
        ws = self.window_size
        for j, dp in enumerate(self.drop_paths):
            shift = (0, 0) if j % 2 == 0 else (ws // 2, ws // 2)
            x = SwinBlock(
                self.num_heads,
                (ws, ws),
                shift,
                self.mlp_ratio,
                self.dropout,
                self.attention_dropout,
                dp,
                name=f"block{j}",
                **common,
            )(x, train)
        return x


class SwinTransformer(nn.Module):
    """Swin Transformer v1. ``features_only=True``: ``[stage1, ..., stage4]`` NHWC."""

    embed_dim: int = 96
    depths: Sequence[int] = (2, 2, 6, 2)
    num_heads: Sequence[int] = (3, 6, 12, 24)
    window_size: int = 7
    patch_size: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    attention_dropout: float = 0.0
    drop_path_rate: float = 0.2
    num_classes: int = 1000
    in_channels: int = 3
    features_only: bool = False
    dtype: Any = None
    param_dtype: Any = jnp.float32
    variant: str = "swin"
    conv_impl: str = "fast"  # "xla": plain lax convolutions (jaxcnn.layers.fast_conv)

    @nn.compact
    def __call__(self, x, train: bool = False):
        check_image(x, model=self.variant, channels=self.in_channels, min_size=32)
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = PatchEmbed(self.embed_dim, self.patch_size, norm_eps=_EPS, name="stem", **common)(x)
        rates = drop_path_schedule(self.drop_path_rate, self.depths, endpoint=True)
        feats = []
        for i, heads in enumerate(self.num_heads):
            x = SwinStage(
                heads,
                rates[i],
                i > 0,
                self.window_size,
                self.mlp_ratio,
                self.dropout,
                self.attention_dropout,
                name=f"stage{i + 1}",
                **common,
            )(x, train)
            feats.append(x)
        if self.features_only:
            return feats
        x = nn.LayerNorm(_EPS, use_fast_variance=False, name="norm", **common)(x)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, kernel_init=_INIT, name="head", **common)(x)


_PAPER = (
    "Liu, Lin, Cao, Hu, Wei, Zhang, Lin, Guo. Swin Transformer: Hierarchical Vision "
    "Transformer using Shifted Windows. ICCV 2021"
)


def _features(dim):
    return tuple(
        {"name": f"stage{i + 1}", "channels": dim * 2**i, "reduction": 4 * 2**i} for i in range(4)
    )


def _swin(variant, kwargs, **defaults):
    cfg = dict(defaults, variant=variant)
    cfg.update(kwargs)
    return SwinTransformer(**cfg)


_COMMON: dict[str, Any] = dict(
    input_size=(224, 224, 3), paper=_PAPER, reference="torchvision 0.29 (v1)", min_size=32
)


@register_model(params=28_288_354, feature_info=_features(96), slow=False, **_COMMON)
def swin_t(**kwargs) -> SwinTransformer:
    return _swin(
        "swin_t",
        kwargs,
        embed_dim=96,
        depths=(2, 2, 6, 2),
        num_heads=(3, 6, 12, 24),
        drop_path_rate=0.2,
    )


@register_model(params=49_606_258, feature_info=_features(96), slow=True, **_COMMON)
def swin_s(**kwargs) -> SwinTransformer:
    return _swin(
        "swin_s",
        kwargs,
        embed_dim=96,
        depths=(2, 2, 18, 2),
        num_heads=(3, 6, 12, 24),
        drop_path_rate=0.3,
    )


@register_model(params=87_768_224, feature_info=_features(128), slow=True, **_COMMON)
def swin_b(**kwargs) -> SwinTransformer:
    return _swin(
        "swin_b",
        kwargs,
        embed_dim=128,
        depths=(2, 2, 18, 2),
        num_heads=(4, 8, 16, 32),
        drop_path_rate=0.5,
    )
