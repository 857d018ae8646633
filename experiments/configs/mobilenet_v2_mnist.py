"""MobileNet v2 (small-image variant: ``small_input=True``, see jaxcnn/models/mobilenet.py) on
the real MNIST test set: first 8,000 images train, last 2,000 test, 28x28, 1 gray channel
(``in_channels=1``).

    python -m experiments.train --config experiments/configs/mobilenet_v2_mnist.py

Expected: >= 98% test accuracy on 2 cores. Measured: 98.65% (epochs 1-6: 69.30, 95.95, 97.75,
98.55, 98.70, 98.65%), 69 min of training on 2 cores shared with 2-3 other jobs.
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.model = "mobilenet_v2"
    c.model_kwargs = {"small_input": True, "in_channels": 1}
    c.dataset = "mnist_idx"
    c.data_dir = ""
    c.test_split = 2000
    c.split_seed = -1
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
