"""CIFAR-stem ResNet-18 (11.2M parameters, ``in_channels=1``) on the MNIST split of lenet_mnist.py.

    python -m experiments.train --config experiments/configs/resnet18_mnist.py

Expected >= 99.0% test accuracy; measured: docs/results.md#training.
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.model = "resnet18_cifar"
    c.model_kwargs = {"in_channels": 1}
    c.dataset = "mnist"  # first 8,000 train (10% validation), last 2,000 test
    c.input_size = (28, 28)
    c.batch_size = 128
    c.eval_batch_size = 500
    c.epochs = 4
    c.optimizer = "sgd"
    c.learning_rate = 0.1
    c.weight_decay = 5e-4
    c.schedule = "cosine"
    c.warmup_epochs = 0.5
    c.augment_shift = 2
    c.seed = 0
    return c
