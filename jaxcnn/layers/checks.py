"""Input validation run in Python before anything is traced, so users get a sentence, not an
XLA traceback."""

from __future__ import annotations

import jax.numpy as jnp

from jaxcnn.layers.conv import pair

__all__ = ["check_image"]


def check_image(
    x, *, model: str, channels: int | None = None, min_size=None, multiple_of: int | None = None
) -> None:
    """Raise ``ValueError`` unless ``x`` is a float NHWC batch that ``model`` can take.

    Args:
      x: the input (array or tracer; only its static shape and dtype are read).
      model: model name used in the message.
      channels: required channel count (``None``: any).
      min_size: smallest height/width (int or pair).
      multiple_of: height and width must be multiples of this (e.g. a ViT's patch size).
    """
    shape = tuple(getattr(x, "shape", ()))
    if len(shape) != 4:
        raise ValueError(
            f"{model}: expected a batch of images of rank 4 (batch, height, width, channels), "
            f"got an input of rank {len(shape)} with shape {shape}"
            + (" (add a batch axis with x[None])" if len(shape) == 3 else "")
        )
    dtype = getattr(x, "dtype", None)
    if dtype is not None and not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(
            f"{model}: expected floating-point images, got dtype {dtype}; convert and normalise "
            f"first, e.g. x.astype(jnp.float32) / 255"
        )
    n, h, w, c = shape
    if n == 0:
        raise ValueError(f"{model}: expected a batch of at least 1 image, got 0 in shape {shape}")
    if channels is not None and c != channels:
        raise ValueError(
            f"{model}: expected {channels} input channel(s) (NHWC, channels last), got {c} "
            f"in shape {shape}"
            + (
                " -- is the input NCHW? transpose it with x.transpose(0, 2, 3, 1)"
                if h == channels
                else ""
            )
        )
    if min_size is not None:
        mh, mw = pair(min_size)
        if h < mh or w < mw:
            raise ValueError(
                f"{model}: input images must be at least {mh}x{mw} pixels, got {h}x{w}"
            )
    if multiple_of is not None and (h % multiple_of or w % multiple_of):
        raise ValueError(
            f"{model}: image height and width must be multiples of {multiple_of}, got {h}x{w}"
        )
