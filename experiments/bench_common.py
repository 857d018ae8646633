"""Helpers shared by the benchmark scripts: the machine line, XLA's FLOP count, the optional
PyTorch import, PyTorch counterparts of jaxcnn models, a worker in another Python, and the
Markdown table and JSON file the scripts write.

Nothing here imports jax or torch at import time: a Python with torch but without jax (the
usual PyTorch reference venv) imports this module to serve as a worker
(:func:`serve`), and jaxcnn never depends on torch.

The worker protocol is one JSON object per line: the client (:class:`WorkerProxy`, in jaxcnn's
Python) writes ``{"method": name, "kwargs": {...}}`` on the worker's stdin; the worker calls
that public method of its object and writes ``{"result": value}`` or ``{"error": message}`` on
its stdout (anything else the worker prints goes to stderr). End of input ends the worker.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_ABSENT = (
    "PyTorch not installed: jaxcnn column only; install torch torchvision in a separate venv "
    "to compare"
)


def uptime() -> str:
    """``uptime``'s line (load averages), or the load averages when the command is missing."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "load average: " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def machine_line(**versions) -> str:
    """One line: load, CPU count, Python and the given library versions (``name=version``)."""
    libs = ", ".join(f"{k} {v}" for k, v in versions.items() if v)
    return (
        f"{platform.node()} ({platform.machine()}), {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, {libs}; {uptime()}"
    )


def cell(value, fmt: str) -> str:
    """A table cell: ``value`` formatted with ``fmt``, or ``-`` for None."""
    return "-" if value is None else format(value, fmt)


def markdown_table(head, align: str, rows) -> str:
    """A Markdown table: the titles ``head``, one ``l`` (left) or ``r`` (right) per column in
    ``align``, and ``rows`` (lists of cell strings)."""

    def line(cells):
        return "| " + " | ".join(cells) + " |"

    sep = "|" + "".join("---:|" if a == "r" else "---|" for a in align)
    return "\n".join([line(head), sep] + [line(r) for r in rows])


def write_json(path: str, meta: dict, rows) -> None:
    """Write ``{"meta": meta, "rows": rows}`` to ``path``, creating its folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)


def compiled_flops(compiled) -> float | None:
    """FLOPs of a compiled JAX program from XLA's cost analysis (a multiply-add counts 2).

    ``jax.jit(f).lower(...).compile().cost_analysis()`` is a dict in jax 0.10 (a list with one
    dict per program in older versions); None when the backend gives no positive count."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
    flops = float(cost.get("flops", 0.0)) if cost else 0.0
    return flops if flops > 0 else None


def import_torch():
    """``(torch, torchvision)``, or None when either is missing (tests replace this to
    simulate a Python without PyTorch)."""
    try:
        import torch
        import torchvision
    except ImportError:
        return None
    return torch, torchvision


def torch_resnet18_cifar(in_channels: int = 3, num_classes: int = 10):
    """torchvision ResNet-18 with jaxcnn's ``resnet18_cifar`` stem: 3x3 stride-1 conv without
    bias, no max pool (same parameter count)."""
    import torch
    import torchvision

    m = torchvision.models.resnet18(num_classes=num_classes)
    m.conv1 = torch.nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
    m.maxpool = torch.nn.Identity()
    return m


# ------------------------------------------------------------------------ worker in another Python
class WorkerError(RuntimeError):
    """The worker's method raised; the message is the worker's."""


class WorkerProxy:
    """Calls the public methods of an object served by :func:`serve` in another Python:
    ``proxy.name(**kwargs)`` sends one request line and returns the reply's ``result``.

    Starts ``python -m module *args`` with the repository root on ``PYTHONPATH`` (the other
    Python needs neither jax nor jaxcnn's dependencies, only what ``module`` imports)."""

    def __init__(self, python: str, module: str, args=()):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
        self.python = python
        self.proc = subprocess.Popen(
            [python, "-m", module, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    def call(self, method: str, **kwargs):
        """One request, one reply; raises :class:`WorkerError` if the method raised and
        RuntimeError if the worker is gone."""
        try:
            self.proc.stdin.write(json.dumps({"method": method, "kwargs": kwargs}) + "\n")
            self.proc.stdin.flush()
        except (OSError, ValueError):
            pass  # a worker that is gone: reported below from its exit status
        line = self.proc.stdout.readline() if not self.proc.stdout.closed else ""
        if not line:
            status = self.proc.wait()
            raise RuntimeError(f"the worker in {self.python} exited (status {status})")
        reply = json.loads(line)
        if "error" in reply:
            raise WorkerError(reply["error"])
        return reply["result"]

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda **kwargs: self.call(name, **kwargs)

    def close(self):
        """End the worker (closing its input ends its loop)."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def serve(obj) -> int:
    """Answer :class:`WorkerProxy` requests on stdin/stdout with ``obj``'s public methods until
    stdin ends. Output of the methods themselves goes to stderr."""
    out, sys.stdout = sys.stdout, sys.stderr
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        method = req.get("method", "")
        try:
            if method.startswith("_") or not callable(getattr(obj, method, None)):
                raise AttributeError(f"no method {method!r}")
            reply = {"result": getattr(obj, method)(**req.get("kwargs", {}))}
        except Exception as e:  # reported to the client, which raises it
            reply = {"error": f"{type(e).__name__}: {e}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()
    return 0


def add_torch_python_args(p: argparse.ArgumentParser) -> None:
    """``--torch-python`` (default ``$JAXCNN_TORCH_PYTHON``) and the hidden ``--torch-worker``
    with which :func:`open_torch_side` starts the script in that Python."""
    p.add_argument(
        "--torch-python",
        default=os.environ.get("JAXCNN_TORCH_PYTHON"),
        help="a Python with torch and torchvision, for the PyTorch side when this one has none "
        "(default $JAXCNN_TORCH_PYTHON)",
    )
    p.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)


def open_torch_side(local, python: str | None, module: str, **hello):
    """``(side, versions)``: the PyTorch side ``local`` of this Python (None when it has no
    PyTorch), else ``python -m module --torch-worker`` behind a :class:`WorkerProxy`, and what
    its ``hello(**hello)`` returns; ``(None, None)`` after printing :data:`TORCH_ABSENT` (and
    why) when neither is there or ``hello`` fails."""
    if local is not None:
        side = local
    elif python:
        side = WorkerProxy(python, module, ["--torch-worker"])
    else:
        print(TORCH_ABSENT, flush=True)
        return None, None
    try:
        return side, side.hello(**hello)
    except Exception as e:
        if isinstance(side, WorkerProxy):
            side.close()
        print(f"{TORCH_ABSENT} ({python}: {e})", flush=True)
        return None, None
