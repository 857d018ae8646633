"""Class-conditional DCGAN (AC-GAN) with the networks and recipe of dcgan_mnist.py.

    python -m experiments.gan --config experiments/configs/dcgan_mnist_conditional.py

Measured: docs/results.md#conditional-dcgan; what it writes: docs/gan.md.
"""

import importlib.util
import pathlib

_spec = importlib.util.spec_from_file_location(
    "dcgan_mnist_base", pathlib.Path(__file__).with_name("dcgan_mnist.py")
)
_base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_base)


def get_config():
    c = _base.get_config()
    c.conditional = True
    c.epochs = 20
    return c
