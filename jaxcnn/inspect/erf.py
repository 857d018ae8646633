"""Effective receptive field (Luo et al., "Understanding the Effective Receptive Field in Deep
Convolutional Neural Networks", NeurIPS 2016): the gradient of one central unit of a layer with
respect to the input, averaged (in absolute value) over random inputs and random weights.

The layer's value is computed by evaluating the model's jaxpr (the one
``jaxcnn.inspect.receptive_fields`` walks) up to that layer's equation, so any convolution or
pooling row, or any module output, can be the target, functional ops included. Reported beside
the theoretical field: the *nonzero extent* (bounding box of every input pixel with a nonzero
gradient: equals the theoretical field, clipped to the image, as long as no path is dead) and the
*effective* extent (side of the smallest centred square holding 95% of the gradient mass, and
the mass's standard deviation: the field is Gaussian-like and much smaller than the theory).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Literal

from jaxcnn.inspect._common import random_variables
from jaxcnn.inspect.receptive_field import FieldAt, ReceptiveFields, receptive_fields
from jaxcnn.utils import abstract_init, optional_import

__all__ = ["EffectiveRF", "effective_receptive_field", "eval_to"]


def _bind(eqn, invals):
    params = eqn.primitive.get_bind_params(eqn.params)  # as jax.core.eval_jaxpr does
    with eqn.ctx.manager:
        out = eqn.primitive.bind(*invals, **params)
    return out if eqn.primitive.multiple_results else [out]


def eval_to(jaxpr, consts, args, loc: Sequence):
    """Evaluate ``jaxpr`` only up to the equation at ``loc`` (indices, descending into call-like
    equations through their jaxpr parameter) and return that equation's first output."""
    env: dict = {}

    def read(v):
        return v.val if isinstance(v, Literal) else env[v]

    for v, c in zip(jaxpr.constvars, consts):
        env[v] = c
    for v, a in zip(jaxpr.invars, args):
        env[v] = a
    for i, eqn in enumerate(jaxpr.eqns):
        invals = [read(v) for v in eqn.invars]
        if i == loc[0] and len(loc) > 1:
            key = loc[1]
            if isinstance(key, tuple):  # ("branches", k) of a cond
                sub = eqn.params[key[0]][key[1]]
                invals = invals[1:]
            else:
                sub = eqn.params[key]
            inner = getattr(sub, "jaxpr", sub)
            return eval_to(inner, getattr(sub, "consts", ()), invals, loc[2:])
        outs = _bind(eqn, invals)
        if i == loc[0]:
            return outs[0]
        for v, o in zip(eqn.outvars, outs):
            env[v] = o
    raise ValueError(f"no equation at {loc}")


def _box(center: float, size, n: int) -> tuple[int, int]:
    half = (float(size) - 1) / 2
    return max(0, math.ceil(center - half - 1e-9)), min(n - 1, math.floor(center + half + 1e-9))


