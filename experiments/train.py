"""Train a model from a config file.

    python -m experiments.train                                    # LeNet-5 on digits, offline
    python -m experiments.train --config experiments/configs/lenet_mnist.py
    python -m experiments.train --config experiments/configs/X.py --config.epochs=5 \
        --workdir runs/x --resume

Writes checkpoints/, metrics.json, curves.png and confusion.png to --workdir
(default: runs/<config file name>).

Scale-out: all local devices are used (data parallel; --config.num_devices=N for fewer);
--precision=bfloat16|float16, --grad_accum_steps=K, --remat=blocks (or the same keys as
--config.precision=... where the config file sets them).
Several hosts: run the same command on every host. On a Cloud TPU slice add --distributed
(JAX finds the other hosts itself); elsewhere give --coordinator=HOST0:PORT --num_processes=N
--process_id=I (or set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID).
"""

import os
import pathlib

from absl import app, flags, logging
from ml_collections import config_flags

_DEFAULT = str(pathlib.Path(__file__).parent / "configs" / "lenet_digits.py")
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT, "experiment config file")
_WORKDIR = flags.DEFINE_string("workdir", None, "output directory (default runs/<config name>)")
_RESUME = flags.DEFINE_bool("resume", False, "continue from the newest checkpoint in --workdir")
# scale-out overrides for any config (a config may also set these keys itself)
_PRECISION = flags.DEFINE_enum(
    "precision",
    None,
    ["float32", "bfloat16", "float16"],
    "computation dtype (params and BN stats stay float32)",
)
_ACCUM = flags.DEFINE_integer("grad_accum_steps", None, "micro-batches per optimizer step")
_REMAT = flags.DEFINE_enum(
    "remat", None, ["none", "blocks", "dots", "full"], "rematerialisation (see jaxcnn.train.remat)"
)
_NDEV = flags.DEFINE_integer("num_devices", None, "devices of the data axis (default: all)")
_COORD = flags.DEFINE_string(
    "coordinator", None, "multi-host: host:port of process 0 (or env JAX_COORDINATOR_ADDRESS)"
)
_NPROC = flags.DEFINE_integer(
    "num_processes", None, "multi-host: number of processes (or env JAX_NUM_PROCESSES)"
)
_PID = flags.DEFINE_integer(
    "process_id", None, "multi-host: this process's index (or env JAX_PROCESS_ID)"
)
_DIST = flags.DEFINE_bool(
    "distributed",
    False,
    "multi-host with auto-detection (Cloud TPU, SLURM, Open MPI): jax.distributed.initialize()",
)


def main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:  # Orbax logs every save at INFO
        logging.set_verbosity(logging.WARNING)
    from jaxcnn.train import fit, mesh

    # before anything touches a device; a no-op for one process
    mesh.initialize_distributed(_COORD.value, _NPROC.value, _PID.value, auto=_DIST.value or None)
    mesh.quiet_non_main_processes()
    config = _CONFIG.value
    for key, flag in (
        ("precision", _PRECISION),
        ("grad_accum_steps", _ACCUM),
        ("remat", _REMAT),
        ("num_devices", _NDEV),
    ):
        if flag.value is not None:
            with config.unlocked():
                config[key] = flag.value
    name = pathlib.Path(flags.FLAGS["config"].config_filename).stem
    workdir = _WORKDIR.value or os.path.join("runs", name)
    result = fit(config, workdir, resume=_RESUME.value)
    if not mesh.is_main_process():
        return
    print(
        f"\n{config.model} on {config.dataset}: test accuracy {result['test_accuracy']:.4f} "
        f"({result['epochs_run']} epochs, {result['train_time_s']:.1f}s training)"
    )
    print(f"wrote {workdir}/metrics.json, curves.png, confusion.png and checkpoints/")


if __name__ == "__main__":
    app.run(main)
