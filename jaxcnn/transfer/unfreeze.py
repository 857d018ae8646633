"""Gradual unfreezing: phases that widen what trains (ULMFiT; the lectures' "epochs 1-5 head
only, 6-10 also the last stage, 11+ everything").

Each phase has its own optimizer and ``apply_fn`` (frozen BatchNorm for what is still frozen),
built once and reused, so the jitted train step compiles at most once per phase. The parameters
that start training in phase ``k`` form the optimizer group ``"phase{k}"`` with its own state:
when a phase begins, the groups that were already training keep their state (moments, step
counts) and the newly unfrozen group starts fresh (a fresh Adam step count, and a schedule
inside ``tx`` that restarts at its beginning).

:class:`jaxcnn.transfer.Plan` (``Plan.parse("gradual")``) is the same idea in one compiled step
(the phase picked on device from the step), with a newly unfrozen group on the run's schedule
at its layer-wise rate after a short warm-up, rather than a restarted schedule; it is what the
classification task's ``transfer`` key and the transfer study use.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import optax

from jaxcnn.transfer.freeze import frozen_batchnorm, scale_by_label
from jaxcnn.transfer.labels import FROZEN, map_with_path, match, path_str

__all__ = ["GradualUnfreezing", "carry_state"]


def carry_state(old, new):
    """``new`` with every leaf replaced by the leaf of ``old`` at the same key path (when the
    shape and dtype agree): optimizer state of groups present in both is kept, new groups
    keep their fresh initial state."""
    old_leaves = {path_str(kp): x for kp, x in jax.tree_util.tree_flatten_with_path(old)[0]}

    def pick(kp, x):
        o = old_leaves.get(path_str(kp))
        if (
            o is not None
            and getattr(o, "shape", None) == getattr(x, "shape", None)
            and getattr(o, "dtype", None) == getattr(x, "dtype", None)
        ):
            return o
        return x

    return jax.tree_util.tree_map_with_path(pick, new)


class GradualUnfreezing:
    """A schedule of phases ``[(start, patterns), ...]`` that widens what trains.

    ``start`` is the epoch (or step, whatever unit you pass to :meth:`update`) at which the
    phase begins (the first is 0); ``patterns`` are parameter patterns or stage names that
    start training then, cumulatively: phase ``k`` trains everything named in phases ``0..k``.

    >>> unfreeze = GradualUnfreezing([(0, ["head"]), (5, ["stage4"]), (10, [".*"])],
    ...                              optax.adam(1e-3), model.apply, variables)
    >>> state = unfreeze.init_state(model, variables)
    >>> for epoch in range(epochs):
    ...     state = unfreeze.update(state, epoch)   # rebuilds only when a phase begins
    ...     ...  # train_step(state, batch) as usual

    ``lr_scales`` / ``lr_labels`` add per-label rate multipliers (see
    :func:`~jaxcnn.transfer.finetune`), e.g. layer-wise decay over stage labels.
    """

    def __init__(
        self,
        phases: Sequence[tuple[int, Sequence[str] | str]],
        tx: optax.GradientTransformation,
        apply_fn: Callable,
        variables: dict,
        lr_scales: Mapping | None = None,
        lr_labels: Any = None,
    ):
        phases = [(int(s), [p] if isinstance(p, str) else list(p)) for s, p in phases]
        starts = [s for s, _ in phases]
        if not phases or starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:])):
            raise ValueError(f"phase starts must begin at 0 and increase strictly, got {starts}")
        self.phases = phases
        self.starts = starts
        params = variables["params"]
        batch_stats = variables.get("batch_stats", {})

        def first_phase(path, _):
            for k, (_, patterns) in enumerate(phases):
                if any(match(p, path) for p in patterns):
                    return k
            return len(phases)  # never trains

        self.first = map_with_path(first_phase, params)
        if all(k == len(phases) for k in jax.tree.leaves(self.first)):
            raise ValueError("no parameter matches any phase's patterns")
        self.labels, self.txs, self.apply_fns = [], [], []
        for k in range(len(phases)):
            labels = jax.tree.map(lambda j: f"phase{j}" if j <= k else FROZEN, self.first)
            groups = {f"phase{j}": tx for j in range(k + 1)}
            step_tx = optax.partition({FROZEN: optax.set_to_zero(), **groups}, labels)
            if lr_scales:
                step_tx = optax.chain(
                    step_tx, scale_by_label(lr_scales, labels if lr_labels is None else lr_labels)
                )
            self.labels.append(labels)
            self.txs.append(step_tx)
            self.apply_fns.append(frozen_batchnorm(apply_fn, labels, batch_stats))

    def phase(self, t: int) -> int:
        """Index of the phase in force at epoch/step ``t``."""
        return max(k for k, s in enumerate(self.starts) if s <= t)

    def init_state(self, model, variables: dict, seed: int = 0, copy: bool = True):
        """A ``TrainState`` in phase 0 (``copy``: see :func:`~jaxcnn.transfer.create_state`)."""
        from jaxcnn.train.state import create_train_state

        if copy:
            variables = jax.tree.map(jnp.copy, dict(variables))
        state = create_train_state(model, self.txs[0], (), seed=seed, variables=variables)
        return state.replace(apply_fn=self.apply_fns[0])

    def update(self, state, t: int):
        """``state`` switched to the phase in force at ``t`` (unchanged if already in it):
        new optimizer and ``apply_fn``; optimizer state kept for groups already training."""
        k = self.phase(t)
        if state.tx is self.txs[k]:
            return state
        fresh = self.txs[k].init(state.params)
        return state.replace(
            tx=self.txs[k],
            apply_fn=self.apply_fns[k],
            opt_state=carry_state(state.opt_state, fresh),
        )
