"""Attention building blocks shared by the transformer families (ViT, Swin).

- ``MultiHeadSelfAttention``: fused ``qkv`` projection, scaled dot-product attention, ``proj``
  output projection; optional Swin relative position bias table; optional additive mask.
  The softmax weights are *sown*: ``model.apply(variables, x, mutable=["intermediates"])``
  returns them under ``intermediates/.../attn/attention`` as a 1-tuple holding an array of
  shape ``(batch, heads, tokens, tokens)`` (for Swin ``batch`` is ``batch * windows``). Nothing
  is stored during ``init`` or when ``intermediates`` is not mutable (the default), so there is
  no cost unless asked for. ``jaxcnn.inspect.attention.collect_attention`` gathers them.
- ``relative_position_index``, ``window_partition``/``window_reverse`` and
  ``shifted_window_mask``: the constant index arrays of Swin's (shifted) window attention,
  computed with NumPy as constants, never parameters.
- ``PatchEmbed``: non-overlapping ``p x p`` conv ("patchify") with an optional LayerNorm, the
  stem of Swin and ConvNeXt.

Parameter layout follows torchvision: ``qkv`` is one Dense of ``3 * dim`` outputs ordered
``[q | k | v]``, each head-major (torchvision's ``in_proj_weight.T``, timm's ``qkv.weight.T``).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.layers.conv import conv2d, pair

__all__ = [
    "MultiHeadSelfAttention",
    "PatchEmbed",
    "relative_position_index",
    "shifted_window_mask",
    "window_partition",
    "window_reverse",
]

trunc_normal = nn.initializers.truncated_normal


def relative_position_index(window: int | Sequence[int]) -> np.ndarray:
    """``(N, N)`` int array, ``N = wh * ww``: for query token ``i`` and key token ``j`` of a
    window, the row of the ``((2wh-1)(2ww-1), heads)`` bias table holding their relative offset
    (Swin, torchvision ``relative_position_index``)."""
    wh, ww = pair(window)
    coords = np.stack(np.meshgrid(np.arange(wh), np.arange(ww), indexing="ij")).reshape(2, -1)
    rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0)  # (N, N, 2)
    rel[:, :, 0] += wh - 1
    rel[:, :, 1] += ww - 1
    return rel[:, :, 0] * (2 * ww - 1) + rel[:, :, 1]


def window_partition(x, window: Sequence[int]):
    """``(B, H, W, C)`` with ``H, W`` multiples of the window -> ``(B * nW, wh * ww, C)``,
    windows in row-major order per image."""
    b, h, w, c = x.shape
    wh, ww = window
    x = x.reshape(b, h // wh, wh, w // ww, ww, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b * (h // wh) * (w // ww), wh * ww, c)


def window_reverse(windows, window: Sequence[int], h: int, w: int):
    """Inverse of ``window_partition``: ``(B * nW, wh * ww, C)`` -> ``(B, h, w, C)``."""
    wh, ww = window
    c = windows.shape[-1]
    x = windows.reshape(-1, h // wh, w // ww, wh, ww, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def shifted_window_mask(
    size: Sequence[int], window: Sequence[int], shift: Sequence[int], neg: float = -100.0
) -> np.ndarray:
    """Additive attention mask ``(nW, N, N)`` of shifted-window attention (Swin).

    After the cyclic shift by ``-shift``, a window at the bottom/right border holds tokens that
    were far apart in the image; they get ``neg`` (torchvision: -100) so they do not attend to
    each other. ``size`` is the padded ``(H, W)`` (multiples of the window).
    """
    h, w = size
    wh, ww = window
    sh, sw = shift
    labels = np.zeros((h, w), np.float32)
    count = 0
    # same slices as torchvision (a zero shift gives an empty middle slice and an all slice)
    for hs in ((0, -wh), (-wh, -sh), (-sh, None)):
        for ws in ((0, -ww), (-ww, -sw), (-sw, None)):
            labels[hs[0] : hs[1], ws[0] : ws[1]] = count
            count += 1
    labels = window_partition(labels[None, :, :, None], window)[..., 0]  # (nW, N)
    diff = labels[:, None, :] - labels[:, :, None]
    return np.where(diff != 0, np.float32(neg), np.float32(0.0))


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention over tokens ``(B, N, C)``.

    Attributes:
      num_heads: heads; ``C`` must be a multiple.
      qkv_bias: bias on the fused ``qkv`` projection.
      attn_drop: dropout on the attention weights; proj_drop: dropout after ``proj``.
      window_size: when set, adds Swin's learned relative position bias
        (``relative_position_bias_table`` of shape ``((2wh-1)(2ww-1), heads)``); ``N`` must be
        ``wh * ww``.
    ``__call__(x, mask=None, deterministic=True)``: ``mask`` is added to the logits and must
    broadcast to ``(B, heads, N, N)``.
    """

    num_heads: int
    qkv_bias: bool = True
    attn_drop: float = 0.0
    proj_drop: float = 0.0
    window_size: tuple[int, int] | None = None
    kernel_init: Callable = nn.initializers.xavier_uniform()
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask=None, deterministic: bool = True):
        b, n, c = x.shape
        if c % self.num_heads:
            raise ValueError(f"attention: {c} channels do not split into {self.num_heads} heads")
        hd = c // self.num_heads
        dense = lambda f, bias, name: nn.Dense(  # noqa: E731
            f,
            use_bias=bias,
            kernel_init=self.kernel_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
        )
        qkv = dense(3 * c, self.qkv_bias, "qkv")(x).reshape(b, n, 3, self.num_heads, hd)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (B, N, heads, hd)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q * hd**-0.5, k)
        if self.window_size is not None:
            wh, ww = self.window_size
            if n != wh * ww:
                raise ValueError(f"attention: window {wh}x{ww} needs {wh * ww} tokens, got {n}")
            table = self.param(
                "relative_position_bias_table",
                trunc_normal(0.02),
                ((2 * wh - 1) * (2 * ww - 1), self.num_heads),
                self.param_dtype,
            )
            idx = relative_position_index((wh, ww)).reshape(-1)
            bias = jnp.take(table, idx, axis=0).reshape(n, n, self.num_heads)
            logits = logits + bias.transpose(2, 0, 1).astype(logits.dtype)
        if mask is not None:
            logits = logits + jnp.asarray(mask, logits.dtype)
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
        if not self.is_initializing():
            self.sow("intermediates", "attention", weights)
        weights = nn.Dropout(self.attn_drop)(weights, deterministic=deterministic)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v).reshape(b, n, c)
        out = dense(c, True, "proj")(out)
        return nn.Dropout(self.proj_drop)(out, deterministic=deterministic)


class PatchEmbed(nn.Module):
    """``patch x patch`` convolution with stride ``patch`` (named ``conv``), then an optional
    LayerNorm over channels (``norm``, when ``norm_eps`` is set). NHWC in, NHWC out."""

    features: int
    patch: int = 4
    norm_eps: float | None = None
    kernel_init: Callable = nn.initializers.lecun_normal()
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = conv2d(
            self.features,
            self.patch,
            stride=self.patch,
            padding=0,
            kernel_init=self.kernel_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="conv",
        )(x)
        if self.norm_eps is not None:
            x = nn.LayerNorm(
                self.norm_eps,
                use_fast_variance=False,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name="norm",
            )(x)
        return x
