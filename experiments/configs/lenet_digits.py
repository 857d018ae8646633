"""LeNet-5 (modern) on scikit-learn's real 8x8 handwritten digits, resized to 28x28; offline.

    python -m experiments.train                      # this config is the default

Expected >= 98% test accuracy on the 359 held-out test digits; measured: docs/results.md#training.
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.model = "lenet5_modern"
    c.dataset = "digits"  # bundled: 20% (seeded, stratified) test, 10% of the rest validation
    c.batch_size = 32
    c.epochs = 30
    c.optimizer = "adam"
    c.learning_rate = 2e-3
    c.schedule = "cosine"
    c.augment_shift = 2
    c.seed = 0
    return c
