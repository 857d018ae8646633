"""grain iterators over random-access sources: exact epochs, resumable state, per-process rows.

Training (:func:`train_iterator`): epoch ``e`` visits the examples in the permutation
``default_rng([seed, e]).permutation(N)``; global batch ``b`` of the epoch is positions
``b*B .. (b+1)*B`` of it; the last ``N % B`` examples of each epoch are dropped, so no batch
spans two epochs. Process ``p`` of ``P`` reads and yields only rows ``p*B/P .. (p+1)*B/P`` of
every global batch, so the global sequence of examples is the same for any number of processes
(and of worker processes): per epoch the processes' examples are disjoint and together cover
the epoch. Random transforms draw from ``default_rng([seed, epoch, id])``: an example's
augmentation depends on nothing else. The iterator's state is the number of global batches
consumed (plus what it must match), a small JSON dict.

Batches are built in grain's ``MapDataset`` (``MapDataset.range(...).map(load_batch)``), read
ahead by a background thread, and with ``num_workers > 0`` in that many worker processes
(``mp_prefetch``), each building whole batches, yielded in order.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np

__all__ = [
    "train_iterator",
    "eval_iterator",
    "steps_per_epoch",
    "num_eval_batches",
    "TrainIterator",
    "EvalIterator",
    "EpochOrder",
]

_FOREVER = 2**62
_STATE_VERSION = 1


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
    """Training steps per epoch: ``num_examples // global_batch_size`` (the remainder is
    dropped each epoch); ``ValueError`` when the batch is larger than the split."""
    if global_batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {global_batch_size}")
    steps = num_examples // global_batch_size
    if steps == 0:
        raise ValueError(
            f"batch size {global_batch_size} is larger than the {num_examples} training examples"
        )
    return steps


def num_eval_batches(num_examples: int, batch_size: int) -> int:
    """Evaluation batches for one pass: ``ceil(num_examples / batch_size)``."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    return math.ceil(num_examples / batch_size)


def _rows(global_batch_size, process_index, process_count) -> tuple[int, int]:
    """``(first row, rows)`` of this process in each global batch."""
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} outside 0..{process_count - 1}")
    if global_batch_size % process_count:
        raise ValueError(
            f"global batch size {global_batch_size} does not divide by the {process_count} "
            f"processes"
        )
    local = global_batch_size // process_count
    return process_index * local, local


def _example_rng(seed: int, epoch: int, example_id: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, example_id])


class EpochOrder:
    """The training order of the module docstring: global batch ``k`` (of ``global_batch_size``)
    is batch ``k % steps`` of epoch ``k // steps``, which visits the ``n`` examples in the
    permutation ``default_rng([seed, epoch]).permutation(n)``, the last ``n % global_batch_size``
    dropped. Keeps the latest epoch's permutation (not pickled)."""

    def __init__(self, n: int, global_batch_size: int, seed: int):
        self.n, self.batch, self.seed = int(n), int(global_batch_size), int(seed)
        self.steps = steps_per_epoch(self.n, self.batch)
        self._perm: tuple[int | None, np.ndarray | None] = (None, None)

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_perm"] = (None, None)
        return d

    def global_batch(self, k: int) -> tuple[int, np.ndarray]:
        """``(epoch, example indices)`` of global batch ``k``."""
        epoch, b = divmod(int(k), self.steps)
        perm_epoch, perm = self._perm
        if perm is None or perm_epoch != epoch:
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            self._perm = (epoch, perm)
        return epoch, perm[b * self.batch : (b + 1) * self.batch]


class _TrainBatches(EpochOrder):
    """``plan(k)``: this process's rows of global training batch ``k`` (picklable: what a grain
    worker process receives)."""

    def __init__(self, source, pre, global_batch_size, seed, row0, rows):
        super().__init__(len(source), global_batch_size, seed)
        self.source, self.pre = source, pre
        self.row0, self.rows = row0, rows

    def indices(self, k: int) -> tuple[int, np.ndarray]:
        """``(epoch, source indices)`` of this process's rows of global batch ``k``."""
        epoch, idx = self.global_batch(k)
        return epoch, idx[self.row0 : self.row0 + self.rows]

    def __call__(self, k: int) -> dict:
        epoch, idx = self.indices(k)
        images = np.empty((len(idx), *self.pre.size, self.pre.channels), np.float32)
        labels = np.empty(len(idx), np.int32)
        ids = np.empty(len(idx), np.int64)
        for j, i in enumerate(idx):
            ex = self.source[int(i)]
            images[j] = self.pre(ex["image"], _example_rng(self.seed, epoch, int(ex["id"])))
            labels[j], ids[j] = ex["label"], ex["id"]
        return {"image": images, "label": labels, "id": ids}


class _EvalBatches:
    """``plan(k)``: this process's rows of global evaluation batch ``k``, zero-padded past the
    end with ``mask`` 0 (label 0, id -1)."""

    def __init__(self, source, pre, batch_size, row0, rows):
        self.source, self.pre, self.n = source, pre, len(source)
        self.batch, self.row0, self.rows = int(batch_size), row0, rows

    def __call__(self, k: int) -> dict:
        images = np.zeros((self.rows, *self.pre.size, self.pre.channels), np.float32)
        labels = np.zeros(self.rows, np.int32)
        ids = np.full(self.rows, -1, np.int64)
        mask = np.zeros(self.rows, np.float32)
        start = int(k) * self.batch + self.row0
        for j, pos in enumerate(range(start, min(start + self.rows, self.n))):
            ex = self.source[pos]
            images[j] = self.pre(ex["image"])
            labels[j], ids[j], mask[j] = ex["label"], ex["id"], 1.0
        return {"image": images, "label": labels, "id": ids, "mask": mask}


