"""Output-size arithmetic for convolution, pooling and transposed convolution.

The effective kernel of a dilated window is ``K + (K - 1)(D - 1)``; integer padding is
PyTorch-style (``P`` on both sides). ``"SAME"`` padding (Keras/TF) gives ``ceil(N / S)``:
:func:`same_output_size`. ``jaxcnn.inspect`` re-exports these functions.
"""

from __future__ import annotations

import math

__all__ = ["conv_output_size", "pool_output_size", "transposed_output_size", "same_output_size"]


def conv_output_size(
    n: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1
) -> int:
    """``floor((N - K_eff + 2P) / S) + 1`` with the effective kernel ``K + (K-1)(D-1)``."""
    k_eff = kernel + (kernel - 1) * (dilation - 1)
    out = (n - k_eff + 2 * padding) // stride + 1
    if out < 1:
        raise ValueError(
            f"input of size {n} is too small for kernel {kernel} (effective {k_eff}), "
            f"stride {stride}, padding {padding}: the output would have size {out}"
        )
    return out


def pool_output_size(
    n: int,
    window: int,
    stride: int | None = None,
    padding: int = 0,
    ceil_mode: bool = False,
    dilation: int = 1,
) -> int:
    """Pooling output size (stride defaults to the window); ``ceil_mode`` as in PyTorch: the
    last window may hang over the edge, but must start inside the input or its left padding."""
    stride = window if stride is None else stride
    if not ceil_mode:
        return conv_output_size(n, window, stride, padding, dilation)
    k_eff = window + (window - 1) * (dilation - 1)
    out = math.ceil((n + 2 * padding - k_eff) / stride) + 1
    if (out - 1) * stride >= n + padding:
        out -= 1
    if out < 1:
        raise ValueError(
            f"input of size {n} is too small for pooling window {window} "
            f"(effective {k_eff}), stride {stride}, padding {padding}"
        )
    return out


def transposed_output_size(
    n: int,
    kernel: int,
    stride: int = 1,
    padding: int = 0,
    output_padding: int = 0,
    dilation: int = 1,
) -> int:
    """``(N - 1) S - 2P + D (K - 1) + output_padding + 1`` (PyTorch's ConvTranspose2d)."""
    return (n - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1


def same_output_size(n: int, stride: int = 1) -> int:
    """``"SAME"`` padding (any kernel or dilation): ``ceil(N / S)``."""
    return -(-n // stride)
