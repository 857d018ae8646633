"""Transposed convolution computed as a sub-pixel (phase-decomposed) ordinary convolution.

A transposed convolution with stride ``s`` is ``s*s`` ordinary convolutions, one per output
phase ``(a, b)`` (the output pixels ``(s*m + a, s*n + b)``), each with the kernel taps that
land on that phase; stacking the phases as channels and interleaving them ("depth to space",
Shi et al. 2016) gives the same output. XLA computes it as one stride-1 convolution, whose
gradients are ordinary convolutions, instead of a convolution over a zero-dilated input, whose
kernel gradient XLA:CPU computes 10-20 times slower than the forward pass.

:class:`SubpixelConvTranspose2d` is a drop-in replacement for
:class:`jaxcnn.layers.ConvTranspose2d`: the same fields, the same PyTorch size rule, the same
parameters (``{"conv": {"kernel": (kh, kw, in, out), "bias": (out,)}}``) and the same output up
to float rounding (``tests`` check it), only faster to train (dilation 1 only).
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcnn.layers.conv import ConvTransposeFields, IntOr2, pair

__all__ = ["conv_transpose_subpixel", "SubpixelConvTranspose2d", "KernelBias"]


def _phase_taps(k: int, s: int, p: int):
    """For each output phase ``a``: the ``(t, d)`` pairs with ``y[s*m + a] += x[m + d] W[t]``
    (``W`` stored unflipped, as ``flax.linen.ConvTranspose`` applies it)."""
    lo = k - 1 - p  # nn.ConvTranspose pads the dilated input by k-1-p on the left
    taps = []
    for a in range(s):
        taps.append([(t, (t + a - lo) // s) for t in range(k) if (t + a - lo) % s == 0])
    return taps


def _axis_plan(n_in: int, k: int, s: int, p: int, op: int):
    n_out = (n_in - 1) * s - 2 * p + k + op
    taps = _phase_taps(k, s, p)
    ds = [d for phase in taps for _, d in phase] or [0]
    dmin, dmax = min(ds), max(ds)
    m = -(-n_out // s)  # rows per phase
    pad = (max(0, -dmin), max(0, m - 1 + dmax - (n_in - 1)))
    start = dmin + pad[0]  # window offset inside the padded input
    return n_out, m, taps, dmin, dmax - dmin + 1, pad, start


def conv_transpose_subpixel(
    x, kernel, stride: IntOr2 = 2, padding: IntOr2 = 0, output_padding: IntOr2 = 0
):
    """``ConvTranspose2d(x)`` (PyTorch size rule, kernel HWIO unflipped, no bias) computed as
    one stride-1 convolution to ``s_h * s_w * out`` channels followed by depth-to-space."""
    kh, kw, cin, cout = kernel.shape
    (sh, sw), (ph, pw), (oh, ow) = pair(stride), pair(padding), pair(output_padding)
    n, h, w, _ = x.shape
    out_h, mh, taps_h, dmin_h, dh, pad_h, st_h = _axis_plan(h, kh, sh, ph, oh)
    out_w, mw, taps_w, dmin_w, dw, pad_w, st_w = _axis_plan(w, kw, sw, pw, ow)
    # Kernel of the equivalent convolution: (Dh, Dw, cin, sh, sw, cout), zeros where no tap.
    rows = []
    for u in range(dh):
        cols = []
        for v in range(dw):
            phases = []
            for a in range(sh):
                ta = [t for t, d in taps_h[a] if d - dmin_h == u]
                per_b = []
                for b in range(sw):
                    tb = [t for t, d in taps_w[b] if d - dmin_w == v]
                    per_b.append(
                        kernel[ta[0], tb[0]] if ta and tb else jnp.zeros((cin, cout), kernel.dtype)
                    )
                phases.append(jnp.stack(per_b, 1))  # (cin, sw, cout)
            cols.append(jnp.stack(phases, 1))  # (cin, sh, sw, cout)
        rows.append(jnp.stack(cols, 0))
    k2 = jnp.stack(rows, 0).reshape(dh, dw, cin, sh * sw * cout)
    xp = jnp.pad(x, ((0, 0), pad_h, pad_w, (0, 0)))
    xp = xp[:, st_h : st_h + mh + dh - 1, st_w : st_w + mw + dw - 1]
    y = jax.lax.conv_general_dilated(
        xp, k2.astype(x.dtype), (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    y = y.reshape(n, mh, mw, sh, sw, cout).transpose(0, 1, 3, 2, 4, 5)
    return y.reshape(n, mh * sh, mw * sw, cout)[:, :out_h, :out_w]


class KernelBias(nn.Module):
    """Holds ``kernel`` and ``bias`` under one module name, laid out as ``nn.ConvTranspose``
    keeps them, for layers that compute the transposed convolution another way."""

    shape: tuple
    use_bias: bool
    kernel_init: Callable
    param_dtype: Any

    @nn.compact
    def __call__(self):
        kernel = self.param("kernel", self.kernel_init, self.shape, self.param_dtype)
        bias = (
            self.param("bias", nn.initializers.zeros, (self.shape[-1],), self.param_dtype)
            if self.use_bias
            else None
        )
        return kernel, bias


class SubpixelConvTranspose2d(ConvTransposeFields):
    """Same fields, parameters and output as :class:`jaxcnn.layers.ConvTranspose2d`."""

    @nn.compact
    def __call__(self, x):
        if pair(self.dilation) != (1, 1):
            raise ValueError(
                "SubpixelConvTranspose2d supports dilation 1 only; use "
                "jaxcnn.layers.ConvTranspose2d for dilated transposed convolutions"
            )
        kh, kw = pair(self.kernel_size)
        kernel, bias = KernelBias(
            (kh, kw, x.shape[-1], self.features),
            self.use_bias,
            self.kernel_init,
            self.param_dtype,
            name="conv",
        )()
        dtype = self.dtype or jnp.result_type(x, kernel)
        y = conv_transpose_subpixel(
            x.astype(dtype), kernel.astype(dtype), self.stride, self.padding, self.output_padding
        )
        return y if bias is None else y + bias.astype(dtype)
