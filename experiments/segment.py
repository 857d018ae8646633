"""Train a U-Net on 64x64 canvases of real handwritten digits (the segmentation task on the
one engine; 11 classes per pixel).

    python -m experiments.segment                      # experiments/configs/unet_canvas.py
    python -m experiments.segment --config.epochs=1 --workdir runs/quick
    python -m experiments.segment --workdir runs/unet_canvas --resume
    python -m experiments.segment --help_config        # every key, its default, its meaning

Writes checkpoints/, metrics.json, curves.png and predictions.png (input / ground truth /
prediction for test canvases) to --workdir (default: runs/<config file name>). Selection (best
checkpoint, early stopping) uses the validation canvases' mean IoU; the test canvases are
evaluated at the end.
"""

import sys

from experiments import cli


def _task(cfg):
    from jaxcnn.tasks import Segmentation

    return Segmentation()


def _report(result, cfg, workdir):
    if result.get("preempted"):
        return
    line = (
        f"\n{cfg['model']}: test mean IoU {result['test_mean_iou']:.4f}, pixel accuracy "
        f"{result['test_pixel_accuracy']:.4f} (last state, {result['steps']} steps, "
        f"{result['train_time_s']:.0f}s training)"
    )
    sel = result.get("selected", {})
    if "test_mean_iou" in sel:
        line += f"; selected by validation (step {sel['step']}): {sel['test_mean_iou']:.4f}"
    print(line)
    cli.print_written(workdir, ("metrics.json", "curves.png", "predictions.png"))


def main(argv=None) -> int:
    return cli.main(_task, __doc__.splitlines()[0], "unet_canvas.py", argv, _report)


if __name__ == "__main__":
    sys.exit(main())
