"""Train a classifier from a config file (the classification task on the one engine).

    python -m experiments.train                                    # LeNet-5 on digits, offline
    python -m experiments.train --config experiments/configs/lenet_mnist.py
    python -m experiments.train --config experiments/configs/X.py --config.epochs=5 \\
        --workdir runs/x --resume
    python -m experiments.train --help_config                      # every key and its default

Writes checkpoints/, metrics.json, curves.png and confusion.png to --workdir
(default: runs/<config file name>). Model selection (best checkpoint, early stopping) uses the
validation split only; the test split is evaluated at the end.

Scale-out: all local devices are used (data parallel; --num_devices=N for fewer);
--precision=bfloat16|float16, --grad_accum_steps=K, --remat=blocks. Several hosts: run the same
command on every host; on a Cloud TPU slice add --distributed, elsewhere give
--coordinator=HOST0:PORT --num_processes=N --process_id=I (or the JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES, JAX_PROCESS_ID environment variables).
"""

import sys

from experiments import cli


def _task(cfg):
    from jaxcnn.tasks import Classification

    return Classification()


def _report(result, cfg, workdir):
    if result.get("preempted"):
        return
    sel = result.get("selected", {})
    line = (
        f"\n{cfg['model']} on {cfg['dataset']}: test accuracy {result['test_accuracy']:.4f} "
        f"(last state, {result['epochs_run']:g} epochs, {result['train_time_s']:.1f}s training)"
    )
    # the selected model's test figure: its EMA's when selection used the EMA
    key = "test_" + sel.get("by", "val_accuracy").removeprefix("val_")
    if key in sel:
        what = "the EMA " if key == "test_ema_accuracy" else ""
        line += f"; {what}selected by validation (step {sel['step']}): {sel[key]:.4f}"
    print(line)
    cli.print_written(workdir, ("metrics.json", "curves.png", "confusion.png", "tensorboard/"))


def main(argv=None) -> int:
    return cli.main(_task, __doc__.splitlines()[0], "lenet_digits.py", argv, _report)


if __name__ == "__main__":
    sys.exit(main())
