"""Checkpoints with Orbax: atomic, checksummed saves of a whole ``TrainState`` with a JSON
``extra`` beside it, the latest N and the best k kept, and a restore that falls back past
damaged checkpoints.

Layout of one checkpoint (``<directory>/<step>/``), written by one Orbax ``Composite`` save:
``state/`` (the pytree, ``StandardSave``), ``extra/`` (a JSON dict, e.g. the data iterator
state and the config fingerprint) and ``manifest/`` (JSON: dtype, shape and CRC-32 of every
array, the CRC-32 of ``extra`` and of the manifest itself). Orbax writes all three into a
temporary directory and renames it into place only when every file is written, so a crash
mid-save leaves the previous checkpoints untouched, and a step folder that has a manifest has
the data it describes.

Restore reads the manifest, checks the template against it (a different model or optimizer is a
:class:`CheckpointMismatchError`, the checkpoint is left alone), restores the arrays and compares
their checksums. A step that cannot be read, or whose checksums differ, is moved aside to
``<directory>/corrupt/<step>.<reason>`` (never deleted) with one warning line, and the next
older step is tried; the step number is free again, so the run can save it later.

Saving refuses a state with a NaN or Inf in a floating leaf (:class:`NonFiniteError`), so no
checkpoint of a diverged run is ever written; ``extra`` is stored as strict JSON (NaN/Inf become
``null``). Retention combines two Orbax preservation policies: ``LatestN(keep)`` (the newest
checkpoint, the resume point, is never deleted) and ``BestN(keep_best)`` by a metric.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import math
import os
import re
import shutil
import threading
import time
import zlib
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import serialization
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from jaxcnn.utils import path_str

__all__ = [
    "Checkpointer",
    "Restored",
    "NonFiniteError",
    "CheckpointMismatchError",
    "CorruptCheckpointError",
    "CheckpointWriteError",
    "strict_json",
]

log = logging.getLogger(__name__)

FORMAT = "jaxcnn.checkpoint/1"
CORRUPT_DIR = "corrupt"
_ITEMS = ("state", "extra", "manifest")


class NonFiniteError(ValueError):
    """``save`` was given a state with NaN or Inf in a floating leaf (nothing was written)."""


class CheckpointMismatchError(ValueError):
    """The checkpoint holds a different tree than the template (other model, optimizer, ...)."""


class CorruptCheckpointError(RuntimeError):
    """The requested checkpoint, or every checkpoint, was unreadable (they were moved aside)."""


class CheckpointWriteError(OSError):
    """A save failed (disk full, directory not writable); the message names the cause."""


class Restored(NamedTuple):
    state: Any  # the template's type, filled with the saved values
    step: int
    extra: dict  # the ``extra`` dict given to ``save`` ({} if none was given)


class _Corrupt(Exception):
    """Internal: this step cannot be used; ``slug`` names the reason in the moved folder."""

    def __init__(self, slug: str, reason: str):
        super().__init__(reason)
        self.slug, self.reason = slug, reason


# -- helpers ----------------------------------------------------------------------------------
def _flatten(tree) -> list[tuple[str, Any]]:
    return [(path_str(p), x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _host(x) -> np.ndarray:
    """The full value of a leaf as a host array (all processes must call this together)."""
    if _is_key(x):
        x = jax.random.key_data(x)
    if isinstance(x, jax.Array):
        if x.is_fully_addressable:
            return np.asarray(x)
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def _crc(a: np.ndarray) -> int:
    # an ndarray is a buffer; numpy's annotations declare __buffer__ only for Python >= 3.12
    return zlib.crc32(np.ascontiguousarray(a).reshape(-1).view(np.uint8))  # type: ignore[arg-type]


def _json_crc(obj) -> int:
    return zlib.crc32(json.dumps(obj, sort_keys=True, allow_nan=False).encode())


def _dtype_name(x) -> str:
    return str(x.dtype) if hasattr(x, "dtype") else str(np.asarray(x).dtype)


def strict_json(obj, _path: str = "extra"):
    """``obj`` as strict JSON data: NaN/Inf floats become None, numpy scalars and arrays become
    Python numbers and lists, tuples become lists. Raises ``TypeError`` naming the path of a
    value JSON cannot hold (or a dict key that is not a string)."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, np.integer)) and not isinstance(obj, np.bool_):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, (np.ndarray, jax.Array)):
        return strict_json(np.asarray(obj).tolist(), _path)
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"{_path}: JSON keys must be strings, got {type(k).__name__} {k!r}")
            out[k] = strict_json(v, f"{_path}[{k!r}]")
        return out
    if isinstance(obj, (list, tuple)):
        return [strict_json(v, f"{_path}[{i}]") for i, v in enumerate(obj)]
    raise TypeError(f"{_path}: {type(obj).__name__} is not JSON-serialisable")


