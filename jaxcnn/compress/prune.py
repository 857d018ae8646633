"""Magnitude pruning: masks from weight magnitudes, one-shot or gradual, as an optax transform.

Which weights: every ``kernel`` with two or more axes (convolutions, dense layers), by default;
``include`` / ``exclude`` are regexes on ``/``-joined parameter paths (``"stem/.*"``,
``"head/kernel"``) that narrow it. Biases, BatchNorm scales and offsets are never pruned.

Scope: ``"global"`` ranks all prunable weights together (layers with small weights lose more);
``"layer"`` prunes every prunable tensor to the same fraction. Either way the number of weights
pruned is exact, ``round(sparsity * n)`` (ties in magnitude are broken by position), so the
achieved sparsity is the requested one up to one weight per tensor (layer) or in all (global).

One-shot::

    masks = magnitude_masks(params, 0.7)                  # global, 70% of the kernels' weights
    params = apply_masks(params, masks)
    sparsity_report(params)                               # achieved sparsity per layer

Fine-tuning with the masks fixed, or gradual pruning (Zhu & Gupta 2017: sparsity rises from
``initial`` to ``final`` as ``final + (initial - final) (1 - t)^3`` between two steps, the masks
recomputed every ``update_every`` steps) is one more transform at the END of the optimizer
chain; its state (step count and masks) lives in ``opt_state``, so it is saved and restored with
the rest of the training state and a resumed run keeps its masks::

    tx = optax.chain(optax.adam(1e-3), magnitude_pruning(masks=masks))            # fixed masks
    tx = optax.chain(optax.adam(1e-3),
                     magnitude_pruning(polynomial_sparsity(0.9, begin_step=0, end_step=500),
                                       update_every=50))                          # gradual

After every update the pruned weights are exactly zero (the transform returns
``mask * (params + updates) - params``), whatever the optimizer before it did.
"""

from __future__ import annotations

import re
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcnn.utils import map_with_path, tree_paths

__all__ = [
    "PolynomialSparsity",
    "PruningState",
    "apply_masks",
    "get_masks",
    "magnitude_masks",
    "magnitude_pruning",
    "polynomial_sparsity",
    "prunable_paths",
    "sparsity_report",
]

SCOPES = ("global", "layer")


def _flat(tree) -> dict[str, Any]:
    """``{"/"-joined path: leaf}`` of any pytree (dicts, FrozenDicts, ...)."""
    return dict(zip(tree_paths(tree), jax.tree.leaves(tree)))


def _like(tree, values: dict[str, Any], default):
    """A tree of the structure of ``tree`` with ``values[path]`` (or ``default()``) as leaves."""
    return map_with_path(lambda p, _: values[p] if p in values else default(), tree)


def prunable_paths(
    params, include: str | Sequence[str] | None = None, exclude: str | Sequence[str] = ()
) -> list[str]:
    """The ``/``-joined paths of the weights that pruning touches: every ``kernel`` leaf with
    >= 2 axes, narrowed to those matching one of ``include`` (regexes, full match; default all)
    and none of ``exclude``."""
    inc = [include] if isinstance(include, str) else include
    exc = [exclude] if isinstance(exclude, str) else list(exclude)
    out = []
    for path, leaf in _flat(params).items():
        if path.split("/")[-1] != "kernel" or np.ndim(leaf) < 2:
            continue
        if inc is not None and not any(re.fullmatch(r, path) for r in inc):
            continue
        if any(re.fullmatch(r, path) for r in exc):
            continue
        out.append(path)
    if not out:
        raise ValueError(
            f"no prunable weights (kernels with >= 2 axes) match include={include!r}, "
            f"exclude={exclude!r}; kernel paths: "
            f"{[p for p in _flat(params) if p.endswith('kernel')][:8]}"
        )
    return out


def _check_sparsity(sparsity) -> None:
    if not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")


