"""Pooling: max, average, min, global average/max, adaptive average, stochastic.

Windows and strides take ints or pairs; ``padding`` is an int (PyTorch: pad every side) or
``"SAME"``/``"VALID"``; ``ceil_mode`` rounds the output size up as PyTorch does (GoogLeNet).
Output size: ``floor((N - K + 2P) / S) + 1`` (``ceil`` with ``ceil_mode``).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcnn.layers.conv import pair

__all__ = [
    "max_pool",
    "avg_pool",
    "min_pool",
    "global_avg_pool",
    "global_max_pool",
    "adaptive_avg_pool",
    "StochasticPool",
]


def _pads(x, window, stride, padding, ceil_mode):
    if isinstance(padding, str):
        return padding.upper()
    (kh, kw), (sh, sw), (ph, pw) = pair(window), pair(stride), pair(padding)
    pads = []
    for n, k, s, p in ((x.shape[1], kh, sh, ph), (x.shape[2], kw, sw, pw)):
        extra = 0
        if ceil_mode:
            out = math.ceil((n + 2 * p - k) / s) + 1
            # PyTorch: the last window must start inside the input or left padding.
            if (out - 1) * s >= n + p:
                out -= 1
            extra = max(0, (out - 1) * s + k - (n + 2 * p))
        pads.append((p, p + extra))
    return tuple(pads)


def max_pool(x, window=2, stride=None, padding=0, ceil_mode: bool = False):
    """Max pooling over NHWC ``x``; padding counts as ``-inf``."""
    stride = window if stride is None else stride
    return nn.max_pool(x, pair(window), pair(stride), _pads(x, window, stride, padding, ceil_mode))


def avg_pool(
    x, window=2, stride=None, padding=0, ceil_mode: bool = False, count_include_pad: bool = True
):
    """Average pooling; ``count_include_pad`` as in PyTorch (True: zeros count in the mean)."""
    stride = window if stride is None else stride
    pads = _pads(x, window, stride, padding, ceil_mode)
    if ceil_mode and not isinstance(pads, str) and count_include_pad:
        # PyTorch divides by the window clipped to the (left/right padded) input, not the
        # ceil-mode extra: count ones over the symmetric padding only.
        (kh, kw), (sh, sw) = pair(window), pair(stride)
        ph, pw = pair(padding)
        s = jax.lax.reduce_window(
            x, 0.0, jax.lax.add, (1, kh, kw, 1), (1, sh, sw, 1), ((0, 0), *pads, (0, 0))
        )
        ones = jnp.pad(
            jnp.ones((1, x.shape[1], x.shape[2], 1), x.dtype), ((0, 0), (ph, ph), (pw, pw), (0, 0))
        )
        extra = tuple((0, hi - lo) for lo, hi in pads)
        cnt = jax.lax.reduce_window(
            ones, 0.0, jax.lax.add, (1, kh, kw, 1), (1, sh, sw, 1), ((0, 0), *extra, (0, 0))
        )
        return s / cnt
    return nn.avg_pool(x, pair(window), pair(stride), pads, count_include_pad=count_include_pad)


def min_pool(x, window=2, stride=None, padding=0, ceil_mode: bool = False):
    """Min pooling: the smallest value of each window (padding counts as ``+inf``)."""
    return -max_pool(-x, window, stride, padding, ceil_mode)


def global_avg_pool(x, keepdims: bool = False):
    """Mean over height and width: ``(N, H, W, C) -> (N, C)``."""
    return jnp.mean(x, axis=(1, 2), keepdims=keepdims)


def global_max_pool(x, keepdims: bool = False):
    """Max over height and width: ``(N, H, W, C) -> (N, C)``."""
    return jnp.max(x, axis=(1, 2), keepdims=keepdims)


def adaptive_avg_pool(x, output_size):
    """PyTorch's ``AdaptiveAvgPool2d``: bins ``[floor(i*N/out), ceil((i+1)*N/out))``."""
    oh, ow = pair(output_size)
    n_h, n_w = x.shape[1], x.shape[2]
    if n_h % oh == 0 and n_w % ow == 0:
        kh, kw = n_h // oh, n_w // ow
        return nn.avg_pool(x, (kh, kw), (kh, kw))
    rows = []
    for i in range(oh):
        h0, h1 = (i * n_h) // oh, -((-(i + 1) * n_h) // oh)
        cols = []
        for j in range(ow):
            w0, w1 = (j * n_w) // ow, -((-(j + 1) * n_w) // ow)
            cols.append(jnp.mean(x[:, h0:h1, w0:w1, :], axis=(1, 2)))
        rows.append(jnp.stack(cols, axis=1))
    return jnp.stack(rows, axis=1)


def _patches(x, window, stride):
    """All windows as a new leading axis: ``(K*K, N, OH, OW, C)`` (VALID padding)."""
    (kh, kw), (sh, sw) = pair(window), pair(stride)
    oh = (x.shape[1] - kh) // sh + 1
    ow = (x.shape[2] - kw) // sw + 1
    parts = [
        x[:, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw, :]
        for i in range(kh)
        for j in range(kw)
    ]
    return jnp.stack(parts, axis=0)


class StochasticPool(nn.Module):
    """Stochastic pooling (Zeiler & Fergus, 2013) for non-negative activations (after ReLU).

    In training each window outputs one of its activations, drawn with probability
    ``p_i = a_i / sum(a)`` (RNG stream ``dropout``); at inference it outputs the
    probability-weighted average ``sum(p_i * a_i)``. An all-zero window gives 0.
    """

    window: int | tuple = 2
    stride: int | tuple | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        stride = self.window if self.stride is None else self.stride
        p = _patches(x, self.window, stride)  # (K, N, OH, OW, C)
        p = jnp.maximum(p, 0)
        total = jnp.sum(p, axis=0, keepdims=True)
        probs = jnp.where(total > 0, p / jnp.where(total > 0, total, 1), 0)
        if not train:
            return jnp.sum(probs * p, axis=0)
        key = self.make_rng("dropout")
        logits = jnp.log(jnp.maximum(probs, 1e-30))
        logits = jnp.where(probs > 0, logits, -jnp.inf)
        # all-zero windows: sample uniformly (every value is 0 anyway)
        logits = jnp.where(total > 0, logits, 0.0)
        idx = jax.random.categorical(key, logits, axis=0)
        return jnp.take_along_axis(p, idx[None], axis=0)[0]
