"""Checkpoints with Orbax: atomic saves of the whole ``TrainState``, the latest N and the best k
kept, restore with fallback.

Orbax writes each checkpoint into a temporary directory and renames it into place only when
every file is written (``step.orbax-checkpoint-tmp-*`` -> ``step``), so a crash mid-save leaves
the previous checkpoints untouched; leftovers of a crashed save are removed when the manager
opens. Retention combines two Orbax preservation policies: ``LatestN(keep)`` (so the newest
checkpoint, the resume point, is never deleted) and ``BestN(keep_best)`` by an eval metric.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import serialization
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

__all__ = ["Checkpointer"]

log = logging.getLogger(__name__)


class Checkpointer:
    """Saves and restores a pytree (normally a ``TrainState``) under ``directory``.

    Args:
      directory: where step folders are written (created if missing; made absolute).
      keep: how many of the newest checkpoints to keep (>= 1).
      keep_best: how many of the best checkpoints by ``best_metric`` to keep besides (0: none).
      best_metric: key in the ``metrics`` dict passed to :meth:`save`.
      best_mode: ``"max"`` (accuracy) or ``"min"`` (loss).
      async_save: write in a background thread (call :meth:`wait` or :meth:`close`).
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        keep: int = 3,
        keep_best: int = 1,
        best_metric: str = "accuracy",
        best_mode: str = "max",
        async_save: bool = False,
    ):
        if keep < 1:
            raise ValueError(
                f"keep must be >= 1 (the newest checkpoint is the resume point), got {keep}"
            )
        if best_mode not in ("max", "min"):
            raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
        self.directory = os.path.abspath(os.fspath(directory))
        self.best_metric, self.best_mode = best_metric, best_mode
        policies = [pp.LatestN(n=keep)]
        if keep_best:
            policies.append(
                pp.BestN(
                    get_metric_fn=lambda m: float(m[best_metric]),
                    reverse=best_mode == "min",
                    n=keep_best,
                    keep_checkpoints_without_metrics=False,
                )
            )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=pp.AnyPreservationPolicy(policies),
            # best_fn makes Orbax write the metrics beside each checkpoint, so the best ones are
            # still known after a restart.
            best_fn=(lambda m: float(m[best_metric])) if keep_best else None,
            best_mode=best_mode,
            create=True,
            cleanup_tmp_directories=True,
            enable_async_checkpointing=async_save,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    # -- saving -----------------------------------------------------------------------------
    def save(self, step: int, state: Any, metrics: dict | None = None, force: bool = True) -> bool:
        """Save ``state`` as checkpoint ``step``; ``metrics`` (floats) rank the best ones."""
        tree = serialization.to_state_dict(state)
        metrics = None if metrics is None else {k: float(v) for k, v in metrics.items()}
        return self.manager.save(
            int(step), args=ocp.args.StandardSave(tree), metrics=metrics, force=force
        )

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    # -- reading ----------------------------------------------------------------------------
    def all_steps(self) -> list[int]:
        self.manager.reload()
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def best_step(self) -> int | None:
        """The kept step with the best ``best_metric`` (None if none has metrics)."""
        best, best_val = None, None
        for s in self.all_steps():
            m = self.manager.metrics(s) if hasattr(self.manager, "metrics") else None
            if not m or self.best_metric not in m:
                continue
            v = float(m[self.best_metric])
            if best_val is None or (v > best_val if self.best_mode == "max" else v < best_val):
                best, best_val = s, v
        return best

    def restore(self, template: Any, step: int | None = None) -> tuple[Any, int]:
        """Restore into the structure of ``template`` (a state with the right shapes/dtypes).

        Without ``step``, tries the newest checkpoint and falls back to older ones if it cannot
        be read (logged as a warning). Returns ``(state, step)``; raises ``FileNotFoundError``
        when there is nothing to restore.
        """
        steps = self.all_steps()
        if not steps:
            raise FileNotFoundError(f"no checkpoint to restore in {self.directory}")
        if step is not None:
            if step not in steps:
                raise FileNotFoundError(
                    f"checkpoint step {step} not in {self.directory}; available: {steps}"
                )
            candidates = [step]
        else:
            candidates = steps[::-1]
        target = serialization.to_state_dict(template)
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        errors = []
        for s in candidates:
            try:
                tree = self.manager.restore(s, args=ocp.args.StandardRestore(abstract))
            except Exception as e:  # corrupt or partial checkpoint: try an older one
                log.warning(
                    "checkpoint %d in %s could not be restored (%s); trying an older one",
                    s,
                    self.directory,
                    e,
                )
                errors.append(f"step {s}: {type(e).__name__}: {e}")
                continue
            return serialization.from_state_dict(template, tree), s
        raise RuntimeError(
            f"no checkpoint in {self.directory} could be restored:\n" + "\n".join(errors)
        )