def _keep_mask(scores: jax.Array, num_pruned) -> jax.Array:
    """True for all but the ``num_pruned`` lowest scores (ties: lower index pruned first); exact
    and jittable with a traced ``num_pruned``."""
    n = scores.shape[0]
    order = jnp.argsort(scores, stable=True)
    rank = jnp.zeros((n,), jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
    return rank >= num_pruned


def _count(sparsity, n: int):
    return jnp.round(jnp.asarray(sparsity, jnp.float32) * n).astype(jnp.int32)


def _compute_masks(params, paths, sparsity, scope, old_masks=None):
    flat = _flat(params)
    old = _flat(old_masks) if old_masks is not None else {}
    scores = {}
    for p in paths:
        s = jnp.abs(flat[p]).astype(jnp.float32).reshape(-1)
        if p in old:  # what is pruned stays pruned (masks only grow)
            s = jnp.where(old[p].reshape(-1), s, -1.0)
        scores[p] = s
    if scope == "global":
        allv = jnp.concatenate([scores[p] for p in paths])
        keep = _keep_mask(allv, _count(sparsity, allv.shape[0]))
        out, i = {}, 0
        for p in paths:
            n = scores[p].shape[0]
            out[p] = keep[i : i + n].reshape(flat[p].shape)
            i += n
    else:
        out = {
            p: _keep_mask(scores[p], _count(sparsity, scores[p].shape[0])).reshape(flat[p].shape)
            for p in paths
        }
    return _full_masks(params, out)


def _full_masks(params, masks_flat: dict[str, jax.Array]):
    """A mask for every leaf of ``params`` (same structure): the given ones, a scalar True
    elsewhere."""
    return _like(params, masks_flat, lambda: jnp.ones((), bool))


def magnitude_masks(
    params,
    sparsity: float,
    *,
    scope: str = "global",
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] = (),
):
    """Boolean masks (True: kept) pruning the ``sparsity`` fraction of smallest-magnitude
    weights, over all prunable weights together (``scope="global"``) or in each tensor
    (``"layer"``). The tree has the structure of ``params``; leaves that are not pruned get a
    scalar True."""
    _check_sparsity(sparsity)
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    paths = prunable_paths(params, include, exclude)
    return _compute_masks(params, paths, sparsity, scope)


def apply_masks(params, masks):
    """``params`` with the masked-out weights set to exactly zero."""
    return jax.tree.map(lambda p, m: jnp.where(m, p, jnp.zeros((), p.dtype)), params, masks)


def sparsity_report(params, paths: Sequence[str] | None = None) -> dict:
    """Achieved sparsity, counted from the zeros in ``params``: ``{"layers": {path: {"zeros",
    "size", "sparsity"}}, "zeros", "size", "sparsity"}`` over ``paths`` (default: every
    kernel with >= 2 axes)."""
    flat = _flat(params)
    paths = list(paths) if paths is not None else prunable_paths(params)
    layers, zeros, size = {}, 0, 0
    for p in paths:
        a = np.asarray(flat[p])
        z = int(np.sum(a == 0))
        layers[p] = {"zeros": z, "size": int(a.size), "sparsity": z / a.size}
        zeros += z
        size += a.size
    return {"layers": layers, "zeros": zeros, "size": size, "sparsity": zeros / size}


# ---------------------------------------------------------------------------------- schedule
class PolynomialSparsity:
    """``schedule(step)``: the sparsity of :func:`polynomial_sparsity`; ``begin_step`` and
    ``end_step`` tell :func:`magnitude_pruning` when the masks stop changing."""

    def __init__(self, final: float, begin_step: int, end_step: int, initial: float, power: float):
        self.final, self.initial, self.power = final, initial, power
        self.begin_step, self.end_step = begin_step, end_step

    def __call__(self, step) -> jax.Array:
        span = self.end_step - self.begin_step
        t = jnp.clip((jnp.asarray(step, jnp.float32) - self.begin_step) / span, 0, 1)
        return self.final + (self.initial - self.final) * (1.0 - t) ** self.power


