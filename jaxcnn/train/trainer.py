"""The one training engine: a :class:`Trainer` runs any :class:`Task` (classification,
segmentation, GAN, ...) with everything the tasks share written once.

A task supplies what differs: its config keys, its data (a stateful training iterator and the
validation/test evaluation), its state and the pure step function ``(state, batch) -> (state,
metric sums)``. The trainer owns the rest:

- the config: one schema (:mod:`jaxcnn.train.config`) validated before any data is read, and a
  fingerprint of it stored with every checkpoint; ``resume`` refuses a different config
  (listing the keys) unless ``allow_config_change``;
- the jit-compiled step, with the state donated and sharded over the data-parallel mesh
  (:mod:`jaxcnn.train.mesh`), and a non-finite guard inside it: a step whose loss or new state
  is not finite is dropped on device; ``on_nonfinite="halt"`` stops the run naming the step,
  ``"skip"`` continues and halts after ``max_nonfinite_skips`` in a row. No checkpoint with a
  non-finite value is ever written;
- the step loop over epochs, the progress bar, evaluation of the validation split (the only
  split used for model selection: best checkpoints, early stopping) and of the test split at the
  end (per evaluation only if ``eval_test_every_epoch``, labelled as not used for selection);
- checkpoints (:class:`jaxcnn.checkpoint.Checkpointer`): the state, the data iterator's position,
  the history, the partial sums of the running epoch and the guard counters in one atomic step,
  so a run killed at any point and resumed sees exactly the batches of an uninterrupted run and
  ends bit-identical, and ``metrics.json`` is rebuilt from the checkpoint, never out of step with
  it; SIGTERM/SIGINT finish the current step, save and return;
- ``metrics.json`` (strict JSON, written atomically: non-finite numbers become ``null``),
  the learning curves, and the time spent waiting for input (``data_wait_fraction``); each
  evaluation's record also holds the training throughput (``train_images_per_s``, the first
  step's compilation left out), the fraction of that interval's training time spent waiting
  for input (``train_data_wait_fraction``) and the learning rate of the last update (``lr``,
  when the task has a schedule: :meth:`Task.learning_rate`);
- with ``tensorboard=True``, TensorBoard event files in ``<workdir>/tensorboard``: every
  evaluation's numbers and, every ``log_every_steps``, the running train means and ``lr``.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import dataclasses
import datetime
import functools
import json
import logging
import math
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.train import config as config_lib
from jaxcnn.train import mesh as mesh_lib
from jaxcnn.utils.tree import tree_add

__all__ = [
    "Context",
    "NonFiniteError",
    "ResumeError",
    "Task",
    "Trainer",
    "write_json",
]

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """Training produced a non-finite loss or parameters (``on_nonfinite`` decides when)."""


class ResumeError(RuntimeError):
    """``resume`` cannot continue: no checkpoint, or one from a run with another config."""


# -- JSON ---------------------------------------------------------------------------------------
def _strict(obj):
    """``obj`` with numpy scalars/arrays as Python values and non-finite floats as None."""
    if isinstance(obj, Mapping):
        return {str(k): _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    if isinstance(obj, (np.ndarray, jax.Array)):
        return _strict(np.asarray(obj).tolist())
    if isinstance(obj, np.generic):
        return _strict(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as strict JSON (non-finite numbers as ``null``) atomically: a crash leaves
    the previous file or the new one, never a part of either."""
    path = os.fspath(path)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(_strict(obj), f, indent=1, allow_nan=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# -- what a task sees of the engine ---------------------------------------------------------------
@dataclasses.dataclass
class Context:
    """Handed to :meth:`Task.build`: the validated config, the mesh, and helpers that place
    batches on the devices and evaluate over a whole split with one compiled step."""

    cfg: dict
    dp: mesh_lib.DataParallel
    workdir: str
    main: bool = True  # process 0: prints, writes metrics and plots

    def to_device(self, host_batches: Iterable[dict], prefetch: int = 2) -> Iterator[Any]:
        """Sharded global device arrays from this process's numpy rows, ``prefetch`` ahead."""
        return mesh_lib._prefetch(iter(host_batches), self.dp.shard, prefetch)

    def jit_eval(self, fn: Callable) -> Callable:
        """``jax.jit`` of ``fn(state, batch) -> sums`` with the batch sharded along ``data``."""
        return jax.jit(
            fn, in_shardings=(self.dp.replicated, self.dp.data), out_shardings=self.dp.replicated
        )

    def sum_over(self, step: Callable, state: Any, host_batches: Iterable[dict]) -> dict:
        """Add ``step(state, batch)`` over every batch on device; one host transfer at the end."""
        total = None
        for batch in self.to_device(host_batches):
            m = step(state, batch)
            total = tree_add(total, m)
        if total is None:
            raise ValueError("evaluation over an empty split")
        return jax.device_get(total)


class Task:
    """What one kind of training supplies to the :class:`Trainer`; subclass and override.

    Class attributes: ``name``; ``fields`` (its config keys, joined to the common ones; a key
    mapped to ``None`` drops a common one, see :func:`jaxcnn.train.config.schema`);
    ``selection`` (the key of :meth:`evaluate`'s validation result that ranks checkpoints and
    drives early stopping, and ``"max"`` or ``"min"``; ``None``: the validation metrics are
    recorded but select nothing, e.g. a GAN's sample quality); a task whose selected metric is
    a config choice overrides :meth:`selection_for`.
    """

    name = "task"
    fields: Mapping[str, config_lib.Field | None] = {}
    selection: tuple[str, str] | None = ("accuracy", "max")

    def selection_for(self, cfg: dict) -> tuple[str, str] | None:
        """The selection (as ``selection``) of a run with the validated config ``cfg``; called
        when the :class:`Trainer` is made, before :meth:`build`. Default: ``selection``."""
        return self.selection

    def build(self, ctx: Context) -> None:
        """Read the data, build the model; set ``steps_per_epoch``. Called once, before
        :meth:`init_state`."""
        raise NotImplementedError

    steps_per_epoch: int = 0

    def facts(self) -> dict:
        """What the run derived from the data and the model (num_classes, input shape, dataset
        sizes, parameter count): part of the resume fingerprint and of ``metrics.json``."""
        return {}

    def init_state(self) -> Any:
        """The initial training state (a pytree with a ``step`` field), on the host or device."""
        raise NotImplementedError

    def step_fn(self, state, batch) -> tuple[Any, dict]:
        """One training step, pure: ``(state, batch) -> (new state, metric sums)``. A task
        with several :attr:`phase_starts` takes a third argument, ``phase=k``."""
        raise NotImplementedError

    @property
    def phase_starts(self) -> tuple[int, ...]:
        """The steps at which the train step changes (a transfer plan's unfreezing phases):
        with more than one, the :class:`Trainer` compiles one step per phase, when the phase
        first comes into force, and calls ``step_fn(state, batch, phase=k)`` in phase ``k``.
        Picking the phase on the host keeps the step free of a device-side conditional, inside
        which XLA:CPU runs convolution gradients far off its fast path. Default: one phase."""
        return (0,)

    def train_batches(self, data_state: dict | None) -> Iterator[dict]:
        """This process's rows of every training batch, forever, as numpy dicts; the iterator
        has ``get_state() -> dict`` and starts where ``data_state`` says (None: the start)."""
        raise NotImplementedError

    def summarize(self, sums: dict) -> dict:
        """Train metric sums of some steps -> means (``{"loss": ..., "accuracy": ...}``)."""
        n = max(float(sums.get("count", 1.0)), 1.0)
        return {
            k.removesuffix("_sum"): float(v) / n
            for k, v in sums.items()
            if k != "count" and np.ndim(v) == 0
        }

    def learning_rate(self, step: int) -> float | None:
        """The learning rate of the update that takes the state from ``step`` to ``step + 1``,
        for the logs; None (the default): the task has no single schedule to report."""
        return None

    def splits(self) -> tuple[str, ...]:
        """The evaluation splits this task has, of ``("validation", "test")``: validation is
        evaluated at every evaluation, test at the end (and at every evaluation only with
        ``eval_test_every_epoch``)."""
        return ("validation", "test")

    def evaluate(self, state, split: str) -> dict:
        """Metrics of ``state`` on a whole split; floats, lists allowed (confusion matrix)."""
        raise NotImplementedError

    def describe(self) -> dict:
        """Extra top-level entries for ``metrics.json`` (data provenance, class names...)."""
        return {}

    def finish(self, state, result: dict, workdir: str) -> dict | None:
        """After training, on process 0: plots and pictures for ``workdir``; a returned dict
        is added to the final metrics."""


# -- the guard: on-device counters of non-finite steps -------------------------------------------
def _guard_init() -> dict:
    # four buffers (the guard is donated: no two entries may share one)
    return {
        k: jnp.full((), v, jnp.int32)
        for k, v in (("count", 0), ("streak", 0), ("max_streak", 0), ("first", -1))
    }


def _all_finite(tree) -> jax.Array:
    leaves = [
        jnp.all(jnp.isfinite(x))
        for x in jax.tree.leaves(tree)
        if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)
    ]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def guarded(step_fn: Callable) -> Callable:
    """``(state, batch, guard) -> (state, sums, guard)``: ``step_fn``'s update, kept only when
    its metric sums and its new state are all finite; otherwise the old state (step counter
    advanced, so the data and the dropout keys move on), zero sums (the step does not count in
    the epoch's means) and the guard counts the step."""

    def step(state, batch, guard):
        new, sums = step_fn(state, batch)
        ok = _all_finite(sums) & _all_finite(new)
        # one conditional for the whole state: a jnp.where per leaf compiles ~10x slower on
        # CPU for a model with hundreds of leaves (ResNet-50: 250 s against 25 s)
        kept = jax.lax.cond(ok, lambda: new, lambda: state)
        kept = kept.replace(step=new.step)
        sums = jax.tree.map(lambda v: jnp.where(ok, v, jnp.zeros_like(v)), sums)
        bad = (~ok).astype(jnp.int32)
        streak = (guard["streak"] + 1) * bad
        guard = {
            "count": guard["count"] + bad,
            "streak": streak,
            "max_streak": jnp.maximum(guard["max_streak"], streak),
            "first": jnp.where(
                (guard["first"] < 0) & ~ok, state.step.astype(jnp.int32), guard["first"]
            ),
        }
        return kept, sums, guard

    return step