@dataclasses.dataclass
class EffectiveRF:
    """Gradient map and extents of one unit's effective receptive field."""

    model_name: str
    layer: str
    unit: tuple[int, int]  # position of the unit in the layer's (H, W)
    grad: np.ndarray  # (H, W) mean |d unit / d input| over samples, summed over channels
    theoretical: FieldAt
    theoretical_box: tuple  # ((h0, h1), (w0, w1)) inclusive, clipped to the input
    nonzero_box: tuple
    side95: int  # side of the smallest centred square holding 95% of the mass
    sigma: tuple[float, float]  # std of the gradient mass along H and W
    center: tuple[float, float]

    @property
    def nonzero_extent(self) -> tuple[int, int]:
        (h0, h1), (w0, w1) = self.nonzero_box
        return h1 - h0 + 1, w1 - w0 + 1

    @property
    def theoretical_extent(self) -> tuple[int, int]:
        (h0, h1), (w0, w1) = self.theoretical_box
        return h1 - h0 + 1, w1 - w0 + 1

    def __str__(self) -> str:
        rf = self.theoretical.size
        rf_s = (
            "global"
            if rf[0] is None
            else (f"{int(rf[0])}" if rf[0] == rf[1] else f"{int(rf[0])}x{int(rf[1])}")
        )
        h, w = self.grad.shape
        return (
            f"{self.model_name} {self.layer} unit {self.unit}: theoretical RF {rf_s} "
            f"(inside the {h}x{w} input: {self.theoretical_extent[0]}x"
            f"{self.theoretical_extent[1]}), nonzero gradient extent "
            f"{self.nonzero_extent[0]}x{self.nonzero_extent[1]}, effective (95% of the mass) "
            f"{self.side95}x{self.side95}, sigma {self.sigma[0]:.1f}x{self.sigma[1]:.1f} px"
        )

    def save_png(self, path: str, log: bool = False) -> str:
        """Heat map of the gradient with the theoretical (dashed), nonzero and 95% boxes."""
        Figure = optional_import("matplotlib.figure", "receptive-field pictures").Figure
        Rectangle = optional_import("matplotlib.patches", "receptive-field pictures").Rectangle

        fig = Figure(figsize=(5.2, 5))
        ax = fig.add_subplot()
        img = np.log10(self.grad + 1e-12 * self.grad.max()) if log else self.grad
        im = ax.imshow(img, cmap="inferno", interpolation="nearest")
        fig.colorbar(
            im,
            ax=ax,
            fraction=0.046,
            pad=0.04,
            label="log10 |gradient|" if log else "|gradient| (mean)",
        )

        def rect(box, **kw):
            (h0, h1), (w0, w1) = box
            ax.add_patch(
                Rectangle((w0 - 0.5, h0 - 0.5), w1 - w0 + 1, h1 - h0 + 1, fill=False, **kw)
            )

        rect(self.theoretical_box, ec="cyan", ls="--", lw=1.5, label="theoretical")
        rect(self.nonzero_box, ec="white", lw=1, label="nonzero")
        ch, cw = (round(c) for c in self.center)
        half = self.side95 // 2
        rect(
            ((ch - half, ch - half + self.side95 - 1), (cw - half, cw - half + self.side95 - 1)),
            ec="lime",
            lw=1.5,
            label="95% mass",
        )
        ax.legend(loc="lower right", fontsize=7, framealpha=0.6)
        ax.set_title(
            f"{self.model_name} {self.layer}\nERF 95%: {self.side95} px, nonzero "
            f"{self.nonzero_extent[0]}x{self.nonzero_extent[1]}, theory "
            f"{self.theoretical_extent[0]}x{self.theoretical_extent[1]}",
            fontsize=9,
        )
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        return path