def _first_line(e: BaseException, limit: int = 160) -> str:
    """A short reason: TensorStore's status line (``DATA_LOSS: ...``) if the error carries one,
    else the first line of the message; without TensorStore's spec dumps and file paths."""
    status = None
    for x in _causes(e):
        if re.match(r"^[A-Z][A-Z_]+: ", str(x).strip()):
            status = x
            break
    text = str(status if status is not None else e).strip()
    msg = text.splitlines()[0] if text else ""
    msg = re.sub(r"\s*See full TensorStore details.*", "", msg)
    msg = re.sub(r"\s*\[source locations=.*", "", msg)
    msg = re.sub(r' in OCDBT database at local file "[^"]*"', "", msg)
    if len(msg) > limit:
        msg = msg[: limit - 3] + "..."
    if status is not None:
        return msg
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def _causes(e: BaseException):
    """``e`` and everything it was raised from or during (including exception groups)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [e]
    while todo:
        x = todo.pop(0)
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        yield x
        todo.extend([x.__cause__, x.__context__, *getattr(x, "exceptions", ())])


_OS_ERRORS = {
    errno.ENOSPC: "No space left on device",
    errno.EDQUOT: "Disk quota exceeded",
    errno.EACCES: "Permission denied",
    errno.EPERM: "Operation not permitted",
    errno.EROFS: "Read-only file system",
}


def _os_cause(e: BaseException) -> tuple[int | None, str]:
    """The errno and text of the file-system error behind ``e`` (TensorStore reports them in
    its messages, Python as ``OSError``); ``(None, first line of e)`` when there is none."""
    for x in _causes(e):
        if isinstance(x, OSError) and x.errno in _OS_ERRORS:
            return x.errno, _OS_ERRORS[x.errno]
    for x in _causes(e):
        text = str(x)
        for code, name in _OS_ERRORS.items():
            if name.lower() in text.lower():
                return code, name
    return None, _first_line(e)


def _not_the_checkpoints_fault(e: BaseException) -> bool:
    """Errors that say nothing about the checkpoint's files (memory, permissions, too many open
    files): restore re-raises them instead of moving the step aside."""
    for x in _causes(e):
        if isinstance(x, MemoryError):
            return True
        if isinstance(x, OSError) and x.errno in (
            errno.EACCES,
            errno.EPERM,
            errno.EMFILE,
            errno.ENFILE,
            errno.ENOMEM,
        ):
            return True
        if re.search(r"RESOURCE_EXHAUSTED|out of memory|Permission denied", str(x), re.I):
            return True
    return False


_reap_lock = threading.Lock()
_reap_depth = 0
_reap_original: Callable | None = None  # Orbax's function that _run_and_reap stands in for


def _run_and_reap(coro, settle_s: float = 60.0):
    """Orbax's ``asyncio_utils._run_sync_via_new_loop`` (run ``coro`` in a fresh event loop),
    which also lets the tasks still pending when ``coro`` fails finish (cancelling those left
    after ``settle_s``) before closing the loop. Orbax's own version closes the loop with them
    pending: when a restore fails on one array, the reads of the others complete later into a
    closed loop ("Event loop is closed"; "Task was destroyed but it is pending" with TensorStore
    specs, on stderr), and the writes of a failed save go on after the error is raised."""
    loop = asyncio.new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        try:
            return loop.run_until_complete(coro)
        except BaseException:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            if pending:
                _, late = loop.run_until_complete(asyncio.wait(pending, timeout=settle_s))
                for t in late:
                    t.cancel()
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            raise
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def _reap(delta: int) -> None:
    """Use :func:`_run_and_reap` for Orbax's synchronous calls while ``_reap(+1)`` calls
    outnumber ``_reap(-1)`` calls: while a :class:`Checkpointer` is open (its async saves run
    in Orbax's threads after ``save`` returns). The same as Orbax's own on success."""
    global _reap_depth, _reap_original
    from orbax.checkpoint._src import asyncio_utils

    with _reap_lock:
        if not hasattr(asyncio_utils, "_run_sync_via_new_loop"):
            return  # another Orbax version: nothing to patch
        if delta > 0 and _reap_depth == 0:
            _reap_original = asyncio_utils._run_sync_via_new_loop
            asyncio_utils._run_sync_via_new_loop = _run_and_reap
        _reap_depth = max(0, _reap_depth + delta)
        if delta < 0 and _reap_depth == 0 and _reap_original is not None:
            asyncio_utils._run_sync_via_new_loop = _reap_original


@contextlib.contextmanager
def _reaping():
    _reap(+1)
    try:
        yield
    finally:
        _reap(-1)


class _QuietOrbax(logging.Filter):
    """Drops Orbax's and TensorStore's own log records (those starting with ``prefix``, if
    given) while we report a failure ourselves."""

    def __init__(self, prefix: str | None = None):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        p = record.pathname.replace("\\", "/")
        if "/orbax/" not in p and "/tensorstore/" not in p:
            return True
        return self.prefix is not None and not str(record.msg).startswith(self.prefix)


class _ShortOrbaxErrors(logging.Filter):
    """Cuts Orbax's error records to their first line, without the traceback (a failed write is
    logged by every Orbax thread that waited for it, 40 lines each; :class:`Checkpointer`
    raises the cause itself). Attached to the ``absl`` logger while a Checkpointer is open."""

    def filter(self, record: logging.LogRecord) -> bool:
        p = record.pathname.replace("\\", "/")
        if ("/orbax/" in p or "/tensorstore/" in p) and record.levelno >= logging.ERROR:
            text = record.getMessage().strip()
            first = text.splitlines()[0] if text else ""
            record.msg, record.args = first[:300], ()
            record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


_short_errors = _ShortOrbaxErrors()
_open_count = 0


def _track_open(delta: int) -> None:
    global _open_count
    with _reap_lock:
        _open_count += delta
        absl_logger = logging.getLogger("absl")
        if _open_count > 0 and _short_errors not in absl_logger.filters:
            absl_logger.addFilter(_short_errors)
        elif _open_count <= 0:
            _open_count = 0
            absl_logger.removeFilter(_short_errors)
    _reap(delta)


@contextlib.contextmanager
def _quiet_orbax(prefix: str | None = None):
    filt = _QuietOrbax(prefix)
    loggers = [logging.getLogger("absl"), logging.getLogger()]
    for lg in loggers:
        lg.addFilter(filt)
    try:
        with _reaping():
            yield
    finally:
        for lg in loggers:
            lg.removeFilter(filt)


# -- the checkpointer ------------------------------------------------------------------------
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
        keep: int = 2,
        keep_best: int = 1,
        best_metric: str = "val_accuracy",
        best_mode: str = "max",
        async_save: bool = False,
    ):
        if keep < 1:
            raise ValueError(
                f"keep must be >= 1 (the newest checkpoint is the resume point), got {keep}"
            )
        if keep_best < 0:
            raise ValueError(f"keep_best must be >= 0, got {keep_best}")
        if best_mode not in ("max", "min"):
            raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
        self.directory = os.path.abspath(os.fspath(directory))
        self.best_metric, self.best_mode = best_metric, best_mode
        self.async_save = async_save
        worst = -math.inf if best_mode == "max" else math.inf

        def rank(m) -> float:  # a checkpoint without a (finite) metric ranks last
            v = m.get(best_metric) if isinstance(m, dict) else None
            return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else worst

        policies = [pp.LatestN(n=keep)]
        if keep_best:
            policies.append(
                pp.BestN(
                    get_metric_fn=rank,
                    reverse=best_mode == "min",
                    n=keep_best,
                    keep_checkpoints_without_metrics=False,
                )
            )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=pp.AnyPreservationPolicy(policies),
            # best_fn makes Orbax write the metrics beside each checkpoint, so the best ones are
            # still known after a restart.
            best_fn=rank if keep_best else None,
            best_mode=best_mode,
            create=True,
            cleanup_tmp_directories=True,
            enable_async_checkpointing=async_save,
            # step folders made before save() returns: a directory that cannot be written fails
            # there, instead of leaving Orbax's writer threads waiting 20 minutes for it
            async_options=ocp.AsyncOptions(create_directories_asynchronously=False),
        )
        handlers = {
            "state": ocp.StandardCheckpointHandler(),
            "extra": ocp.JsonCheckpointHandler(),
            "manifest": ocp.JsonCheckpointHandler(),
        }
        try:
            with _quiet_orbax():
                self.manager = ocp.CheckpointManager(
                    self.directory, options=options, item_names=_ITEMS, item_handlers=handlers
                )
        except Exception as e:
            code, cause = _os_cause(e)
            err = CheckpointWriteError(f"cannot use {self.directory} for checkpoints: {cause}")
            err.errno = code
            raise err from None
        self._closed = False
        _track_open(+1)

    # -- saving -----------------------------------------------------------------------------
    def save(
        self,
        step: int,
        state: Any,
        *,
        metrics: dict[str, float] | None = None,
        extra: dict | None = None,
    ) -> bool:
        """Save ``state`` (with ``extra``, a JSON dict) as checkpoint ``step``.

        ``metrics`` (floats) rank the best checkpoints; a NaN/Inf metric is dropped (the
        checkpoint then ranks last). Raises :class:`NonFiniteError` (nothing written) if a
        floating leaf of ``state`` holds NaN or Inf, :class:`CheckpointWriteError` naming the
        cause if the files cannot be written, ``FileExistsError`` if ``step`` is already saved
        with other values. Returns True when written (or started, with ``async_save``), False
        when the same values are already saved as ``step``.
        """
        step = int(step)
        tree = serialization.to_state_dict(state)
        leaves = {}
        for path, x in _flatten(tree):
            a = _host(x)
            if jax.numpy.issubdtype(a.dtype, jax.numpy.inexact) and not np.isfinite(a).all():
                bad = a[~np.isfinite(a)]
                raise NonFiniteError(
                    f"refusing to save checkpoint step {step}: {path} holds "
                    f"{bad.size} non-finite value(s) (first: {bad.reshape(-1)[0]}) "
                    f"of {a.size}"
                )
            leaves[path] = {"dtype": _dtype_name(x), "shape": list(np.shape(x)), "crc32": _crc(a)}
        if extra is not None and not isinstance(extra, dict):
            raise TypeError(f"extra must be a dict, got {type(extra).__name__}")
        extra = strict_json(extra or {})
        manifest = {"format": FORMAT, "step": step, "leaves": leaves, "extra": _json_crc(extra)}
        manifest["self"] = _json_crc(manifest)
        if metrics is not None:
            metrics = {k: float(v) for k, v in metrics.items() if math.isfinite(float(v))} or None
        self.wait()  # a failed async save is reported as itself, before this one starts
        if step in self.all_steps():
            same = self._same_as_saved(step, manifest)
            if same is not None:
                return same
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(tree),
            extra=ocp.args.JsonSave(extra),
            manifest=ocp.args.JsonSave(manifest),
        )
        try:
            # (Orbax warns on every save without metrics when the best ones are tracked)
            with _quiet_orbax(prefix="Requested `tracked_metric`"):
                return bool(self.manager.save(step, args=args, metrics=metrics, force=True))
        except Exception as e:
            self._drop_partial(step)
            err = self._write_error(f"step {step}", e)
            if err.errno is None:  # not the file system: keep the traceback for debugging
                raise err from e
            raise err from None

    def _same_as_saved(self, step: int, manifest: dict) -> bool | None:
        """``step`` exists: False if it holds these values (nothing to do), None if it was
        unusable (moved aside: save it again), else ``FileExistsError``."""
        try:
            saved = self._read_manifest(step)
        except _Corrupt as c:
            self._move_aside(step, c.slug, c.reason, "saving it again")
            return None
        if saved["leaves"] == manifest["leaves"] and saved.get("extra") == manifest["extra"]:
            return False
        raise FileExistsError(
            f"checkpoint step {step} already exists in {self.directory} with other values"
        )

    def _write_error(self, what: str, e: BaseException) -> CheckpointWriteError:
        code, cause = _os_cause(e)
        what = f"checkpoint {what}" if what else "a checkpoint"
        err = CheckpointWriteError(f"could not write {what} to {self.directory}: {cause}")
        err.errno = code
        return err

    def _drop_partial(self, step: int, settle_s: float = 2.0) -> None:
        """Remove what a failed save of ``step`` left behind (it is not a checkpoint; on a
        full disk it holds the space the next save needs). Orbax's writer threads of the other
        items may still be finishing when the first error is raised: wait until the folder stays
        gone (at most ``settle_s``)."""
        if jax.process_index() != 0 or not os.path.isdir(self.directory):
            return
        deadline, quiet = time.monotonic() + settle_s, 0
        while quiet < 3 and time.monotonic() < deadline:
            found = [
                n
                for n in os.listdir(self.directory)
                if n.startswith(f"{step}.orbax-checkpoint-tmp")
            ]
            for name in found:
                shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
            quiet = 0 if found else quiet + 1
            time.sleep(0.02)

    def wait(self) -> None:
        """Block until an async save has finished (raises its error, if it failed)."""
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            step = self._pending_step()
            if step is not None:
                self._drop_partial(step)
            err = self._write_error("" if step is None else f"step {step}", e)
            if err.errno is None:  # not the file system: keep the traceback for debugging
                raise err from e
            raise err from None

    def _pending_step(self) -> int | None:
        ref = getattr(self.manager, "_finalize_thread", None)
        t = ref.get() if ref is not None else None
        return t.step() if t is not None else None

    def close(self) -> None:
        """Wait for an async save, then release Orbax's threads and files."""
        try:
            self.wait()
        finally:
            # Orbax's clean-up of old temporary folders, started when the manager opened, is
            # awaited only by a save: without one it would outlive close() (and log a traceback
            # if the directory is gone by then)
            cleanup = getattr(self.manager, "_maybe_await_cleanup_tmp_directory", None)
            if cleanup is not None:
                with contextlib.suppress(Exception), _quiet_orbax():
                    cleanup()
            self.manager.close()
            if not self._closed:
                self._closed = True
                _track_open(-1)

    # -- reading ----------------------------------------------------------------------------
    def all_steps(self) -> list[int]:
        with _quiet_orbax():
            self.manager.reload()
            return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def best_step(self) -> int | None:
        """The kept step with the best ``best_metric`` (None if none has a finite one)."""
        best, best_val = None, None
        for s in self.all_steps():
            m = self.manager.metrics(s)
            v = m.get(self.best_metric) if isinstance(m, dict) else None
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                continue
            if best_val is None or (v > best_val if self.best_mode == "max" else v < best_val):
                best, best_val = s, float(v)
        return best

    def _step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def _read_manifest(self, step: int) -> dict:
        d = self._step_dir(step)
        if not os.path.isdir(d) or not os.listdir(d):
            raise _Corrupt("empty", "the step folder is empty")
        if os.path.isdir(os.path.join(d, "default")) and not os.path.isdir(
            os.path.join(d, "manifest")
        ):
            raise _Corrupt("old-format", "written by an older jaxcnn, without checksums")
        for item in _ITEMS:
            if not os.path.isdir(os.path.join(d, item)):
                raise _Corrupt(f"no-{item}", f"its {item}/ folder is missing")
        try:
            with _quiet_orbax():
                r = self.manager.restore(
                    step, args=ocp.args.Composite(manifest=ocp.args.JsonRestore())
                )
            manifest = dict(r["manifest"])
        except Exception as e:
            if _not_the_checkpoints_fault(e):
                raise
            raise _Corrupt("unreadable", f"manifest unreadable ({_first_line(e)})") from None
        own = manifest.pop("self", None)
        try:
            ok = own == _json_crc(manifest) and manifest.get("format") == FORMAT
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise _Corrupt("checksum", "its manifest does not match its own checksum")
        return manifest

    def _move_aside(self, step: int, slug: str, reason: str, then: str) -> str:
        """Rename the step folder into ``corrupt/`` (primary process), log one line."""
        src = self._step_dir(step)
        dst_dir = os.path.join(self.directory, CORRUPT_DIR)
        dst = os.path.join(dst_dir, f"{step}.{slug}")
        if jax.process_index() == 0:
            os.makedirs(dst_dir, exist_ok=True)
            n = 1
            while os.path.exists(dst):
                dst, n = os.path.join(dst_dir, f"{step}.{slug}.{n}"), n + 1
            os.rename(src, dst)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"jaxcnn_checkpoint_move_{step}")
        log.warning(
            "checkpoint step %d in %s is unusable (%s): moved to %s; %s",
            step,
            self.directory,
            reason,
            os.path.relpath(dst, self.directory),
            then,
        )
        self.all_steps()  # let Orbax forget the step, so it can be saved again
        return dst

    def _restore_step(self, step: int, target: Any) -> tuple[Any, dict]:
        manifest = self._read_manifest(step)
        leaves = manifest.get("leaves", {})
        if target is None:
            abstract_tree = None
        else:
            self._check_structure(step, leaves, target)

            def abstract(path, x):
                s = ocp.utils.to_shape_dtype_struct(x)
                saved = leaves[path_str(path)]["dtype"]
                if _is_key(x) or saved == str(s.dtype):
                    return s
                return jax.ShapeDtypeStruct(s.shape, np.dtype(saved), sharding=s.sharding)

            abstract_tree = jax.tree_util.tree_map_with_path(abstract, target)
        try:
            with _quiet_orbax():
                r = self.manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_tree),
                        extra=ocp.args.JsonRestore(),
                    ),
                )
            tree, extra = r["state"], r["extra"]
        except Exception as e:
            if _not_the_checkpoints_fault(e):
                raise
            raise _Corrupt("unreadable", _first_line(e)) from None
        flat = _flatten(tree)
        if {p for p, _ in flat} != set(leaves):
            raise _Corrupt("unreadable", "the restored tree differs from its manifest")
        for path, x in flat:
            if _crc(_host(x)) != leaves[path]["crc32"]:
                raise _Corrupt("checksum", f"checksum mismatch in {path}")
        extra = {} if extra is None else dict(extra)
        if _json_crc(extra) != manifest.get("extra"):
            raise _Corrupt("checksum", "checksum mismatch in extra")
        if target is None:
            return tree, extra

        def cast(x, t):
            if _is_key(t) or not hasattr(t, "dtype") or x.dtype == t.dtype:
                return x
            return x.astype(t.dtype)

        return jax.tree.map(cast, tree, target), extra

    def _check_structure(self, step: int, leaves: dict, target: Any) -> None:
        want = {p: list(np.shape(x)) for p, x in _flatten(target)}
        have = {p: v["shape"] for p, v in leaves.items()}
        if want == have:
            return
        diff = []  # parameters first: the optimizer state mirrors them
        for p in sorted(set(want) | set(have), key=lambda p: (not p.startswith("params"), p)):
            if p not in have:
                diff.append(f"{p} missing in the checkpoint")
            elif p not in want:
                diff.append(f"{p} not in the template")
            elif have[p] != want[p]:
                diff.append(
                    f"{p}: shape {tuple(have[p])} in the checkpoint, {tuple(want[p])} in the "
                    "template"
                )
        more = f" (and {len(diff) - 5} more)" if len(diff) > 5 else ""
        raise CheckpointMismatchError(
            f"checkpoint step {step} in {self.directory} holds another tree than the template "
            f"(another model, optimizer or num_classes?): " + "; ".join(diff[:5]) + more
        )

    def restore(self, template: Any, step: int | None = None) -> Restored:
        """Restore into the structure of ``template`` (a state with the right shapes).

        Without ``step``, tries the newest checkpoint first; one that is unreadable or fails its
        checksums is moved to ``<directory>/corrupt/`` (one warning line) and the next older one
        is tried. Returns ``Restored(state, step, extra)``. ``template=None`` returns the saved
        tree as it was written (nested dicts of arrays, e.g. to read parameters without
        building the optimizer). Raises ``FileNotFoundError`` when there is no checkpoint,
        :class:`CheckpointMismatchError` when the template does not match the saved tree (the
        checkpoint is left in place), :class:`CorruptCheckpointError` when the requested step
        (or every step) was unusable.
        """
        candidates = self._candidates(step)
        target = None if template is None else serialization.to_state_dict(template)
        failed = []
        for i, s in enumerate(candidates):
            try:
                tree, extra = self._restore_step(s, target)
            except _Corrupt as c:
                failed.append(self._give_up_on(s, c, candidates[i + 1 :], step))
                continue
            if template is not None:
                tree = serialization.from_state_dict(template, tree)
            return Restored(tree, s, extra)
        raise self._all_failed(failed, step)

    def read_extra(self, step: int | None = None) -> dict | None:
        """The ``extra`` dict of ``step`` (default: the newest usable checkpoint), verified
        against its checksum, without reading the arrays; None when there is no checkpoint.
        Unusable steps are moved aside as in :meth:`restore`."""
        if step is None and not self.all_steps():
            return None
        candidates = self._candidates(step)
        failed = []
        for i, s in enumerate(candidates):
            try:
                manifest = self._read_manifest(s)
                try:
                    with _quiet_orbax():
                        r = self.manager.restore(
                            s, args=ocp.args.Composite(extra=ocp.args.JsonRestore())
                        )
                    extra = {} if r["extra"] is None else dict(r["extra"])
                except Exception as e:
                    if _not_the_checkpoints_fault(e):
                        raise
                    raise _Corrupt("unreadable", f"extra unreadable ({_first_line(e)})") from None
                if _json_crc(extra) != manifest.get("extra"):
                    raise _Corrupt("checksum", "checksum mismatch in extra")
                return extra
            except _Corrupt as c:
                failed.append(self._give_up_on(s, c, candidates[i + 1 :], step))
        raise self._all_failed(failed, step)

    def _give_up_on(self, step: int, c: _Corrupt, older: list[int], requested) -> str:
        if requested is not None:
            then = "not trying others (this step was requested)"
        else:
            then = f"trying step {older[0]}" if older else "no older checkpoint left"
        dst = self._move_aside(step, c.slug, c.reason, then)
        return f"step {step}: {c.reason} (moved to {dst})"

    def _all_failed(self, failed: list[str], requested) -> CorruptCheckpointError:
        what = "no usable checkpoint" if requested is None else "unusable checkpoint"
        return CorruptCheckpointError(f"{what} in {self.directory}: " + "; ".join(failed))

    def _candidates(self, step: int | None) -> list[int]:
        steps = self.all_steps()
        if not steps:
            raise FileNotFoundError(f"no checkpoint to restore in {self.directory}")
        if step is None:
            return steps[::-1]
        if int(step) not in steps:
            raise FileNotFoundError(
                f"checkpoint step {step} not in {self.directory}; available: {steps}"
            )
        return [int(step)]
