"""CoAtNet (Dai, Liu, Le, Tan, 2021) as timm builds ``coatnet_0_224`` .. ``coatnet_4_224``.

"C-C-T-T": a conv stem, two stages of MBConv blocks, two stages of relative-attention
transformer blocks, each stage halving the resolution in its first block:

- ``stem``: 3x3/2 conv (``conv1``) -> BatchNorm + GELU (``norm1``) -> 3x3 conv (``conv2``);
  no bias, no norm after ``conv2`` (the next block pre-normalises).
- MBConv block (stages 1, 2): pre-norm BatchNorm (``pre_norm``, no activation) -> 1x1 expand
  to ``4 * out`` (``conv1_1x1``) -> BN + GELU (``norm1``) -> 3x3 depthwise, stride 2 in the
  first block (``conv2_kxk``) -> BN + GELU (``norm2``) -> squeeze-excite (``se``, ``out / 4``
  channels, SiLU, sigmoid) -> 1x1 projection with bias (``conv3_1x1``) -> drop path -> +
  shortcut. The first block's shortcut is a 2x2 average pool and a 1x1 conv with bias
  (``shortcut/expand``, absent when the width does not change).
- Transformer block (stages 3, 4): ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``, pre-norm
  LayerNorm (eps 1e-6). In the first block ``norm1`` is followed by a 2x2 average pool and the
  shortcut is pool + ``shortcut/expand``; the attention widens to the stage width. Attention is
  over the whole feature map (14x14 and 7x7 at 224), 32 channels per head, with a learned
  relative position bias (``attn/rel_pos/relative_position_bias_table``, one row per offset,
  ``(2H-1)(2W-1)`` rows). ``qkv`` is head-major as in timm (``head_first``: per head
  ``[q | k | v]``). MLP: 4x, exact GELU.
- Head: global average pool -> LayerNorm (``norm``) -> Dense + tanh (``pre_logits``, timm
  ``head.pre_logits.fc``) -> dropout -> ``head`` (timm ``head.fc``).

Image size: the bias tables cover the whole map, so a model is built for ``img_size`` (field,
default 224; a multiple of 32) and takes exactly that size (timm: ``fixed_input_size``).
Weights of other sizes need their tables resized. ``features_only=True`` returns ``stem`` and
``stage1..4`` (reductions 2, 4, 8, 16, 32). Attention weights are sown as
``intermediates/stageN/blockM/attn/attention`` ``(batch, heads, HW, HW)`` (see
:mod:`jaxcnn.layers.attention`) and read by :mod:`jaxcnn.inspect.attention`. Drop path
(``drop_path_rate``, linear over all blocks like timm) draws from the ``dropout`` RNG stream.

Names vs timm: ``stages.N.blocks.M`` -> ``stage{N+1}/block{M}``; the first transformer block's
``norm1.norm`` -> ``norm1``; ``head.norm``, ``head.pre_logits.fc``, ``head.fc`` -> ``norm``,
``pre_logits``, ``head``; timm's 1x1 convs of the attention and MLP (``qkv``, ``proj``,
``fc1``, ``fc2``) are Dense layers here (same weights, ``(out, in, 1, 1)`` -> ``(in, out)``).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcnn.layers import (
    DropPath,
    Mlp,
    SqueezeExcite,
    avg_pool,
    batch_norm,
    check_image,
    conv2d,
    drop_path_schedule,
    pair,
)
from jaxcnn.layers.attention import relative_position_index
from jaxcnn.models import register_model

__all__ = ["CoAtNet", "MBConvBlock", "RelPosAttention", "TransformerBlock"]

_gelu = functools.partial(nn.gelu, approximate=False)
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")  # timm "vit_eff"
_EPS = 1e-6


def _ln(name, dtype, param_dtype):
    return nn.LayerNorm(
        _EPS, use_fast_variance=False, dtype=dtype, param_dtype=param_dtype, name=name
    )


class Downsample(nn.Module):
    """2x2/2 average pool, then a 1x1 conv with bias (``expand``) when the width changes."""

    features: int
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = avg_pool(x, 2, 2)
        if x.shape[-1] != self.features:
            x = conv2d(
                self.features,
                1,
                padding=0,
                kernel_init=_conv_init,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name="expand",
            )(x)
        return x


class MBConvBlock(nn.Module):
    """Pre-norm MBConv with squeeze-excite (see the module docstring)."""

    features: int
    stride: int = 1
    drop_path: float = 0.0
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        bn = lambda name: batch_norm(train, name=name, **common)  # noqa: E731
        conv = functools.partial(
            conv2d,
            use_bias=False,
            kernel_init=_conv_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        mid, out = 4 * self.features, self.features
        shortcut = Downsample(out, name="shortcut", **common)(x) if self.stride == 2 else x
        y = bn("pre_norm")(x)
        y = _gelu(bn("norm1")(conv(mid, 1, padding=0, name="conv1_1x1")(y)))
        y = conv(mid, 3, self.stride, padding=1, groups=mid, name="conv2_kxk")(y)
        y = _gelu(bn("norm2")(y))
        y = SqueezeExcite(out // 4, act=nn.silu, name="se", **common)(y)
        y = conv2d(out, 1, padding=0, kernel_init=_conv_init, name="conv3_1x1", **common)(y)
        return DropPath(self.drop_path)(y, deterministic=not train) + shortcut


class RelPosBias(nn.Module):
    """timm's ``RelPosBias``: a learned ``((2H-1)(2W-1), heads)`` table, gathered into the
    ``(heads, HW, HW)`` bias of the attention logits."""

    size: tuple[int, int]
    num_heads: int
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self):
        h, w = self.size
        table = self.param(
            "relative_position_bias_table",
            nn.initializers.truncated_normal(0.02),
            ((2 * h - 1) * (2 * w - 1), self.num_heads),
            self.param_dtype,
        )
        idx = relative_position_index((h, w)).reshape(-1)
        return jnp.take(table, idx, axis=0).reshape(h * w, h * w, -1).transpose(2, 0, 1)


class RelPosAttention(nn.Module):
    """Multi-head self-attention over a whole ``(B, H, W, C)`` map, ``C -> features``, with a
    relative position bias; ``qkv`` head-major (per head ``[q | k | v]``, timm ``head_first``).
    The softmax weights are sown as ``intermediates/attention`` (not during init)."""

    features: int
    dim_head: int = 32
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, h, w, _ = x.shape
        heads, hd, n = self.features // self.dim_head, self.dim_head, h * w
        dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype)
        qkv = dense(3 * self.features, name="qkv")(x.reshape(b, n, -1))
        q, k, v = jnp.split(qkv.reshape(b, n, heads, 3 * hd), 3, axis=-1)  # (B, N, heads, hd)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q * hd**-0.5, k)
        bias = RelPosBias((h, w), heads, self.param_dtype, name="rel_pos")()
        logits = logits + bias.astype(logits.dtype)
        # softmax in float32 at least (bfloat16 inputs), float64 when the model runs in it
        weights = jax.nn.softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), -1)
        if not self.is_initializing():
            self.sow("intermediates", "attention", weights)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v).reshape(b, n, -1)
        return dense(self.features, name="proj")(out).reshape(b, h, w, -1)


class TransformerBlock(nn.Module):
    """Pre-norm relative-attention block over the whole map (see the module docstring)."""

    features: int
    stride: int = 1
    drop_path: float = 0.0
    dim_head: int = 32
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        drop = lambda y: DropPath(self.drop_path)(y, deterministic=not train)  # noqa: E731
        shortcut = (
            Downsample(self.features, name="shortcut", **common)(x) if self.stride == 2 else x
        )
        y = _ln("norm1", **common)(x)
        if self.stride == 2:
            y = avg_pool(y, 2, 2)
        x = shortcut + drop(RelPosAttention(self.features, self.dim_head, name="attn", **common)(y))
        y = Mlp(4 * self.features, act=_gelu, name="mlp", **common)(_ln("norm2", **common)(x))
        return x + drop(y)


class Stem(nn.Module):
    """3x3/2 conv (``conv1``) -> BatchNorm + GELU (``norm1``) -> 3x3 conv (``conv2``)."""

    features: int
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        conv = functools.partial(
            conv2d,
            use_bias=False,
            kernel_init=_conv_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        x = conv(self.features, 3, 2, padding=1, name="conv1")(x)
        x = _gelu(batch_norm(train, name="norm1", **common)(x))
        return conv(self.features, 3, 1, padding=1, name="conv2")(x)


class Stage(nn.Module):
    """``block0..``: blocks of one kind, the first with stride 2 (and the width change)."""

    block: Any
    features: int
    drop_paths: Sequence[float]
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        for i, dp in enumerate(self.drop_paths):
            x = self.block(
                self.features,
                stride=2 if i == 0 else 1,
                drop_path=dp,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=f"block{i}",
            )(x, train)
        return x


class CoAtNet(nn.Module):
    """CoAtNet C-C-T-T; see the module docstring for ``img_size`` and ``features_only``."""

    depths: Sequence[int] = (2, 3, 5, 2)
    dims: Sequence[int] = (96, 192, 384, 768)
    stem_width: int = 64
    head_hidden: int = 768
    img_size: Any = 224
    drop_path_rate: float = 0.0
    dropout: float = 0.0
    num_classes: int = 1000
    in_channels: int = 3
    features_only: bool = False
    dtype: Any = None
    param_dtype: Any = jnp.float32
    variant: str = "coatnet"

    @nn.compact
    def __call__(self, x, train: bool = False):
        check_image(x, model=self.variant, channels=self.in_channels, min_size=32, multiple_of=32)
        ih, iw = pair(self.img_size)
        if ih % 32 or iw % 32:
            raise ValueError(f"{self.variant}: img_size must be a multiple of 32, got {ih}x{iw}")
        if tuple(x.shape[1:3]) != (ih, iw):
            raise ValueError(
                f"{self.variant}: built for {ih}x{iw} images (img_size: the relative position "
                f"tables cover the whole map), got {x.shape[1]}x{x.shape[2]}; build it with "
                f"img_size=({x.shape[1]}, {x.shape[2]})"
            )
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = Stem(self.stem_width, name="stem", **common)(x, train)
        feats = [x]
        rates = drop_path_schedule(self.drop_path_rate, self.depths, endpoint=True)
        for i, (dim, dps) in enumerate(zip(self.dims, rates)):
            block = MBConvBlock if i < 2 else TransformerBlock
            x = Stage(block, dim, dps, name=f"stage{i + 1}", **common)(x, train)
            feats.append(x)
        if self.features_only:
            return feats
        x = _ln("norm", **common)(jnp.mean(x, axis=(1, 2)))
        x = jnp.tanh(nn.Dense(self.head_hidden, name="pre_logits", **common)(x))
        x = nn.Dropout(self.dropout)(x, deterministic=not train)
        return nn.Dense(self.num_classes, name="head", **common)(x)


_PAPER = (
    "Dai, Liu, Le, Tan. CoAtNet: Marrying Convolution and Attention for All Data Sizes. "
    "NeurIPS 2021"
)
#          name         params       depths           dims                  stem
_VARIANTS = (
    ("coatnet_0", 25_036_820, (2, 3, 5, 2), (96, 192, 384, 768), 64),
    ("coatnet_1", 42_225_776, (2, 6, 14, 2), (96, 192, 384, 768), 64),
    ("coatnet_2", 74_684_744, (2, 6, 14, 2), (128, 256, 512, 1024), 128),
    ("coatnet_3", 166_966_264, (2, 6, 14, 2), (192, 384, 768, 1536), 192),
    ("coatnet_4", 275_425_288, (2, 12, 28, 2), (192, 384, 768, 1536), 192),
)


def _register(name, params, depths, dims, stem):
    feature_info = ({"name": "stem", "channels": stem, "reduction": 2},) + tuple(
        {"name": f"stage{i + 1}", "channels": c, "reduction": 4 * 2**i} for i, c in enumerate(dims)
    )

    @register_model(
        name,
        params=params,
        input_size=(224, 224, 3),
        paper=_PAPER,
        reference=f"timm 1.0 {name}_224",
        feature_info=feature_info,
        min_size=32,
        slow=True,
        test_size=224,
    )
    def build(**kwargs) -> CoAtNet:
        cfg = dict(depths=depths, dims=dims, stem_width=stem, head_hidden=dims[-1], variant=name)
        return CoAtNet(**{**cfg, **kwargs})

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"CoAtNet {name}: depths {depths}, widths {dims}, stem {stem}, 224x224."
    return build


coatnet_0, coatnet_1, coatnet_2, coatnet_3, coatnet_4 = (_register(*v) for v in _VARIANTS)
