"""Train a U-Net on 64x64 canvases of real handwritten digits (11 classes per pixel).

    python -m experiments.segment                      # experiments/configs/unet_canvas.py
    python -m experiments.segment --config.steps=200 --workdir runs/quick
    python -m experiments.segment --workdir runs/unet_canvas --resume

Writes checkpoints/, metrics.json and predictions.png (input / ground truth / prediction)
to --workdir (default: runs/<config file name>).
"""

import os
import pathlib

from absl import app, flags, logging
from ml_collections import config_flags

_DEFAULT = str(pathlib.Path(__file__).parent / "configs" / "unet_canvas.py")
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT, "experiment config file")
_WORKDIR = flags.DEFINE_string("workdir", None, "output directory (default runs/<config name>)")
_RESUME = flags.DEFINE_bool("resume", False, "continue from the newest checkpoint in --workdir")


def main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:  # Orbax logs every save at INFO
        logging.set_verbosity(logging.WARNING)
    from jaxcnn.train.seg_loop import fit_segmentation

    name = pathlib.Path(flags.FLAGS["config"].config_filename).stem
    workdir = _WORKDIR.value or os.path.join("runs", name)
    r = fit_segmentation(_CONFIG.value, workdir, resume=_RESUME.value)
    print(
        f"\n{_CONFIG.value.model}: held-out mean IoU {r['mean_iou']:.4f}, pixel accuracy "
        f"{r['pixel_accuracy']:.4f} ({r['steps']} steps, {r['wall_time_s']:.0f}s wall)"
    )
    print(f"wrote {workdir}/metrics.json, predictions.png and checkpoints/")


if __name__ == "__main__":
    app.run(main)
