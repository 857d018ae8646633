"""U-Net on 64x64 canvases of 1-3 real MNIST digits, 11 classes (background + 10 digits).

    python -m experiments.segment --config experiments/configs/unet_canvas.py

Network: ``unet_small`` with base width 16 and depth 3 (16->128 channels, BatchNorm, same
padding; 482,619 parameters). Data: the first 8,000 digits of the MNIST test set
(``../shared/data/mnist-test``; scikit-learn digits when absent) compose a fresh batch of
canvases every step; 1,000 held-out canvases use only the last 2,000 digits.
Expected: held-out mean IoU >= 0.75 (README has the measured figure and wall time).
"""
import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.model = "unet_small"
    c.model_kwargs = {"base_width": 16, "depth": 3}
    c.source = "auto"
    c.num_test = 1000
    c.batch_size = 16
    c.steps = 1500
    c.eval_every = 500
    c.optimizer = "adam"
    c.learning_rate = 3e-3
    c.schedule = "cosine"
    c.warmup_steps = 50
    c.dice_weight = 0.5
    c.seed = 0
    c.eval_batch_size = 100
    c.progress = True
    return c
