"""Data parallelism over devices and hosts with JAX's own runtime: a ``Mesh`` with one ``data``
axis, ``NamedSharding`` for the batch (split along ``data``) and the state (replicated), and
``jax.distributed`` for several processes.

The same jit-compiled step runs on 1 CPU, 8 GPUs or a multi-host TPU slice: the step is written
for the *global* batch, and ``jax.jit`` with these shardings lets XLA (GSPMD) partition it. Means
over the batch axis become cross-device all-reduces, so gradients are averaged over the global
batch and BatchNorm's batch statistics are the global-batch statistics (synchronised BatchNorm)
with no ``axis_name``: 8 devices with 8*b examples compute what 1 device computes with the same
8*b examples (to float rounding).

Typical use (what :func:`jaxcnn.train.fit` does)::

    mesh.initialize_distributed()        # no-op for one process; reads JAX_COORDINATOR_ADDRESS ...
    dp = mesh.setup(config)              # DataParallel(mesh, data, replicated); checks batch sizes
    state = dp.replicate(create_train_state(...))
    step = make_train_step(..., mesh=dp)
    for batch in dp.batches(x, y, batch_size, shuffle=True, epoch=e, drop_remainder=True):
        state, metrics = step(state, batch)

With several processes each process reads only its own rows of every global batch
(:meth:`DataParallel.batches`) and :func:`jax.make_array_from_process_local_data` assembles the
global array without moving data between hosts.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
from typing import Any, Iterator, NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxcnn.data.pipeline import batches as _batches

__all__ = [
    "DATA_AXIS",
    "DataParallel",
    "initialize_distributed",
    "make_mesh",
    "setup",
    "check_batch_size",
    "is_main_process",
    "quiet_non_main_processes",
]

DATA_AXIS = "data"
log = logging.getLogger(__name__)

_ENV = {
    "coordinator_address": "JAX_COORDINATOR_ADDRESS",
    "num_processes": "JAX_NUM_PROCESSES",
    "process_id": "JAX_PROCESS_ID",
}


# -- processes ------------------------------------------------------------------------------
def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    auto: bool | None = None,
    **kwargs,
) -> bool:
    """Start JAX's distributed runtime when this is one process of several; returns whether the
    run is multi-process. Call it first, before anything touches a device.

    Arguments override the environment ``JAX_COORDINATOR_ADDRESS`` (``host:port`` of process 0),
    ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` (and ``JAX_LOCAL_DEVICE_IDS``, read by JAX).
    ``auto=True`` (or ``JAXCNN_DISTRIBUTED=auto``) calls ``jax.distributed.initialize()`` with
    nothing set, so JAX detects the cluster itself (Cloud TPU slices, SLURM, Open MPI,
    Kubernetes). With neither, nothing happens (single process). CPU processes use the gloo
    collectives (JAX's default, set explicitly here).
    """
    if jax.distributed.is_initialized():
        return jax.process_count() > 1
    given: dict[str, Any] = {
        "coordinator_address": coordinator_address,
        "num_processes": num_processes,
        "process_id": process_id,
    }
    for k, env in _ENV.items():
        if given[k] is None and os.environ.get(env):
            given[k] = os.environ[env] if k == "coordinator_address" else int(os.environ[env])
    if auto is None:
        auto = os.environ.get("JAXCNN_DISTRIBUTED", "").lower() in ("1", "auto", "true")
    if given["coordinator_address"] is None and not auto:
        if given["num_processes"] not in (None, 1):
            raise ValueError(
                f"num_processes={given['num_processes']} needs a coordinator "
                f"address (host:port of process 0): pass coordinator_address or "
                f"set JAX_COORDINATOR_ADDRESS"
            )
        return False
    if given["coordinator_address"] is not None:
        missing = [_ENV[k] for k in ("num_processes", "process_id") if given[k] is None]
        if missing and not auto:
            raise ValueError(
                f"a coordinator address is set but {' and '.join(missing)} is not; "
                f"every process needs the process count and its own id"
            )
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**{k: v for k, v in given.items() if v is not None}, **kwargs)
    log.info(
        "jax.distributed: process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return jax.process_count() > 1


def is_main_process() -> bool:
    """True on process 0: the one that logs, prints and writes metrics/plots."""
    return jax.process_index() == 0


def quiet_non_main_processes() -> None:
    """Raise the log level of processes other than 0 to ERROR (logs come from process 0)."""
    if not is_main_process():
        logging.getLogger().setLevel(logging.ERROR)
        try:
            from absl import logging as absl_logging

            absl_logging.set_verbosity(absl_logging.ERROR)
        except ImportError:  # pragma: no cover
            pass


# -- mesh and shardings ---------------------------------------------------------------------
def make_mesh(num_devices: int | None = None, devices=None) -> Mesh:
    """A 1-D mesh with axis ``data`` over ``devices`` (default: all devices of all processes,
    in JAX's topology-aware order), or over the first ``num_devices`` (single process only)."""
    all_devices = list(devices) if devices is not None else jax.devices()
    n = num_devices or len(all_devices)
    if not 1 <= n <= len(all_devices):
        raise ValueError(
            f"num_devices={num_devices} but only {len(all_devices)} devices are "
            f"present ({all_devices[0].platform})"
        )
    if n < len(all_devices) and jax.process_count() > 1:
        raise ValueError(
            f"num_devices={n} uses a subset of the {len(all_devices)} devices; "
            f"a multi-process run must use all of them"
        )
    # Auto axis type: XLA (GSPMD) propagates shardings through the step; jax.make_mesh's default
    # in recent JAX is Explicit (sharding in types), which flax layers do not all support.
    auto = (jax.sharding.AxisType.Auto,)
    if devices is None and n == len(all_devices):
        return jax.make_mesh((n,), (DATA_AXIS,), axis_types=auto, devices=all_devices)
    return Mesh(np.asarray(all_devices[:n]), (DATA_AXIS,), axis_types=auto)


def check_batch_size(batch_size: int, num_devices: int, what: str = "batch_size") -> None:
    """ValueError unless the global ``batch_size`` splits evenly over ``num_devices``."""
    if batch_size % num_devices:
        lo = batch_size // num_devices * num_devices
        hint = f"{lo} or {lo + num_devices}" if lo else f"{num_devices}"
        raise ValueError(
            f"{what}={batch_size} does not divide by the {num_devices} devices of "
            f"the data axis; use a multiple of {num_devices} (e.g. {hint})"
        )


def _prefetch(iterator, put, size: int):
    queue = collections.deque(put(b) for b in itertools.islice(iterator, size))
    for b in iterator:
        queue.append(put(b))
        yield queue.popleft()
    while queue:
        yield queue.popleft()


class DataParallel(NamedTuple):
    """A data-parallel mesh and its two shardings; unpacks as ``mesh, data, replicated``."""

    mesh: Mesh
    data: NamedSharding  # leading (batch) dimension split along ``data``
    replicated: NamedSharding  # a full copy on every device

    @classmethod
    def create(cls, num_devices: int | None = None, devices=None) -> "DataParallel":
        m = make_mesh(num_devices, devices)
        return cls(m, NamedSharding(m, P(DATA_AXIS)), NamedSharding(m, P()))

    @property
    def num_devices(self) -> int:
        return self.mesh.shape[DATA_AXIS]

    def check_batch_size(self, batch_size: int, what: str = "batch_size") -> None:
        check_batch_size(batch_size, self.num_devices, what)

    def replicate(self, tree: Any) -> Any:
        """Copy a pytree (the ``TrainState``) to every device of the mesh. Every process must
        pass the same values (same seed)."""
        if jax.process_count() == 1:
            return jax.device_put(tree, self.replicated)

        def put(x):
            x = np.asarray(jax.device_get(x))
            return jax.make_array_from_callback(x.shape, self.replicated, lambda idx: x[idx])

        return jax.tree.map(put, tree)

    def process_rows(self, batch_size: int) -> slice:
        """The rows of a global batch that live on this process's devices."""
        self.check_batch_size(batch_size)
        spans = sorted(
            {
                (i[0].start or 0, i[0].stop if i[0].stop is not None else batch_size)
                for i in self.data.addressable_devices_indices_map((batch_size,)).values()
                if i is not None  # jax annotates the indices as optional
            }
        )
        start, stop = spans[0][0], spans[-1][1]
        if sum(b - a for a, b in spans) != stop - start:
            raise ValueError(
                "this process's devices do not hold a contiguous block of the "
                "batch; build the mesh with make_mesh() (process-major order)"
            )
        return slice(start, stop)

    def shard(self, local_batch: Any) -> Any:
        """Global arrays, sharded along ``data``, from this process's rows (numpy). With one
        process the local batch *is* the global batch."""

        def put(x):
            self.check_batch_size(x.shape[0] * jax.process_count(), "global batch")
            return jax.make_array_from_process_local_data(self.data, np.asarray(x))

        return jax.tree.map(put, local_batch)

    def batches(
        self, images: np.ndarray, labels: np.ndarray, batch_size: int, prefetch: int = 2, **kwargs
    ) -> Iterator[dict]:
        """:func:`jaxcnn.data.batches` of *global* size ``batch_size`` (same order, same
        padding/mask), as sharded global arrays prefetched to the devices. Each process indexes
        only its own rows of ``images`` (which may be a memory map), so no process loads the
        whole batch."""
        rows = self.process_rows(batch_size)
        index = np.arange(len(labels))

        def local():
            for b in _batches(index, labels, batch_size, **kwargs):
                idx = b["image"][rows]
                yield {"image": images[idx], "label": b["label"][rows], "mask": b["mask"][rows]}

        return _prefetch(local(), self.shard, prefetch)


def setup(config: Any = None, num_devices: int | None = None) -> DataParallel:
    """The data-parallel mesh for a ``fit`` config: ``num_devices`` (0 or missing: all), and a
    ValueError now, before anything compiles, when ``batch_size``/``eval_batch_size`` do not divide
    by the device count (or ``batch_size`` by ``grad_accum_steps`` times the device count)."""
    c = {} if config is None else (config.to_dict() if hasattr(config, "to_dict") else dict(config))
    dp = DataParallel.create(num_devices or c.get("num_devices") or None)
    k = int(c.get("grad_accum_steps") or 1)
    if "batch_size" in c:
        bs = int(c["batch_size"])
        if bs % k:
            raise ValueError(
                f"batch_size={bs} does not divide into grad_accum_steps={k} micro-batches"
            )
        dp.check_batch_size(
            bs // k,
            "batch_size"
            if k == 1
            else f"micro-batch size (batch_size {bs} / grad_accum_steps {k})",
        )
    if "eval_batch_size" in c:
        dp.check_batch_size(int(c["eval_batch_size"]), "eval_batch_size")
    return dp
