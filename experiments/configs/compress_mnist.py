"""The models that docs/compression.md quantizes, prunes and ensembles, trained on the MNIST
split with a validation set: of the real MNIST test set, images 0-7,199 train, 7,200-7,999 are
the validation set (calibration, selection) and the last 2,000 the held-out test set, which
selects nothing (fixed epochs, the last checkpoint is the model).

    python -m experiments.train --config experiments/configs/compress_mnist.py:lenet \
        --workdir runs/compress/lenet_s0
    python -m experiments.train --config experiments/configs/compress_mnist.py:lenet \
        --config.seed=1 --workdir runs/compress/lenet_s1
    python -m experiments.train --config experiments/configs/compress_mnist.py:resnet18 \
        --workdir runs/compress/resnet18
    python -m experiments.train --config experiments/configs/compress_mnist.py:mobilenet_v2 \
        --workdir runs/compress/mobilenet_v2

The argument after the colon names the base config (``lenet_mnist``, ``resnet18_mnist``,
``mobilenet_v2_mnist``); everything else is that config's.
"""

import importlib

BASES = {
    "lenet": "lenet_mnist",
    "resnet18": "resnet18_mnist",
    "mobilenet_v2": "mobilenet_v2_mnist",
}
NUM_TRAIN = 7200  # of the first 8,000; images 7,200-7,999 are the validation set
NUM_VALIDATION = 800


def get_config(arg: str = "lenet"):
    if arg not in BASES:
        raise ValueError(f"compress_mnist: expected one of {sorted(BASES)} after ':', got {arg!r}")
    c = importlib.import_module(f"experiments.configs.{BASES[arg]}").get_config()
    c.num_train = NUM_TRAIN
    # overridable from the command line (--config.checkpoint_every_steps=28 for long runs)
    c.checkpoint_every_steps = 0
    c.progress = True
    return c