# -- the trainer ----------------------------------------------------------------------------------
class _Preemption:
    """SIGTERM/SIGINT set a flag (restored on exit); the loop saves at the next step boundary."""

    def __init__(self):
        self.signal: int | None = None
        self._old: dict = {}

    def __enter__(self):
        def handler(signum, frame):
            if self.signal is not None and signum == signal.SIGINT:  # second Ctrl-C: stop now
                raise KeyboardInterrupt
            self.signal = signum

        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[s] = signal.signal(s, handler)
            except ValueError:  # not the main thread: no handlers, no preemption save
                pass
        return self

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)

    def requested(self, step: int, every: int) -> bool:
        """Whether to stop and save now; with several processes they agree (a collective,
        so only every ``every`` steps)."""
        flag = self.signal is not None
        if jax.process_count() > 1:  # every process must save at the same step
            if step % every:
                return False
            from jax.experimental import multihost_utils

            flag = bool(np.any(multihost_utils.process_allgather(np.int32(flag))))
        return flag


def _with_prefix(prefix: str, metrics: Mapping[str, Any]) -> dict:
    return {f"{prefix}_{k}": v for k, v in metrics.items()}


class Trainer:
    """Run ``task`` as ``config`` says in ``workdir``.

    ``resume=True`` continues the run whose checkpoints are in ``workdir`` (an error if there
    are none, or if the config differs from theirs in a key that changes the run). Without it,
    a work directory holding another run's checkpoints is moved aside into
    ``workdir/replaced-<time>/`` (said in one line), so two runs never mix.
    """

    def __init__(
        self, task: Task, config: Any, workdir: str | os.PathLike, *, resume: bool = False
    ):
        self.task = task
        self.fields = config_lib.schema(task.fields)
        self.cfg = config_lib.validate(config, self.fields)
        self.selection = task.selection_for(self.cfg)
        self.workdir = os.path.abspath(os.fspath(workdir))
        self.resume = resume
        self.ckpt_dir = os.path.join(self.workdir, "checkpoints")
        self.metrics_path = os.path.join(self.workdir, "metrics.json")

    # -- set-up -----------------------------------------------------------------------------
    def _checkpointer(self):
        """Opened before the task reads its data (the resume checks come first); a task without
        a validation split saves no metrics, and then only the newest checkpoints are kept."""
        from jaxcnn.checkpoint import Checkpointer

        sel = self.selection
        return Checkpointer(
            self.ckpt_dir,
            keep=self.cfg["keep_checkpoints"],
            keep_best=self.cfg.get("keep_best", 0) if sel else 0,
            best_metric=f"val_{sel[0]}" if sel else "val_accuracy",
            best_mode=sel[1] if sel else "max",
        )

    def _prepare_workdir(self, main: bool) -> None:
        """Check ``resume`` against what is on disk, before any data is read."""
        steps = _checkpoint_steps(self.ckpt_dir)
        if self.resume:
            if not steps:
                raise ResumeError(
                    f"--resume: no checkpoint in {self.ckpt_dir}; nothing to resume (check "
                    f"--workdir, or run without --resume to start a new run)"
                )
            return
        if steps or os.path.exists(self.metrics_path):
            if main:
                stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
                dest = os.path.join(self.workdir, f"replaced-{stamp}")
                os.makedirs(dest, exist_ok=True)
                for name in ("checkpoints", "metrics.json", "tensorboard"):
                    if os.path.exists(os.path.join(self.workdir, name)):
                        shutil.move(os.path.join(self.workdir, name), os.path.join(dest, name))
                print(
                    f"{self.workdir} held another run (checkpoints {steps or 'none'}); "
                    f"moved it to {dest} (use --resume to continue a run)",
                    flush=True,
                )
            if jax.process_count() > 1:
                from jax.experimental import multihost_utils

                multihost_utils.sync_global_devices("jaxcnn_prepare_workdir")

    def _check_fingerprint(self, saved: dict | None, now: dict) -> None:
        if saved is None or self.cfg["allow_config_change"]:
            return
        diff = config_lib.diff_fingerprints(saved, now)
        if diff:
            shown = "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more" if diff[6:] else "")
            raise ResumeError(
                f"--resume: the config differs from the checkpoint's run in {shown}. Resume "
                f"with the same config, or pass --config.allow_config_change=true if the change "
                f"is intended"
            )

    # -- the run ----------------------------------------------------------------------------
    def run(self, stop_at_step: int | None = None) -> dict:
        """Train; returns the final metrics (as in ``metrics.json["final"]``) and ``"state"``.

        ``stop_at_step`` stops after that step with a checkpoint, as a preemption would (tests).
        A preempted run returns ``{"preempted": True, "step": ..., "signal": ...}`` (the
        signal's number; None for ``stop_at_step``).
        """
        mesh_lib.initialize_distributed()
        main = mesh_lib.is_main_process()
        dp = mesh_lib.setup(self.cfg)
        os.makedirs(self.workdir, exist_ok=True)
        self._prepare_workdir(main)
        tb = self._tensorboard() if main and self.cfg["tensorboard"] else None
        ckpt = self._checkpointer()
        try:
            return self._run(ckpt, dp, main, stop_at_step, tb)
        finally:
            ckpt.close()  # also on errors: Orbax's threads end, a pending save completes
            if tb is not None:
                tb.close()

    def _tensorboard(self):
        """The TensorBoard writer of ``tensorboard=True``; without tensorboardX a one-line
        ``ConfigError`` naming the extra, before any data is read."""
        from jaxcnn.train.logger import TensorBoardWriter

        try:
            return TensorBoardWriter(os.path.join(self.workdir, "tensorboard"))
        except ImportError as e:
            raise config_lib.ConfigError(
                f"config key 'tensorboard': {str(e).split(';')[0]}"
            ) from None

    def _run(self, ckpt, dp, main: bool, stop_at_step: int | None, tb=None) -> dict:
        cfg, task = self.cfg, self.task
        saved = ckpt.read_extra() if self.resume else None
        keys = config_lib.fingerprint(cfg, self.fields)
        if saved is not None:  # the config keys first: before any data is read
            fp = saved.get("fingerprint", {})
            self._check_fingerprint({k: v for k, v in fp.items() if k in keys}, keys)
        task.build(Context(cfg=cfg, dp=dp, workdir=self.workdir, main=main))
        if task.steps_per_epoch < 1:
            raise ValueError(f"{task.name}: no full training batch per epoch")
        facts = task.facts()
        # facts under their own prefix: a fact may share a config key's name (num_train: the
        # config's cap, 0 for all, vs the count the data gave) without overwriting it
        derived = config_lib.fingerprint({}, {}, **facts)
        fingerprint = {**keys, **{f"derived.{k}": v for k, v in derived.items()}}
        if saved is not None:  # then what the data and the model made of them
            self._check_fingerprint(saved.get("fingerprint"), fingerprint)
        run = _Run(self, ckpt, dp, main, facts, fingerprint, tb)
        run.start(dp.replicate(task.init_state()), resume=self.resume)
        if main:
            n = facts.get("params")
            print(
                f"{task.name}: {cfg['model']}"
                + (f" ({n:,} parameters)" if n else "")
                + f", {task.steps_per_epoch} steps/epoch x {cfg['epochs']} epochs",
                flush=True,
            )
        if run.train(stop_at_step):
            return {"preempted": True, "step": run.step, "signal": run.signal, "state": run.state}
        return run.finish()


