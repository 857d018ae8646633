"""LeNet-5 (modern) on scikit-learn's real 8x8 handwritten digits, resized to 28x28; offline.

    python -m experiments.train                      # this config is the default

Expected >= 98% test accuracy on the 359 held-out digits; measured: docs/results.md#training.
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.model = "lenet5_modern"
    c.model_kwargs = {}
    c.dataset = "digits"
    c.data_dir = ""
    c.test_split = 0.2  # 360 of 1,797 digits, stratification by a seeded shuffle
    c.split_seed = 0
    c.batch_size = 32
    c.epochs = 15
    c.optimizer = "adam"
    c.learning_rate = 2e-3
    c.schedule = "cosine"
    c.augment_shift = 2
    c.seed = 0
    # scale-out (jaxcnn.train.mesh/precision/remat): all devices, float32, no accumulation
    c.num_devices = 0
    c.precision = "float32"  # or "bfloat16", "float16"
    c.grad_accum_steps = 1
    c.remat = ""
    return c