def _grain_iter(plan, start: int, stop: int, num_workers: int, prefetch: int) -> Iterator[dict]:
    import grain

    ds = grain.MapDataset.range(start, stop).map(plan)
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=prefetch))
    if num_workers > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # grain's worker start-up reads absl flags unguarded
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=prefetch)
        )
    return iter(it)


class TrainIterator:
    """Infinite iterator of training batches ``{"image" float32 (b, H, W, C), "label" int32,
    "id" int64}`` (``b`` = this process's rows). See the module docstring; build it with
    :func:`train_iterator`."""

    def __init__(
        self,
        source,
        pre,
        global_batch_size: int,
        *,
        seed: int = 0,
        num_workers: int = 0,
        process_index: int | None = None,
        process_count: int | None = None,
        state: dict | None = None,
        prefetch: int = 2,
    ):
        if int(seed) < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        row0, rows = _rows(global_batch_size, process_index, process_count)
        self._plan = _TrainBatches(source, pre, global_batch_size, seed, row0, rows)
        self.num_workers, self.prefetch = int(num_workers), max(1, int(prefetch))
        self._next = 0
        self._it: Iterator[dict] | None = None
        if state is not None:
            self.set_state(state)

    @property
    def steps_per_epoch(self) -> int:
        return self._plan.steps

    @property
    def epoch(self) -> int:
        """The epoch of the next batch."""
        return self._next // self._plan.steps

    @property
    def step(self) -> int:
        """Global batches yielded so far (and restored)."""
        return self._next

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self._it is None:
            self._it = _grain_iter(
                self._plan, self._next, _FOREVER, self.num_workers, self.prefetch
            )
        batch = next(self._it)
        self._next += 1
        return batch

    def get_state(self) -> dict:
        """A JSON-serialisable dict: restoring it (``set_state`` or ``state=``) continues with
        exactly the batches an uninterrupted iterator would yield next (for any number of
        worker processes, and of hosts: the state is global)."""
        p = self._plan
        return {
            "version": _STATE_VERSION,
            "next_batch": self._next,
            "epoch": self._next // p.steps,
            "batch_in_epoch": self._next % p.steps,
            "seed": p.seed,
            "global_batch_size": p.batch,
            "num_examples": p.n,
        }

    def set_state(self, state: dict) -> None:
        p = self._plan
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"iterator state version {state.get('version')!r} is not supported")
        want = {"seed": p.seed, "global_batch_size": p.batch, "num_examples": p.n}
        diff = {k: (state.get(k), v) for k, v in want.items() if state.get(k) != v}
        if diff:
            raise ValueError(
                "iterator state does not match this iterator: "
                + ", ".join(f"{k} saved {a!r} vs now {b!r}" for k, (a, b) in diff.items())
            )
        self.close()
        self._next = int(state["next_batch"])

    def close(self) -> None:
        """Stop the read-ahead thread and worker processes (a later ``next`` restarts them)."""
        it, self._it = self._it, None
        if it is not None and hasattr(it, "close"):
            it.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 (interpreter shutdown)
            pass


def train_iterator(
    source,
    pre,
    global_batch_size: int,
    *,
    seed: int = 0,
    num_workers: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    state: dict | None = None,
    prefetch: int = 2,
) -> TrainIterator:
    """Infinite training batches of ``source`` transformed by ``pre`` (train mode) with exact
    epochs, this process's rows of each global batch (default: ``jax.process_index()`` of
    ``jax.process_count()``), resumable through ``get_state``/``set_state`` (or ``state=``).
    ``prefetch``: batches read ahead (per worker process when ``num_workers > 0``)."""
    return TrainIterator(
        source,
        pre,
        global_batch_size,
        seed=seed,
        num_workers=num_workers,
        process_index=process_index,
        process_count=process_count,
        state=state,
        prefetch=prefetch,
    )


class EvalIterator:
    """One pass over ``source`` in batches of fixed shape (see :func:`eval_iterator`);
    ``len()`` is the number of batches; iterable more than once."""

    def __init__(
        self,
        source,
        pre,
        batch_size,
        *,
        num_workers=0,
        process_index=None,
        process_count=None,
        prefetch=2,
    ):
        row0, rows = _rows(batch_size, process_index, process_count)
        self._plan = _EvalBatches(source, pre, batch_size, row0, rows)
        self._len = num_eval_batches(len(source), batch_size)
        self.num_workers, self.prefetch = int(num_workers), max(1, int(prefetch))

    def __len__(self) -> int:
        return self._len

    def __iter__(self):
        it = _grain_iter(self._plan, 0, self._len, self.num_workers, self.prefetch)
        try:
            yield from it
        finally:
            if hasattr(it, "close"):
                it.close()


def eval_iterator(
    source,
    pre,
    batch_size: int,
    *,
    num_workers: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    prefetch: int = 2,
) -> EvalIterator:
    """One pass over ``source`` (``pre`` in eval mode) in global batches of ``batch_size``:
    ``{"image", "label", "id", "mask"}``, the last batch zero-padded with ``mask`` 0 (id -1);
    this process's rows of each global batch. Every process yields the same number of
    batches."""
    return EvalIterator(
        source,
        pre,
        batch_size,
        num_workers=num_workers,
        process_index=process_index,
        process_count=process_count,
        prefetch=prefetch,
    )
