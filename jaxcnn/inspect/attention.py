"""Attention maps of Vision Transformers: collect the weights, roll them out, draw them.

- ``collect_attention(model, variables, images)``: the softmax attention weights of every
  attention layer, in block order, as arrays ``(batch, heads, tokens, tokens)`` (the models sow
  them into the ``intermediates`` collection; see ``jaxcnn.layers.attention``).
- ``attention_rollout(attentions, discard_ratio=0.0, head_fusion="mean")``: attention rollout
  (Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020): per layer, fuse
  the heads, add the identity for the residual connection and renormalise rows,
  ``A = (W + I) / 2``; multiply the layers, ``R = A_L ... A_1``; the class token's row of ``R``
  over the patch tokens, reshaped to the patch grid and scaled to max 1, is the map.
  ``discard_ratio > 0`` zeroes that fraction of the lowest fused weights of each layer first
  (never the class token's self-attention), the common "filtered" variant
  (jacobgil/vit-explain); ``head_fusion`` is "mean" (the paper), "max" or "min".
- ``save_attention_overlay(image, rollout, path)``: a PNG of the map over the image
  (matplotlib's Agg canvas; no display needed, no global pyplot state).

Rollout assumes a class token at position 0 followed by a row-major patch grid (``vit_*``).
"""

from __future__ import annotations

import os
import re
from typing import Any, Sequence

import jax
import numpy as np

from jaxcnn.utils import optional_import

__all__ = ["attention_rollout", "collect_attention", "save_attention_overlay"]


def _natural_key(path: tuple[str, ...]):
    return [int(t) if t.isdigit() else t for part in path for t in re.split(r"(\d+)", part)]


def collect_attention(model, variables, images, **apply_kwargs) -> list:
    """Attention weights of every layer of ``model`` for ``images``, in block order.

    Runs ``model.apply(variables, images, train=False, mutable=["intermediates"])`` (jitted) and
    returns the sown ``attention`` arrays sorted by module path (``block2`` before
    ``block10``), each ``(batch, heads, tokens, tokens)``.
    """
    variables = {k: v for k, v in dict(variables).items() if k != "intermediates"}
    run = jax.jit(
        lambda v, x: model.apply(v, x, train=False, mutable=["intermediates"], **apply_kwargs)
    )
    _, state = run(variables, images)
    found: list[tuple[tuple[str, ...], Any]] = []  # (module path, attention weights)

    def walk(tree, path):
        for key, value in dict(tree).items():
            if key == "attention":
                found.extend((path, v) for v in value)
            elif hasattr(value, "items"):
                walk(value, path + (key,))

    walk(state.get("intermediates", {}), ())
    if not found:
        raise ValueError(
            f"{type(model).__name__} sowed no attention weights; it has no "
            "MultiHeadSelfAttention layers"
        )
    found.sort(key=lambda pv: _natural_key(pv[0]))
    return [v for _, v in found]


def attention_rollout(
    attentions: Sequence[Any],
    discard_ratio: float = 0.0,
    head_fusion: str = "mean",
    grid: Sequence[int] | None = None,
) -> np.ndarray:
    """Class-token attention rollout over the patch grid.

    Args:
      attentions: per layer, in forward order, ``(heads, T, T)`` or ``(batch, heads, T, T)``
        with ``T = 1 + gh * gw`` (class token first).
      discard_ratio: fraction in [0, 1) of the lowest fused weights zeroed per layer.
      head_fusion: "mean", "max" or "min" over heads.
      grid: ``(gh, gw)``; default square.
    Returns ``(gh, gw)`` (or ``(batch, gh, gw)`` for batched input), float, max 1 per image.
    """
    if not attentions:
        raise ValueError("attention_rollout: no attention layers given")
    if head_fusion not in ("mean", "max", "min"):
        raise ValueError(
            f"attention_rollout: head_fusion must be 'mean', 'max' or 'min', got {head_fusion!r}"
        )
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"attention_rollout: discard_ratio must be in [0, 1), got {discard_ratio}")
    layers = [np.asarray(a, np.float64) for a in attentions]
    batched = layers[0].ndim == 4
    layers = [a if batched else a[None] for a in layers]
    b, _, t, t2 = layers[0].shape
    if t != t2 or any(a.shape[0] != b or a.shape[2:] != (t, t) for a in layers):
        raise ValueError(
            f"attention_rollout: expected (batch, heads, T, T) arrays of one shape, "
            f"got {[a.shape for a in layers]}"
        )
    gh, gw = grid if grid is not None else (int(round((t - 1) ** 0.5)),) * 2
    if gh * gw != t - 1:
        raise ValueError(
            f"attention_rollout: {t - 1} patch tokens do not form a {gh}x{gw} grid; "
            "pass grid=(gh, gw)"
        )
    eye = np.eye(t)
    result = np.broadcast_to(eye, (b, t, t)).copy()
    for a in layers:
        fused = getattr(np, head_fusion)(a, axis=1)  # (B, T, T)
        if discard_ratio > 0:
            flat = fused.reshape(b, -1).copy()
            k = int(flat.shape[1] * discard_ratio)
            lowest = np.argpartition(flat, k, axis=1)[:, :k]
            for i in range(b):
                idx = lowest[i][lowest[i] != 0]  # keep the class token's self-attention
                flat[i, idx] = 0.0
            fused = flat.reshape(b, t, t)
        a = (fused + eye) / 2.0
        a = a / a.sum(axis=-1, keepdims=True)
        result = a @ result
    mask = result[:, 0, 1:].reshape(b, gh, gw)
    peak = mask.max(axis=(1, 2), keepdims=True)
    mask = np.where(peak > 0, mask / np.where(peak > 0, peak, 1.0), 0.0)
    return mask if batched else mask[0]


def save_attention_overlay(
    image, rollout, path, alpha: float = 0.5, cmap: str = "jet", title: str | None = None
) -> str:
    """Write a PNG of ``rollout`` (a (gh, gw) map) stretched over ``image`` (H, W[, C]).

    The image may be float (any range: min-max scaled for display) or uint8. Returns ``path``.
    """
    FigureCanvasAgg = optional_import(
        "matplotlib.backends.backend_agg", "attention pictures"
    ).FigureCanvasAgg
    Figure = optional_import("matplotlib.figure", "attention pictures").Figure

    img = np.asarray(image)
    if img.ndim == 4 and img.shape[0] == 1:
        img = img[0]
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim not in (2, 3):
        raise ValueError(
            f"save_attention_overlay: expected an (H, W) or (H, W, C) image, got shape {img.shape}"
        )
    if img.dtype != np.uint8:
        img = img.astype(np.float64)
        lo, hi = img.min(), img.max()
        img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    mask = np.asarray(rollout, np.float64)
    if mask.ndim != 2:
        raise ValueError(f"save_attention_overlay: expected a 2-D map, got shape {mask.shape}")
    h, w = img.shape[:2]
    fig = Figure(figsize=(4, 4 * h / w), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 0.9 if title else 1))
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, extent=(0, w, h, 0))
    ax.imshow(mask, cmap=cmap, alpha=alpha, extent=(0, w, h, 0), interpolation="bilinear")
    if title:
        ax.set_title(title)
    ax.set_axis_off()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, format="png")
    return str(path)
