"""TensorBoard scalars: a writer (tensorboardX, the optional ``tensorboard`` extra) and a reader.

``TensorBoardWriter(logdir)`` has clu's ``metric_writers`` interface (``write_scalars(step,
scalars)``, ``flush``, ``close``) and writes an ``events.out.tfevents.*`` file that TensorBoard
reads. :func:`read_scalars` reads the scalars back from such files without TensorFlow (the
TFRecord framing plus tensorboardX's ``Event`` protobuf), for tests and for scripts that compare
runs. Write from one process only (``jax.process_index() == 0``).
"""

from __future__ import annotations

import glob
import os
import struct
from typing import Mapping

from jaxcnn.utils import optional_import

__all__ = ["TensorBoardWriter", "read_scalars"]


class TensorBoardWriter:
    """Scalars to TensorBoard event files in ``logdir`` (created if missing)."""

    def __init__(self, logdir: str, *, flush_secs: int = 30):
        SummaryWriter = optional_import("tensorboardX", "TensorBoard logging").SummaryWriter
        os.makedirs(logdir, exist_ok=True)
        self.logdir = logdir
        self._writer = SummaryWriter(logdir=logdir, flush_secs=flush_secs)

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        """One value per tag at ``step`` (tags like ``"train/loss"`` group in TensorBoard)."""
        for tag, value in scalars.items():
            self._writer.add_scalar(tag, float(value), global_step=int(step))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> "TensorBoardWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _records(path: str):
    # TFRecord framing: uint64 length, uint32 masked CRC of the length, data, uint32 CRC.
    with open(path, "rb") as f:
        while True:
            header = f.read(12)
            if len(header) < 12:
                return
            (length,) = struct.unpack("<Q", header[:8])
            data = f.read(length)
            f.read(4)
            if len(data) < length:  # a file still being written: stop at the partial record
                return
            yield data


def read_scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` from every event file in ``logdir`` (or one file), in
    file order."""
    Event = optional_import("tensorboardX.proto.event_pb2", "reading TensorBoard files").Event
    files = (
        [logdir]
        if os.path.isfile(logdir)
        else sorted(glob.glob(os.path.join(logdir, "**", "events.out.tfevents.*"), recursive=True))
    )
    if not files:
        raise FileNotFoundError(f"no TensorBoard event file in {logdir}")
    out: dict[str, list[tuple[int, float]]] = {}
    for path in files:
        for data in _records(path):
            event = Event.FromString(data)
            for v in event.summary.value:
                if v.HasField("simple_value"):
                    out.setdefault(v.tag, []).append((int(event.step), float(v.simple_value)))
                elif v.HasField("tensor") and v.tensor.float_val:
                    out.setdefault(v.tag, []).append(
                        (int(event.step), float(v.tensor.float_val[0]))
                    )
    return out
