"""Pictures of what a model computes: feature maps of chosen layers for an image (grids), the
first layer's filters, and sample images (scikit-image's bundled ``camera``, ``astronaut``,
``coffee``, or a user's file). Drawn with matplotlib's Agg canvas (``matplotlib.figure.Figure``:
no display and no global pyplot state).

Layer outputs are captured with ``flax.linen.intercept_methods`` inside one jitted forward pass,
so any module path of the model can be drawn (``summary(model)`` lists them). Attention maps of
ViT (class-token rollout) and Swin (attention received per token in the first block's windows)
use ``jaxcnn.inspect.attention``.
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.inspect._common import record_calls
from jaxcnn.utils import optional_import, path_str

__all__ = [
    "SAMPLE_IMAGES",
    "sample_image",
    "capture_outputs",
    "default_layers",
    "plot_feature_maps",
    "plot_filters",
    "first_conv",
    "attention_map",
    "plot_attention",
]

SAMPLE_IMAGES = ("astronaut", "camera", "coffee", "chelsea", "rocket")
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def sample_image(
    name: str = "astronaut",
    size: Sequence[int] | None = (224, 224),
    channels: int = 3,
    normalize: bool = True,
) -> np.ndarray:
    """An image as float32 ``(H, W, channels)``.

    ``name``: one of scikit-image's bundled images (``SAMPLE_IMAGES``) or a path to an image file
    (read with PIL). It is resized (anti-aliased) to ``size`` and converted to ``channels``
    (1: luminance; 3: RGB). ``normalize``: 3 channels get ImageNet's mean/std, 1 channel is
    centred on 0.5 (values in ``[-1, 1]``); else values are in ``[0, 1]``.
    """
    color = optional_import("skimage.color", "sample_image")
    data = optional_import("skimage.data", "sample_image")
    transform = optional_import("skimage.transform", "sample_image")

    if os.path.exists(name):
        from PIL import Image

        img = np.asarray(Image.open(name).convert("RGB"), np.float32) / 255.0
    elif name in SAMPLE_IMAGES:
        img = getattr(data, name)().astype(np.float32) / 255.0
    else:
        raise ValueError(f"no image file {name!r} and not a bundled sample {SAMPLE_IMAGES}")
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    img = img[..., :3]
    if size is not None:
        img = transform.resize(img, tuple(size), anti_aliasing=True).astype(np.float32)
    if channels == 1:
        img = color.rgb2gray(img)[..., None].astype(np.float32)
        return (img - 0.5) / 0.5 if normalize else img
    if channels != 3:
        raise ValueError(f"sample images have 1 or 3 channels, the model wants {channels}")
    return (img - IMAGENET_MEAN) / IMAGENET_STD if normalize else img


def _display(img: np.ndarray) -> np.ndarray:
    """Undo the normalisation roughly, for showing the input."""
    img = np.asarray(img, np.float32)
    lo, hi = img.min(), img.max()
    img = (img - lo) / (hi - lo + 1e-8)
    return img[..., 0] if img.shape[-1] == 1 else img


def capture_outputs(model: nn.Module, variables, x, layers: Sequence[str]) -> dict:
    """``{layer: output}`` of the modules at the ``/``-joined paths ``layers`` (eval mode)."""
    wanted = set(layers)

    def fwd(v, x):
        got = {}

        def interceptor(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            mod = context.module
            if mod.scope is not None and context.method_name == "__call__":
                name = path_str(mod.scope.path)
                if name in wanted and name not in got:
                    got[name] = out
            return out

        with nn.intercept_methods(interceptor):
            model.apply(v, x, train=False)
        return got

    got = jax.jit(fwd)(variables, x)
    missing = wanted - set(got)
    if missing:
        raise ValueError(
            f"no module output named {sorted(missing)}; the layers are the paths "
            f"that jaxcnn.inspect.summary(model) lists"
        )
    return {k: got[k] for k in layers}


def _is_map(spec) -> bool:
    return (
        isinstance(spec, jax.ShapeDtypeStruct)
        and len(spec.shape) == 4
        and min(spec.shape[1:3]) >= 2
    )


def first_conv(model: nn.Module, input_shape) -> str:
    """Path of the first convolution the model calls."""
    calls, _ = record_calls(model, input_shape)
    for c in calls:
        if isinstance(c.module, (nn.Conv, nn.ConvTranspose)):
            return c.name
    raise ValueError(f"{type(model).__name__} calls no convolution")


def default_layers(model: nn.Module, input_shape, k: int = 4) -> list[str]:
    """The first convolution, then top-level modules with spatial outputs, ``k`` at most,
    spread over the depth of the network."""
    calls, _ = record_calls(model, input_shape)
    convs = [c.name for c in calls if isinstance(c.module, nn.Conv) and _is_map(c.out_spec)]
    top = [c.name for c in calls if len(c.path) == 1 and _is_map(c.out_spec)]
    cands = list(dict.fromkeys(convs[:1] + top))
    if len(cands) <= k:
        return cands
    idx = np.linspace(0, len(cands) - 1, k).round().astype(int)
    return [cands[i] for i in sorted(set(idx))]


def plot_feature_maps(
    model: nn.Module,
    variables,
    image: np.ndarray,
    layers: Sequence[str],
    path: str,
    max_channels: int = 16,
    cols: int = 8,
    title: str | None = None,
) -> str:
    """A PNG: the input, then for each layer its first ``max_channels`` feature maps
    (each scaled to its own range, ``viridis``), in rows of ``cols``."""
    Figure = optional_import("matplotlib.figure", "feature-map pictures").Figure

    x = jnp.asarray(image, jnp.float32)[None]
    outs = capture_outputs(model, variables, x, layers)
    blocks = []
    for name in layers:
        a = np.asarray(jax.tree.leaves(outs[name])[0], np.float32)
        if a.ndim != 4:
            raise ValueError(
                f"layer {name!r} has output shape {a.shape}; feature maps need (N, H, W, C)"
            )
        blocks.append((name, a[0], min(max_channels, a.shape[-1])))
    rows = 1 + sum(math.ceil(n / cols) for _, _, n in blocks)
    fig = Figure(figsize=(cols * 1.2, rows * 1.3 + 0.4))
    gs = fig.add_gridspec(rows, cols, hspace=0.45, wspace=0.08)
    ax = fig.add_subplot(gs[0, :2])
    ax.imshow(_display(image), cmap="gray")
    ax.set_title("input", fontsize=8)
    ax.axis("off")
    r = 1
    for name, a, n in blocks:
        for i in range(n):
            ax = fig.add_subplot(gs[r + i // cols, i % cols])
            ax.imshow(a[..., i], cmap="viridis", interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(
                    f"{name}  {a.shape[0]}x{a.shape[1]}x{a.shape[2]}", fontsize=8, loc="left"
                )
        r += math.ceil(n / cols)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


def plot_filters(
    model: nn.Module,
    variables,
    path: str,
    layer: str | None = None,
    input_shape=None,
    max_filters: int = 64,
    cols: int = 8,
) -> str:
    """A PNG of a convolution's filters (default: the first convolution): RGB when the layer
    reads 3 channels, else the mean over input channels in grey; each filter min-max scaled."""
    Figure = optional_import("matplotlib.figure", "filter pictures").Figure

    from jaxcnn.inspect._common import subtree

    if layer is None:
        if input_shape is None:
            raise ValueError("plot_filters needs layer= or input_shape= to find the first conv")
        layer = first_conv(model, input_shape)
    k = subtree(variables, tuple(layer.split("/")))["params"]["kernel"]
    k = np.asarray(k, np.float32)  # (kh, kw, cin, cout)
    n = min(max_filters, k.shape[-1])
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(cols * 0.9, rows * 0.9 + 0.5))
    for i in range(n):
        f = k[..., i]
        f = f if f.shape[-1] == 3 else f.mean(-1)
        f = (f - f.min()) / (f.max() - f.min() + 1e-8)
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(f, cmap=None if f.ndim == 3 else "gray", interpolation="nearest")
        ax.axis("off")
    fig.suptitle(
        f"{layer}: {k.shape[0]}x{k.shape[1]} filters, {k.shape[2]} -> {k.shape[3]} channels",
        fontsize=9,
    )
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


def attention_map(model: nn.Module, variables, image: np.ndarray) -> tuple[np.ndarray, str]:
    """``(map, description)``: a 2-D attention map of ``image`` (H, W, C), max 1.

    ViT (class token + square patch grid): attention rollout over all layers. Swin (window
    attention, no class token): the attention each token *receives* in the first (unshifted)
    block, averaged over heads and queries, windows stitched back onto the token grid.
    Raises ``ValueError`` when the model sows no attention weights (a CNN).
    """
    from jaxcnn.inspect.attention import attention_rollout, collect_attention

    maps = collect_attention(model, variables, jnp.asarray(image, jnp.float32)[None])
    first = np.asarray(maps[0], np.float64)  # (B * windows, heads, T, T)
    t = first.shape[-1]
    g = int(round(math.sqrt(t - 1)))
    if first.shape[0] == 1 and g * g == t - 1:
        return (
            attention_rollout([np.asarray(m)[0] for m in maps]),
            f"attention rollout over {len(maps)} layers (class token)",
        )
    ws = int(round(math.sqrt(t)))
    nw = first.shape[0]
    side = int(round(math.sqrt(nw)))
    if ws * ws != t or side * side != nw:
        raise ValueError(f"cannot lay out attention of shape {first.shape} on a square grid")
    received = first.mean(axis=(1, 2))  # (windows, T): mean over heads and queries
    grid = received.reshape(side, side, ws, ws).transpose(0, 2, 1, 3).reshape(side * ws, side * ws)
    return grid / grid.max(), f"attention received, block 1 ({ws}x{ws} windows)"


def plot_attention(
    model: nn.Module, variables, image: np.ndarray, path: str, title: str | None = None
) -> str:
    """A PNG of :func:`attention_map` over the image (ViT / Swin)."""
    from jaxcnn.inspect.attention import save_attention_overlay

    amap, what = attention_map(model, variables, image)
    return save_attention_overlay(_display(image), amap, path, title=title or what)
