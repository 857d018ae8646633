"""U-Net on 64x64 canvases of 1-3 real MNIST digits, 11 classes (background + 10 digits).

    python -m experiments.segment --config experiments/configs/unet_canvas.py

Network: ``unet_small`` with base width 8 and depth 4 (8->128 channels, BatchNorm, same
padding, bottleneck at 4x4; 486,499 parameters): a quarter of the per-pixel cost of width 16
at the 64x64 level, which dominates the time on CPU. Data: the first 8,000 digits of the MNIST
test set (``../shared/data/mnist-test``; scikit-learn digits when absent) compose a fresh batch
of 16 canvases every step; 1,000 held-out canvases use only the last 2,000 digits.

Target: held-out mean IoU >= 0.75. NOT REACHED YET. Measured on 2 heavily contended cores
(stopped at step ~650 of 1200): step 300 mean IoU 0.154, step 600 mean IoU 0.147, pixel
accuracy 0.949 -- the network separates ink from background (train loss 0.67 -> 0.13) but
had not yet learned which digit a stroke belongs to (it predicts background or "0" only).
Next things to try: ``--config.class_weights`` (e.g. 0.1 for background, 1 for digits: the
background is ~94% of the pixels and dominates the cross-entropy), more steps, base width 16.
"""
import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.model = "unet_small"
    c.model_kwargs = {"base_width": 8, "depth": 4}
    c.source = "auto"
    c.num_test = 1000
    c.batch_size = 16
    c.steps = 1200
    c.eval_every = 300
    c.optimizer = "adam"
    c.learning_rate = 3e-3
    c.schedule = "cosine"
    c.warmup_steps = 50
    c.dice_weight = 0.5
    c.class_weights = ()  # per-class CE weights, e.g. (0.1,) + (1.0,) * 10
    c.seed = 0
    c.eval_batch_size = 100
    c.progress = True
    return c
