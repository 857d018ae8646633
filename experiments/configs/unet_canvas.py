"""U-Net on 64x64 canvases of 1-3 real MNIST digits, 11 classes (background + 10 digits).

    python -m experiments.segment --config experiments/configs/unet_canvas.py

1,200 steps (6 epochs of 200 fresh batches). Target: test mean IoU >= 0.75; measured:
docs/results.md#segmentation-u-net.
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.model = "unet_small"
    c.model_kwargs = {"base_width": 16, "depth": 4}
    c.source = "auto"
    c.validation_split = 0.1  # of the 8,000 training digits: 800 for the validation canvases
    c.num_validation = 500
    c.num_test = 1000
    c.batch_size = 16
    c.epochs = 6
    c.steps_per_epoch = 200
    c.optimizer = "adam"
    c.learning_rate = 3e-3
    c.schedule = "cosine"
    c.warmup_epochs = 0.25  # 50 steps
    c.dice_weight = 0.5
    c.class_weights = (0.2,) + (1.0,) * 10  # background is ~94% of the pixels
    c.seed = 0
    c.eval_batch_size = 100
    c.progress = True
    return c