class _Run:
    """One run's moving parts: the state, the guard, the running epoch's metric sums, the
    history, the data position and the selection record; and what the loop does with them at
    a step, an evaluation, a checkpoint and the end."""

    def __init__(
        self, trainer: Trainer, ckpt, dp, main: bool, facts: dict, fingerprint: dict, tb=None
    ):
        self.trainer, self.ckpt, self.dp, self.main, self.tb = trainer, ckpt, dp, main, tb
        self.cfg, self.task = trainer.cfg, trainer.task
        self.facts, self.fingerprint = facts, fingerprint
        self.spe = self.task.steps_per_epoch
        self.total = self.spe * self.cfg["epochs"]
        # selection only ever on the validation split
        has_val = "validation" in self.task.splits()
        self.sel = trainer.selection if has_val else None
        self.history: list[dict] = []
        self.epoch_sums: dict | None = None
        self.data_pos: dict | None = None
        self.elapsed = {"train_s": 0.0, "wait_s": 0.0}
        self.stopped_early = False
        # (step, train seconds) where the throughput's interval starts; set after the first
        # step of this process (its compilation is not training) and at every evaluation
        self.rate_mark: tuple[int, float, float] | None = None  # step, train_s, wait_s
        self.signal: int | None = None  # what interrupted the run
        self.step_fns: dict[int, Callable] = {}  # phase -> its compiled step
        self.phase_starts: tuple[int, ...] = (0,)  # the task's, read in start()

    def step_fn(self, step: int) -> Callable:
        """The compiled train step of the phase in force at ``step`` (jitted on first use)."""
        starts = self.phase_starts
        k = bisect.bisect_right(starts, step) - 1
        if k not in self.step_fns:
            if self.step_fns:  # a new phase: its first step compiles, so images/s restarts
                self.rate_mark = None
            fn: Callable[..., Any] = self.task.step_fn  # takes phase= with several phases
            if len(starts) > 1:
                fn = functools.partial(fn, phase=k)
            self.step_fns[k] = jax.jit(
                guarded(fn),
                in_shardings=(self.dp.replicated, self.dp.data, self.dp.replicated),
                out_shardings=(self.dp.replicated, self.dp.replicated, self.dp.replicated),
                donate_argnums=(0, 2),
            )
        return self.step_fns[k]

    # -- state in and out of checkpoints --------------------------------------------------------
    def start(self, state, resume: bool) -> None:
        guard = _guard_init()
        if resume:
            r = self.ckpt.restore(state)
            state, extra = r.state, r.extra or {}
            self.history = extra.get("history", [])
            sums = extra.get("epoch_sums")  # float32 sums survive JSON exactly
            self.epoch_sums = (
                None if sums is None else jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), sums)
            )
            if extra.get("guard"):
                guard = {k: jnp.asarray(v, jnp.int32) for k, v in extra["guard"].items()}
            self.data_pos = extra.get("data")
            self.elapsed.update(extra.get("elapsed", {}))
            if self.main:
                print(f"Resumed from step {r.step} in {self.ckpt.directory}", flush=True)
        self.state, self.guard = state, jax.device_put(guard, self.dp.replicated)
        # known once the task made its state (a transfer plan is applied in init_state)
        self.phase_starts = tuple(self.task.phase_starts)
        self.step = int(jax.device_get(state.step))
        self.best, self.since_best = _selection_record(self.history, self.sel)

    def save(self, metrics: dict | None = None) -> None:
        sums = None if self.epoch_sums is None else _strict(jax.device_get(self.epoch_sums))
        extra = {
            "fingerprint": self.fingerprint,
            "history": self.history,
            "data": self.data_pos,
            "guard": {k: int(v) for k, v in jax.device_get(self.guard).items()},
            "epoch_sums": sums,
            "elapsed": dict(self.elapsed),
        }
        self.ckpt.save(self.step, self.state, metrics=metrics, extra=extra)

    def write_metrics(self, final: dict | None = None) -> None:
        if not self.main:
            return
        out = {
            "task": self.task.name,
            "config": self.cfg,
            "facts": self.facts,
            **self.task.describe(),
            "history": self.history,
        }
        if final is not None:
            out["final"] = final
        write_json(self.trainer.metrics_path, out)

    # -- the loop ---------------------------------------------------------------------------
    def train(self, stop_at_step: int | None) -> bool:
        """Steps until the last epoch ends, early stopping, ``stop_at_step`` or a signal;
        returns whether the run was interrupted (and saved)."""
        cfg = self.cfg
        feed = _feed(self.task.train_batches(self.data_pos), self.dp)
        with _Preemption() as pre, _progress(cfg, self.main, self.step, self.total) as bar:
            while self.step < self.total and not self.stopped_early:
                t0 = time.perf_counter()
                batch, self.data_pos, waited = next(feed)
                self.state, m, self.guard = self.step_fn(self.step)(self.state, batch, self.guard)
                self.epoch_sums = tree_add(self.epoch_sums, m)
                self.step += 1
                bar.update(1)
                self.elapsed["wait_s"] += waited
                step, every = self.step, cfg["eval_every_steps"]
                boundary = step % self.spe == 0 or (every and step % every == 0)
                if boundary or step % cfg["log_every_steps"] == 0:
                    # reading the guard waits for the device to finish this step: the steps
                    # dispatched since the last read are counted here, so train_s is the
                    # training's wall time (dispatch alone returns before the step has run)
                    self.check_guard()
                    show = self.main and cfg["progress"]
                    if show or (self.tb is not None and not boundary):
                        means = self.task.summarize(jax.device_get(self.epoch_sums))
                        if show:
                            bar.set_postfix(means)
                        if self.tb is not None and not boundary:
                            self.log_scalars({**_with_prefix("train", means), **self.lr()})
                elif self.rate_mark is None:
                    # the images/s count starts after this run's first step (its compile
                    # included) has finished
                    jax.block_until_ready(self.guard)
                self.elapsed["train_s"] += time.perf_counter() - t0
                if self.rate_mark is None:
                    self.rate_mark = self._mark()
                if boundary:
                    self.evaluate(bar)
                elif cfg["checkpoint_every_steps"] and step % cfg["checkpoint_every_steps"] == 0:
                    self.check_guard()
                    self.save()
                stop = stop_at_step is not None and step >= stop_at_step
                if stop or pre.requested(step, cfg["log_every_steps"]):
                    self.interrupt(pre.signal)
                    return True
        return False

    def check_guard(self) -> None:
        """Read the guard; raise :class:`NonFiniteError` (after writing why into metrics.json)
        when ``on_nonfinite`` says the run must stop."""
        g = {k: int(v) for k, v in jax.device_get(self.guard).items()}
        cfg = self.cfg
        if g["count"] == 0:
            return
        skip = cfg["on_nonfinite"] == "skip"
        if skip and g["max_streak"] < cfg["max_nonfinite_skips"]:
            return
        why = (
            f"{g['max_streak']} non-finite steps in a row (max_nonfinite_skips="
            f"{cfg['max_nonfinite_skips']})"
            if skip
            else "a non-finite loss or update"
        )
        latest = self.ckpt.latest_step()
        kept = (
            "no checkpoint was written"
            if latest is None
            else f"the newest checkpoint (step {latest}) holds only finite values"
        )
        msg = (
            f"{why} at step {g['first'] + 1} (of {self.step} run; {g['count']} such step(s) "
            f"dropped); {kept}. Lower learning_rate, set grad_clip, or on_nonfinite='skip'"
        )
        self.write_metrics({"halted": msg, "steps": self.step, "nonfinite_steps": g["count"]})
        raise NonFiniteError(msg)

    def evaluate(self, bar) -> None:
        """An evaluation boundary: record the epoch's train means and the validation (and,
        if asked, test) metrics, rank and save the checkpoint, decide on early stopping."""
        task, cfg, sel = self.task, self.cfg, self.sel
        rec: dict[str, Any] = {"epoch": self.step / self.spe, "step": self.step}
        rec.update(_with_prefix("train", task.summarize(jax.device_get(self.epoch_sums))))
        rec.update(self.interval_rates())
        rec.update(self.lr())
        self.epoch_sums = None
        if "validation" in task.splits():
            rec.update(_with_prefix("val", task.evaluate(self.state, "validation")))
        if cfg.get("eval_test_every_epoch") and "test" in task.splits():
            rec.update(_with_prefix("test", task.evaluate(self.state, "test")))
            rec["test_used_for_selection"] = False
        rec["time_s"] = self.elapsed["train_s"]
        self.history.append(_strict(rec))
        self.log_scalars(rec, flush=True)
        metrics = None
        if sel:
            v = rec[f"val_{sel[0]}"]
            if _better(v, self.best, sel[1]):
                self.best, self.since_best = v, 0
            else:
                self.since_best += 1
            metrics = {f"val_{sel[0]}": v}
        self.save(metrics)
        self.write_metrics()
        if self.main:
            bar.write(_epoch_line(rec, cfg["epochs"]))
        patience = cfg.get("early_stopping_patience", 0)
        if sel and patience and self.since_best >= patience:
            if self.main:
                print(
                    f"early stopping: no better validation {sel[0]} in {self.since_best} "
                    f"evaluations",
                    flush=True,
                )
            self.stopped_early = True

    def _mark(self) -> tuple[int, float, float]:
        return (self.step, self.elapsed["train_s"], self.elapsed["wait_s"])

    def interval_rates(self) -> dict[str, float | None]:
        """Since the last mark (the end of the previous evaluation, or of the process's first
        step): ``train_images_per_s`` and ``train_data_wait_fraction`` (time waiting for input
        over training time); None when no timed step ran in between. Moves the mark here."""
        mark, now = self.rate_mark, self._mark()
        self.rate_mark = now
        if mark is None or now[0] <= mark[0] or now[1] <= mark[1]:
            return {"train_images_per_s": None, "train_data_wait_fraction": None}
        dt = now[1] - mark[1]
        return {
            "train_images_per_s": (now[0] - mark[0]) * self.cfg["batch_size"] / dt,
            "train_data_wait_fraction": (now[2] - mark[2]) / dt,
        }

    def lr(self) -> dict:
        """``{"lr": rate of the last update}``, or ``{}`` when the task reports none."""
        v = self.task.learning_rate(self.step - 1)
        return {} if v is None else {"lr": float(v)}

    def log_scalars(self, rec: Mapping[str, Any], flush: bool = False) -> None:
        """The numbers of ``rec`` to TensorBoard at the current step: ``train_loss`` as
        ``train/loss``, ``val_ema_accuracy`` as ``val/ema_accuracy``, ``lr`` as ``lr``."""
        if self.tb is None:
            return
        scalars = {}
        for k, v in rec.items():
            if k in ("epoch", "step", "time_s") or isinstance(v, bool):
                continue
            if isinstance(v, (int, float)) and math.isfinite(v):
                prefix, _, rest = k.partition("_")
                tag = f"{prefix}/{rest}" if prefix in ("train", "val", "test") and rest else k
                scalars[tag] = v
        self.tb.write_scalars(self.step, scalars)
        if flush:
            self.tb.flush()

    def interrupt(self, signum: int | None) -> None:
        """Save where the run stands (unless this step is saved already) and say so."""
        self.signal = signum
        self.check_guard()
        if self.ckpt.latest_step() != self.step:
            self.save()
        self.ckpt.wait()
        self.write_metrics()
        if self.main and signum is not None:
            print(
                f"{signal.Signals(signum).name}: saved step {self.step} to "
                f"{self.ckpt.directory}; continue with --resume",
                flush=True,
            )

    # -- the end ----------------------------------------------------------------------------
    def finish(self) -> dict:
        """Test metrics of the last state and of the state selected on validation,
        ``metrics.json`` and the task's pictures."""
        task, sel, step = self.task, self.sel, self.step
        self.ckpt.wait()
        final = {
            "steps": step,
            "epochs_run": step / self.spe,
            "stopped_early": self.stopped_early,
            "train_time_s": self.elapsed["train_s"],
            "data_wait_fraction": self.elapsed["wait_s"] / max(self.elapsed["train_s"], 1e-9),
            # a private counter of jax.jit's functions, absent from jax's JitWrapped type
            "compilations": {
                "train_step": sum(f._cache_size() for f in self.step_fns.values())  # type: ignore[attr-defined]
            },
        }
        if "test" in task.splits():
            final.update(_with_prefix("test", task.evaluate(self.state, "test")))
        if sel:
            best_step = self.ckpt.best_step()
            picked = {"step": step, "by": f"val_{sel[0]}", f"val_{sel[0]}": self.best}
            if best_step is not None and best_step != step:
                chosen = self.ckpt.restore(self.state, step=best_step).state
                picked["step"] = best_step
                picked.update(_with_prefix("test", task.evaluate(chosen, "test")))
            else:  # the last state is the selected one
                picked.update({k: v for k, v in final.items() if k.startswith("test_")})
            final["selected"] = picked
        self.write_metrics(final)
        if self.main:
            more = task.finish(self.state, final, self.trainer.workdir)
            if more:
                final.update(more)
                self.write_metrics(final)
        return {**final, "state": self.state}


