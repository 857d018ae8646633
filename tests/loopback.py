"""Worker processes of this repository on loopback, for the tests that start them
(tests/test_distributed.py, tests/test_data_distributed.py): a free port for
``jax.distributed``, the workers' environment, and running them to the end."""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env(**extra) -> dict:
    """This environment with the repository root on ``PYTHONPATH``, without ``XLA_FLAGS``,
    then ``extra``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.pop("XLA_FLAGS", None)
    env.update(extra)
    return env


def run_workers(cmds, log_dir, timeout: float = 180) -> tuple[list[int], list[str]]:
    """Start every command at once (in the repository root, :func:`worker_env`, stdout and
    stderr to ``log_dir/p{i}.log``), wait up to ``timeout`` seconds for each, kill those still
    running on the way out; their exit statuses and output."""
    procs, logs = [], []
    try:
        for i, cmd in enumerate(cmds):
            log = open(pathlib.Path(log_dir) / f"p{i}.log", "w+")
            logs.append(log)
            procs.append(
                subprocess.Popen(
                    cmd, cwd=ROOT, env=worker_env(), stdout=log, stderr=subprocess.STDOUT
                )
            )
        for p in procs:
            p.wait(timeout=timeout)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
    text = []
    for log in logs:
        log.seek(0)
        text.append(log.read())
        log.close()
    return [p.returncode for p in procs], text
