"""LeNet-5 (modern) on the real MNIST test set: first 8,000 images train, last 2,000 test.

    python -m experiments.train --config experiments/configs/lenet_mnist.py

Expected >= 98.5% within 10 epochs; measured: docs/results.md#training (TFDS: docs/training.md).
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.model = "lenet5_modern"
    c.dataset = (
        "mnist"  # bundled MNIST test set: first 8,000 train (10% validation), last 2,000 test
    )
    c.batch_size = 64
    c.epochs = 10
    c.optimizer = "adam"
    c.learning_rate = 2e-3
    c.schedule = "cosine"
    c.augment_shift = 2
    c.seed = 0
    return c