def effective_receptive_field(
    model,
    layer: str | None = None,
    input_shape: Sequence[int] | None = None,
    *,
    variables=None,
    rf: ReceptiveFields | None = None,
    num_samples: int = 8,
    num_inits: int = 1,
    seed: int = 0,
    **create_kwargs,
) -> EffectiveRF:
    """Measure the effective receptive field of one central unit of ``layer``.

    Args:
      model: a registered name or a module (then ``input_shape`` is required).
      layer: a row name of ``receptive_fields(model)`` (a conv or pool) or a module path;
        default: the last conv/pool whose field is still local.
      variables: weights to use (default: ``num_inits`` random draws, LeCun normal kernels,
        BatchNorm statistics 0 and 1; see ``jaxcnn.inspect._common.random_variables``).
      rf: a ``ReceptiveFields`` already computed for the same model and input shape.
      num_samples: random N(0, 1) inputs per initialisation (one batch).
    """
    if rf is None:
        rf = receptive_fields(model, input_shape, **create_kwargs)
    module = rf.model
    shape = (num_samples, *rf.input_shape[1:])
    if rf.input_shape[0] != 1:
        raise ValueError("trace the receptive fields with batch 1 for the effective RF")
    if layer is None:
        local = [r for r in rf.rows if r.size[0] is not None and r.axes[0] is not None]
        if not local:
            raise ValueError(f"{rf.model_name} has no convolution or pooling with a local field")
        layer = local[-1].name
    field, loc = rf.field(layer)
    if field.axes[0] is None or field.axes[1] is None:
        raise ValueError(
            f"{layer!r} has no spatial positions (its field is global or "
            f"collapsed); pick a convolution or pooling layer"
        )
    jaxpr = rf.closed_jaxpr
    th, tw = field.axes
    # the unit: the centre of the layer's map
    n_h = _axis_len(jaxpr, loc, th)
    n_w = _axis_len(jaxpr, loc, tw)
    ui, uj = n_h // 2, n_w // 2

    def unit(leaves, x):
        out = eval_to(jaxpr.jaxpr, jaxpr.consts, [*leaves, x], loc)
        idx: list[slice | int] = [slice(None)] * out.ndim
        idx[th], idx[tw] = ui, uj
        return jnp.sum(out[tuple(idx)].astype(jnp.float32))

    # the jaxpr is traced for one image: vmap it over the samples
    one = jax.grad(lambda leaves, xi: unit(leaves, xi[None]), argnums=1)
    grad_fn = jax.jit(jax.vmap(one, in_axes=(None, 0)))
    if variables is not None:
        inits = [variables]
    else:  # NumPy draws (LeCun normal): no XLA compile of a random-bit generator per init
        abstract = abstract_init(module, rf.input_shape)
        inits = [random_variables(abstract, seed + k, stats=False) for k in range(num_inits)]
    total = np.zeros(shape[1:3], np.float64)
    for k, v in enumerate(inits):
        x = jnp.asarray(np.random.default_rng(seed + 1000 + k).normal(size=shape), jnp.float32)
        g = np.abs(np.asarray(grad_fn(jax.tree.leaves(v), x), np.float64))
        total += g.sum(axis=(0, 3))
    grad = total / (len(inits) * num_samples)
    H, W = grad.shape
    centre = tuple(float(field.start[a] + (ui, uj)[a] * field.jump[a]) for a in range(2))
    tbox = tuple(_box(centre[a], field.size[a], (H, W)[a]) for a in range(2))
    nz_h, nz_w = np.nonzero(grad.sum(1) > 0)[0], np.nonzero(grad.sum(0) > 0)[0]
    if len(nz_h) == 0:
        raise ValueError(f"the gradient of {layer!r} is zero everywhere (dead unit?)")
    nzbox = ((int(nz_h[0]), int(nz_h[-1])), (int(nz_w[0]), int(nz_w[-1])))
    mass = grad / grad.sum()
    ys, xs = np.arange(H), np.arange(W)
    mh, mw = mass.sum(1), mass.sum(0)
    cy, cx = float((mh * ys).sum()), float((mw * xs).sum())
    sigma = (
        float(np.sqrt((mh * (ys - cy) ** 2).sum())),
        float(np.sqrt((mw * (xs - cx) ** 2).sum())),
    )
    side95 = _side95(mass, round(cy), round(cx))
    return EffectiveRF(
        rf.model_name, layer, (ui, uj), grad, field, tbox, nzbox, side95, sigma, (cy, cx)
    )


def _axis_len(closed, loc, axis) -> int:
    """Length of ``axis`` of the output of the equation at ``loc`` (index, key, index, ...)."""
    jaxpr = closed.jaxpr
    while len(loc) > 1:
        key = loc[1]
        eqn = jaxpr.eqns[loc[0]]
        sub = eqn.params[key[0]][key[1]] if isinstance(key, tuple) else eqn.params[key]
        jaxpr, loc = getattr(sub, "jaxpr", sub), loc[2:]
    return jaxpr.eqns[loc[0]].outvars[0].aval.shape[axis]


def _side95(mass: np.ndarray, cy: int, cx: int, q: float = 0.95) -> int:
    H, W = mass.shape
    for half in range(max(H, W)):
        box = mass[max(0, cy - half) : cy + half + 1, max(0, cx - half) : cx + half + 1]
        if box.sum() >= q - 1e-9:
            return 2 * half + 1
    return max(H, W)
