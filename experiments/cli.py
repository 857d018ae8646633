"""The command line shared by the experiments: a config file, ``--config.KEY=VALUE`` overrides
for any key of the task's schema, ``--workdir``, ``--resume``, the scale-out flags, and errors
as one line (no traceback) for what the user can fix: config, resume, divergence, data.

    python -m experiments.train --config experiments/configs/lenet_mnist.py \\
        --config.epochs=3 --workdir runs/short --resume
    python -m experiments.train --help_config        # every key with its default and meaning
"""

from __future__ import annotations

import argparse
import errno
import importlib.util
import os
import pathlib
import sys
from collections.abc import Callable, Sequence

CONFIGS = pathlib.Path(__file__).parent / "configs"

# What a user can fix from the message alone: printed as one line, exit status 2 (config)
# or 1 (the rest).
_USER_ERRORS = ("ConfigError", "ResumeError", "NonFiniteError", "DataError", "UnknownModelError")


def load_config_file(path: str) -> dict:
    """``get_config()`` of a Python config file, as a plain dict; ``FILE.py:ARG`` calls
    ``get_config(ARG)`` (ml_collections' convention)."""
    path, _, arg = path.partition(":")
    p = pathlib.Path(path)
    if not p.is_file():
        from jaxcnn.train.config import ConfigError

        raise ConfigError(f"--config {path}: no such file")
    spec = importlib.util.spec_from_file_location(f"_config_{p.stem}", p)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config(arg) if arg else mod.get_config()
    return c.to_dict() if hasattr(c, "to_dict") else dict(c)


def parser(description: str, default_config: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description=description,
        epilog="Any config key can be set with --config.KEY=VALUE (see --help_config).",
    )
    ap.add_argument("--config", default=str(CONFIGS / default_config), help="config file")
    ap.add_argument("--workdir", default=None, help="output directory (runs/<config name>)")
    ap.add_argument("--resume", action="store_true", help="continue the run in --workdir")
    ap.add_argument("--help_config", action="store_true", help="list every config key")
    ap.add_argument("--precision", choices=["float32", "bfloat16", "float16"], default=None)
    ap.add_argument("--grad_accum_steps", type=int, default=None)
    ap.add_argument("--remat", choices=["none", "blocks", "dots", "full"], default=None)
    ap.add_argument("--num_devices", type=int, default=None)
    ap.add_argument("--coordinator", default=None, help="multi-host: host:port of process 0")
    ap.add_argument("--num_processes", type=int, default=None)
    ap.add_argument("--process_id", type=int, default=None)
    ap.add_argument(
        "--distributed",
        action="store_true",
        help="multi-host with auto-detection (Cloud TPU, SLURM, Open MPI)",
    )
    return ap


def main(
    make_task: Callable[[dict], object],
    description: str,
    default_config: str,
    argv: Sequence[str] | None = None,
    report: Callable[[dict, dict, str], None] | None = None,
) -> int:
    """Parse ``argv``, build the task and the :class:`jaxcnn.train.Trainer`, run, report.
    Returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = [a for a in argv if a.startswith("--config.")]
    ap = parser(description, default_config)
    args = ap.parse_args([a for a in argv if not a.startswith("--config.")])
    try:
        return _run(make_task, args, overrides, report)
    except Exception as e:  # one line for what the user can fix; a traceback for bugs
        if type(e).__name__ in _USER_ERRORS or _is_disk_error(e):
            print(f"error: {e}", file=sys.stderr)
            return 2 if type(e).__name__ == "ConfigError" else 1
        raise


def print_written(workdir: str, names: Sequence[str]) -> None:
    """One line naming which of ``names`` the run wrote into ``workdir`` (plots are skipped
    without matplotlib), and its checkpoints."""
    made = [n for n in names if os.path.exists(os.path.join(workdir, n))]
    print(f"wrote {workdir}/: {', '.join(made)} and checkpoints/")


def _is_disk_error(e: BaseException) -> bool:
    while e is not None:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EACCES, errno.EROFS):
            return True
        e = e.__cause__ or e.__context__
    return False


def _run(make_task, args, overrides, report) -> int:
    import logging

    from jaxcnn.train import config as config_lib
    from jaxcnn.train import mesh
    from jaxcnn.train.trainer import Trainer
    from jaxcnn.utils import enable_compilation_cache

    # before anything compiles; JAXCNN_COMPILATION_CACHE=0 turns it off (jaxcnn.utils.cache)
    enable_compilation_cache()

    logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax logs every save at INFO
    cfg = load_config_file(args.config)
    probe = make_task(cfg)
    fields = config_lib.schema(probe.fields)
    if args.help_config:
        print(config_lib.describe(fields))
        return 0
    cfg.update(config_lib.parse_overrides(overrides, fields))
    for key in ("precision", "grad_accum_steps", "remat", "num_devices"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    mesh.initialize_distributed(
        args.coordinator, args.num_processes, args.process_id, auto=args.distributed or None
    )
    mesh.quiet_non_main_processes()
    workdir = args.workdir or os.path.join("runs", pathlib.Path(args.config).stem)
    trainer = Trainer(probe, cfg, workdir, resume=args.resume)  # validates before any data
    result = trainer.run()
    if mesh.is_main_process() and report is not None:
        report(result, trainer.cfg, workdir)
    return 0
