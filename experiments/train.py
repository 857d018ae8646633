"""Train a model from a config file.

    python -m experiments.train                                    # LeNet-5 on digits, offline
    python -m experiments.train --config experiments/configs/lenet_mnist.py
    python -m experiments.train --config experiments/configs/X.py --config.epochs=5 \
        --workdir runs/x --resume

Writes checkpoints/, metrics.json, curves.png and confusion.png to --workdir
(default: runs/<config file name>).
"""
import os
import pathlib

from absl import app, flags, logging
from ml_collections import config_flags

_DEFAULT = str(pathlib.Path(__file__).parent / "configs" / "lenet_digits.py")
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT, "experiment config file")
_WORKDIR = flags.DEFINE_string("workdir", None, "output directory (default runs/<config name>)")
_RESUME = flags.DEFINE_bool("resume", False, "continue from the newest checkpoint in --workdir")


def main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:  # Orbax logs every save at INFO
        logging.set_verbosity(logging.WARNING)
    from jaxcnn.train import fit

    config = _CONFIG.value
    name = pathlib.Path(flags.FLAGS["config"].config_filename).stem
    workdir = _WORKDIR.value or os.path.join("runs", name)
    result = fit(config, workdir, resume=_RESUME.value)
    print(f"\n{config.model} on {config.dataset}: test accuracy {result['test_accuracy']:.4f} "
          f"({result['epochs_run']} epochs, {result['train_time_s']:.1f}s training)")
    print(f"wrote {workdir}/metrics.json, curves.png, confusion.png and checkpoints/")


if __name__ == "__main__":
    app.run(main)
