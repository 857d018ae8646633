"""Faster CPU formulations of the convolutions XLA's CPU backend computes slowly.

XLA on CPU hands a convolution to Eigen only in its plain form; the filter gradient of a
transposed (input-dilated) convolution, and every depthwise convolution, fall to a generic loop
that is 10-100x slower than PyTorch (see ``experiments/benchmark_conv.py``). This module computes
the same values another way:

* **depthwise** (``feature_group_count == in_channels``, one input channel per group): a sum of
  ``kh * kw`` shifted, strided slices of the padded input times one filter tap each. It is made
  of slices, multiplies and adds only, so JAX differentiates it into the same kind of fused
  elementwise loops (input gradient: pads; filter gradient: reductions).
* **dense** (``feature_group_count == 1``) with input dilation (transposed convolutions) or a
  1x1 kernel at stride 1: the forward pass and the input gradient stay with XLA; the **filter
  gradient** is ``kh * kw`` matrix products ``x_slice^T @ dy_slice`` (one per tap, contracting
  batch and space), where the slices are chosen so that input dilation and strides never
  multiply zeros. Other dense convolutions (3x3, 7x7, ...) stay with XLA entirely
  (:func:`use_dense_path`).
* anything else (other groupings, ``batch_group_count``, non-NHWC layouts, 1-D/3-D) goes to
  ``lax.conv_general_dilated`` unchanged.

The values agree with ``lax.conv_general_dilated`` to float32 rounding (summation order differs);
``tests/test_fast_conv.py`` checks values and both gradients over a sweep of configurations.

The implementation is chosen explicitly, by a field of the model: every jaxcnn model has
``conv_impl`` (``"fast"``, the default, or ``"xla"``: ``create_model(name, conv_impl="xla")``),
and every conv layer of ``jaxcnn.layers`` uses the ``conv_impl`` of the nearest enclosing module
that has one (:func:`conv_impl_of`), or its own ``impl`` field when that is set. Because the
choice is a field of the module, it is part of what ``jax.jit`` sees (the module's hash, the
``apply_fn`` of a train state): a model with another ``conv_impl`` is traced anew, never served
from a cache built for the other one. Nothing reads a global or an environment variable.

Forward-mode differentiation (``jax.jvp``/``jacfwd``) of a dense convolution is not available on
the fast path (it uses ``jax.custom_vjp``); use ``conv_impl="xla"`` for that.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

__all__ = [
    "CONV_IMPLS",
    "NHWC_DN",
    "check_conv_impl",
    "conv_impl_of",
    "get_conv_fn",
    "conv_general_dilated",
    "depthwise_conv_shifted",
    "dense_conv_fast_filter_grad",
    "explicit_padding",
    "use_dense_path",
]

NHWC_DN = ("NHWC", "HWIO", "NHWC")
CONV_IMPLS = ("fast", "xla")


def check_conv_impl(impl: Any) -> str:
    """``impl`` if it is one of :data:`CONV_IMPLS`, else ``ValueError`` naming them."""
    if impl not in CONV_IMPLS:
        raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {impl!r}")
    return impl


def conv_impl_of(module: Any) -> str:
    """The ``conv_impl`` of ``module`` or of its nearest enclosing module that has one
    (a jaxcnn model's field); ``"fast"`` when none has."""
    m = module
    while isinstance(m, nn.Module):
        impl = getattr(m, "conv_impl", None)
        if impl is not None:
            return check_conv_impl(impl)
        m = m.parent
    return "fast"


def get_conv_fn(impl: str = "fast"):
    """The ``lax.conv_general_dilated``-compatible function for ``impl`` (``"fast"``/``"xla"``)."""
    return _fast_conv if check_conv_impl(impl) == "fast" else lax.conv_general_dilated


# ---------------------------------------------------------------------------------- helpers
def _out_size(size, k, stride, lo, hi, lhs_dil, rhs_dil):
    dilated = (size - 1) * lhs_dil + 1 if size > 0 else 0
    span = (k - 1) * rhs_dil + 1
    return max(0, (dilated + lo + hi - span) // stride + 1)


def _tap_slices(size, out, t, stride, lo, lhs_dil, rhs_dil):
    """Index ranges pairing input and output positions for filter tap ``t`` along one axis.

    Output ``o`` reads the dilated, padded input at ``o * stride + t * rhs_dil - lo``; that is a
    real input element ``q`` iff it equals ``q * lhs_dil`` with ``0 <= q < size``. Returns
    ``(x_start, x_stop, x_step), (o_start, o_stop, o_step)`` with the same number of elements,
    or ``None`` if the tap never meets the input. Needs ``stride == 1 or lhs_dil == 1``.
    """
    off = t * rhs_dil - lo
    if lhs_dil == 1:  # q = o * stride + off
        o_lo = max(0, -(off // stride))  # ceil(-off / stride)
        o_hi = min(out - 1, (size - 1 - off) // stride)
        if o_hi < o_lo:
            return None
        q_lo = o_lo * stride + off
        return (q_lo, q_lo + (o_hi - o_lo) * stride + 1, stride), (o_lo, o_hi + 1, 1)
    # stride == 1: o = q * lhs_dil - off
    q_lo = max(0, -(-off // lhs_dil))  # ceil(off / lhs_dil)
    q_hi = min(size - 1, (out - 1 + off) // lhs_dil)
    if q_hi < q_lo:
        return None
    o_lo = q_lo * lhs_dil - off
    return (q_lo, q_hi + 1, 1), (o_lo, o_lo + (q_hi - q_lo) * lhs_dil + 1, lhs_dil)


def _slice_hw(a, hs, ws):
    n, _, _, c = a.shape
    return lax.slice(a, (0, hs[0], ws[0], 0), (n, hs[1], ws[1], c), (1, hs[2], ws[2], 1))


# -------------------------------------------------------------------------------- depthwise
def depthwise_conv_shifted(x, w, strides, padding, rhs_dilation=(1, 1), precision=None):
    """Depthwise conv (NHWC input, HWIO kernel with I == 1, O == C * multiplier) as shifted
    multiplies. Same result as ``lax.conv_general_dilated(..., feature_group_count=C)``."""
    del precision  # elementwise products are exact
    n, h, wd, c = x.shape
    kh, kw, _, cout = w.shape
    mult = cout // c
    if mult > 1:  # output channel o reads input channel o // mult, as lax orders them
        x = jnp.repeat(x, mult, axis=-1)
    (plh, phh), (plw, phw) = padding
    sh, sw = strides
    dh, dw = rhs_dilation
    ho = _out_size(h, kh, sh, plh, phh, 1, dh)
    wo = _out_size(wd, kw, sw, plw, phw, 1, dw)
    xp = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (plh, phh, 0), (plw, phw, 0), (0, 0, 0)))
    dtype = jnp.result_type(x.dtype, w.dtype)
    y = None
    for i in range(kh):
        for j in range(kw):
            s = lax.slice(
                xp,
                (0, i * dh, j * dw, 0),
                (n, i * dh + (ho - 1) * sh + 1, j * dw + (wo - 1) * sw + 1, cout),
                (1, sh, sw, 1),
            )
            term = s.astype(dtype) * w[i, j, 0].astype(dtype)
            y = term if y is None else y + term
    return y


# ------------------------------------------------------------------------------------ dense
def _num_chunks(n: int, out_elems: int, budget: int = 1 << 20) -> int:
    """Largest divisor of the batch size ``n`` with ``chunks * out_elems <= budget`` (>= 1)."""
    best = 1
    for d in range(1, n + 1):
        if n % d == 0 and d * out_elems <= budget:
            best = d
    return best


def _filter_grad(x, g, kshape, strides, padding, lhs_dilation, rhs_dilation, precision):
    """d(loss)/d(kernel) of a dense NHWC/HWIO conv as one matmul per tap (no zeros multiplied)."""
    kh, kw, cin, cout = kshape
    n, h, wd, _ = x.shape
    _, ho, wo, _ = g.shape
    (plh, _), (plw, _) = padding
    b = _num_chunks(n, cin * cout)
    taps = []
    for i in range(kh):
        for j in range(kw):
            rh = _tap_slices(h, ho, i, strides[0], plh, lhs_dilation[0], rhs_dilation[0])
            rw = _tap_slices(wd, wo, j, strides[1], plw, lhs_dilation[1], rhs_dilation[1])
            if rh is None or rw is None:
                taps.append(jnp.zeros((cin, cout), jnp.result_type(x.dtype, g.dtype)))
                continue
            xs = _slice_hw(x, rh[0], rw[0])
            gs = _slice_hw(g, rh[1], rw[1])
            # Split the long contraction (batch x space) into b chunks, one batched matmul and a
            # sum: ~2x faster on XLA:CPU than one (Cin, M) @ (M, Cout) product with huge M.
            xs = xs.reshape(b, -1, cin)
            gs = gs.reshape(b, -1, cout)
            taps.append(
                lax.dot_general(xs, gs, (((1,), (1,)), ((0,), (0,))), precision=precision).sum(0)
            )
    return jnp.stack(taps).reshape(kh, kw, cin, cout)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def dense_conv_fast_filter_grad(x, w, strides, padding, lhs_dilation, rhs_dilation, precision):
    """``lax.conv_general_dilated`` (NHWC/HWIO, groups 1) whose kernel gradient is computed as
    per-tap matmuls instead of XLA's transposed convolution."""
    return lax.conv_general_dilated(
        x, w, strides, padding, lhs_dilation, rhs_dilation, NHWC_DN, precision=precision
    )


def _dense_fwd(x, w, strides, padding, lhs_dilation, rhs_dilation, precision):
    y = dense_conv_fast_filter_grad(x, w, strides, padding, lhs_dilation, rhs_dilation, precision)
    return y, (x, w)


def _dense_bwd(strides, padding, lhs_dilation, rhs_dilation, precision, res, g):
    x, w = res
    _, vjp_x = jax.vjp(
        lambda x_: lax.conv_general_dilated(
            x_, w, strides, padding, lhs_dilation, rhs_dilation, NHWC_DN, precision=precision
        ),
        x,
    )
    (dx,) = vjp_x(g)
    dw = _filter_grad(x, g, w.shape, strides, padding, lhs_dilation, rhs_dilation, precision)
    return dx, dw.astype(w.dtype)


dense_conv_fast_filter_grad.defvjp(_dense_fwd, _dense_bwd)


def use_dense_path(
    kernel_hw: Sequence[int], strides: Sequence[int], lhs_dilation: Sequence[int]
) -> bool:
    """Whether the ``"fast"`` implementation computes a dense convolution's kernel gradient as
    per-tap matmuls, at stride 1 only: for input-dilated (transposed) convolutions, where XLA:CPU
    multiplies the inserted zeros (15-70x slower), and 1x1 kernels, where it transposes whole
    activations (5x slower; ``experiments/benchmark_conv.py``). Every other dense convolution
    stays with XLA, whose YNNPACK convolutions (jax 0.10) are as fast or faster there: a
    ResNet-18 step is 5-13% slower with the matmuls for its 3x3 convolutions, a ResNet-50 step
    1.6x faster with them for its 1x1 ones (``docs/performance.md``)."""
    return tuple(strides) == (1, 1) and (
        tuple(lhs_dilation) != (1, 1) or tuple(kernel_hw) == (1, 1)
    )


# ------------------------------------------------------------------------------- dispatcher
def _pairs(v, default=1) -> tuple[int, ...]:
    if v is None:
        return (default, default)
    return tuple(int(a) for a in v)


def explicit_padding(
    lhs_shape, rhs_shape, strides, padding, lhs_dilation=(1, 1), rhs_dilation=(1, 1)
) -> tuple[tuple[int, int], ...]:
    """``padding`` of an NHWC/HWIO convolution as ``((lo, hi), (lo, hi))`` ints; a string
    (``"SAME"``, ``"VALID"``, ...) is resolved as ``lax.conv_general_dilated`` resolves it,
    against the input-dilated input and the kernel-dilated kernel."""
    if isinstance(padding, str):
        kh, kw = rhs_shape[:2]
        span = ((kh - 1) * rhs_dilation[0] + 1, (kw - 1) * rhs_dilation[1] + 1)
        dilated = tuple((s - 1) * d + 1 for s, d in zip(lhs_shape[1:3], lhs_dilation))
        padding = lax.padtype_to_pads(dilated, span, strides, padding)
    return tuple((int(lo), int(hi)) for lo, hi in padding)


def _fast_conv(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    batch_group_count=1,
    precision=None,
    preferred_element_type=None,
):
    """Drop-in for ``lax.conv_general_dilated`` using the fast formulations where they apply."""
    args = (lhs, rhs, window_strides, padding)
    kwargs = dict(
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        batch_group_count=batch_group_count,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    if (
        lhs.ndim != 4
        or rhs.ndim != 4
        or batch_group_count != 1
        or preferred_element_type is not None
    ):
        return lax.conv_general_dilated(*args, **kwargs)
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    if dn != lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC_DN):
        return lax.conv_general_dilated(*args, **kwargs)
    strides = _pairs(window_strides)
    ldil, rdil = _pairs(lhs_dilation), _pairs(rhs_dilation)
    kh, kw, cin_g, cout = rhs.shape
    pads = explicit_padding(lhs.shape, rhs.shape, strides, padding, ldil, rdil)
    c = lhs.shape[-1]
    out_hw = [
        _out_size(lhs.shape[1 + a], rhs.shape[a], strides[a], *pads[a], ldil[a], rdil[a])
        for a in range(2)
    ]
    if min(out_hw) <= 0 or lhs.shape[0] == 0:
        return lax.conv_general_dilated(*args, **kwargs)
    if feature_group_count == c and cin_g == 1 and c > 1 and ldil == (1, 1):
        return depthwise_conv_shifted(lhs, rhs, strides, pads, rdil)
    if feature_group_count == 1 and use_dense_path((kh, kw), strides, ldil):
        return dense_conv_fast_filter_grad(lhs, rhs, strides, pads, ldil, rdil, precision)
    return lax.conv_general_dilated(*args, **kwargs)


def conv_general_dilated(
    lhs,
    rhs,
    window_strides: Sequence[int],
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    batch_group_count=1,
    precision=None,
    preferred_element_type=None,
    *,
    impl: str = "fast",
):
    """``lax.conv_general_dilated`` computed by the implementation ``impl`` (``"fast"`` or
    ``"xla"``); same arguments and result."""
    return get_conv_fn(impl)(
        lhs,
        rhs,
        window_strides,
        padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        batch_group_count=batch_group_count,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