def polynomial_sparsity(
    final: float, begin_step: int, end_step: int, initial: float = 0.0, power: float = 3.0
) -> PolynomialSparsity:
    """Zhu & Gupta's gradual schedule: ``initial`` before ``begin_step``, then
    ``final + (initial - final) * (1 - (t - begin) / (end - begin)) ** power``, ``final`` from
    ``end_step`` on."""
    _check_sparsity(final)
    _check_sparsity(initial)
    if end_step <= begin_step:
        raise ValueError(f"end_step ({end_step}) must be after begin_step ({begin_step})")
    return PolynomialSparsity(final, begin_step, end_step, initial, power)


# ------------------------------------------------------------------------- optax transform
class PruningState(NamedTuple):
    """``count``: updates seen; ``masks``: boolean masks (True: kept), the structure of params."""

    # optax's name for it (ScaleByAdamState.count): it shadows tuple.count, a method
    count: jax.Array  # type: ignore[assignment]
    masks: Any


def magnitude_pruning(
    schedule: float | Callable[[jax.Array], jax.Array] | None = None,
    *,
    masks=None,
    scope: str = "global",
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] = (),
    update_every: int = 100,
) -> optax.GradientTransformation:
    """An optax transform that keeps the pruned weights at zero; put it last in the chain.

    ``masks`` alone: fine-tune with fixed masks (e.g. from :func:`magnitude_masks`).
    ``schedule`` (a sparsity or a function of the step, e.g. :func:`polynomial_sparsity`):
    masks are recomputed from the updated weights' magnitudes at step 0 and every
    ``update_every`` steps (only while the schedule still changes, when it has ``end_step``),
    never un-pruning a weight. The masks live in the transform's state, so in ``opt_state``:
    checkpoints carry them and a resumed run continues with the same masks.
    """
    if schedule is None and masks is None:
        raise ValueError("magnitude_pruning needs a sparsity schedule or fixed masks")
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    if schedule is not None and not callable(schedule):
        _check_sparsity(schedule)
        constant = float(schedule)
        schedule = lambda step: jnp.asarray(constant, jnp.float32)  # noqa: E731
    if update_every < 1:
        raise ValueError(f"update_every must be >= 1, got {update_every}")

    def init_fn(params):
        if masks is not None:
            m = jax.tree.map(lambda x: jnp.array(x, bool), masks)  # a copy: states are donated
        else:
            flat = _flat(params)
            m = _full_masks(
                params,
                {
                    p: jnp.ones(flat[p].shape, bool)
                    for p in prunable_paths(params, include, exclude)
                },
            )
        return PruningState(count=jnp.zeros((), jnp.int32), masks=m)

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("magnitude_pruning needs params: call tx.update(g, s, params)")
        new = jax.tree.map(lambda p, u: p + u, params, updates)
        m = state.masks
        if schedule is not None:
            paths = prunable_paths(params, include, exclude)
            due = state.count % update_every == 0
            end = getattr(schedule, "end_step", None)
            if end is not None:
                due = due | (state.count == end)
                due = due & (state.count <= end)
            m = jax.lax.cond(
                due,
                lambda: _compute_masks(new, paths, schedule(state.count), scope, m),
                lambda: m,
            )
        out = jax.tree.map(
            lambda n, p, k: jnp.where(k, n, jnp.zeros((), n.dtype)) - p, new, params, m
        )
        return out, PruningState(count=state.count + 1, masks=m)

    return optax.GradientTransformation(init_fn, update_fn)


def get_masks(opt_state):
    """The masks of the (first) :class:`PruningState` inside an optimizer state."""
    for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, PruningState)):
        if isinstance(s, PruningState):
            return s.masks
    raise ValueError("no PruningState in this optimizer state (is magnitude_pruning in tx?)")