# -- helpers --------------------------------------------------------------------------------------
def _feed(it, dp: mesh_lib.DataParallel, prefetch: int = 2):
    """``(device batch, data position after it, seconds spent getting it)`` from a host
    iterator with ``get_state()``, ``prefetch`` batches ahead of the step."""

    def pull():
        t0 = time.perf_counter()
        batch = next(it)
        pos = it.get_state()
        batch = dp.shard({k: v for k, v in batch.items() if k != "id"})  # ids stay on the host
        return batch, pos, time.perf_counter() - t0

    queue = collections.deque(pull() for _ in range(prefetch))
    while True:
        queue.append(pull())
        yield queue.popleft()


def _checkpoint_steps(directory: str) -> list[int]:
    if not os.path.isdir(directory):
        return []
    return sorted(int(p) for p in os.listdir(directory) if p.isdigit())


def _better(v, best, mode: str) -> bool:
    return best is None or (v > best if mode == "max" else v < best)


def _selection_record(history: list[dict], sel) -> tuple[Any, int]:
    """``(best validation value, evaluations since it)`` from a (resumed) history."""
    best, since = None, 0
    for h in history if sel else ():
        v = h.get(f"val_{sel[0]}")
        if v is None:
            continue
        if _better(v, best, sel[1]):
            best, since = v, 0
        else:
            since += 1
    return best, since


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _epoch_line(rec: dict, epochs: int) -> str:
    shown = [
        k
        for k in rec
        if k.split("_")[0] in ("train", "val", "test")
        and isinstance(rec[k], (int, float))
        and not isinstance(rec[k], bool)
    ]
    body = "  ".join(f"{k} {_fmt(rec[k])}" for k in shown)
    return f"epoch {rec['epoch']:.3g}/{epochs}  {body}  ({rec['time_s']:.1f}s)"


class _NoBar:
    def update(self, n):
        pass

    def set_postfix(self, d):
        pass

    def write(self, s):
        print(s, flush=True)


@contextlib.contextmanager
def _progress(cfg, main: bool, start: int, total: int):
    if not (main and cfg["progress"]):
        yield _NoBar()
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=start, desc="train", leave=False, dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()
