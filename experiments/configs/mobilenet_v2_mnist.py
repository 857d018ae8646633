"""MobileNet v2 (``small_input=True``, ``in_channels=1``) on the MNIST split of lenet_mnist.py.

    python -m experiments.train --config experiments/configs/mobilenet_v2_mnist.py

Expected >= 98% test accuracy; measured: docs/results.md#mobilenet-v2-on-mnist.
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.model = "mobilenet_v2"
    c.model_kwargs = {"small_input": True, "in_channels": 1}
    c.dataset = "mnist"  # first 8,000 train (10% validation), last 2,000 test
    c.input_size = (28, 28)
    c.batch_size = 128
    c.eval_batch_size = 500
    c.epochs = 6
    c.optimizer = "adamw"
    c.learning_rate = 2e-3
    c.weight_decay = 1e-4
    c.schedule = "cosine"
    c.warmup_epochs = 0.5
    c.augment_shift = 2
    c.seed = 0
    return c
