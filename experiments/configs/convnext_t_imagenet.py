"""ConvNeXt-T on ImageNet-1k with the ConvNeXt paper's recipe (82.1% top-1).

Source: Liu et al., "A ConvNet for the 2020s" (CVPR 2022), https://arxiv.org/abs/2201.03545,
Appendix A.1, Table 5 ("ImageNet-1K training settings"), and the training command for
ConvNeXt-T in https://github.com/facebookresearch/ConvNeXt (TRAINING.md): AdamW
(betas 0.9, 0.999) with learning rate 4e-3 for the batch of 4,096, weight decay 0.05 (not on
biases, norms and layer scales: timm's optimizer factory), 300 epochs, 20 linear warm-up
epochs, cosine to 1e-6, RandAugment (9, 0.5), Mixup 0.8, CutMix 1.0, random erasing 0.25,
label smoothing 0.1, stochastic depth 0.1 (T), layer scale 1e-6 (the model's), the weight EMA
0.9999, bicubic resizing, evaluation at 224 with ``crop_pct`` 0.875.

The batch of 4,096 is 8 devices x 128 x 4 accumulated micro-batches, as the repository's
``--batch_size 128 --update_freq 4`` on 8 GPUs (ConvNeXt has no BatchNorm: accumulation gives
the same update as the whole batch).

    python -m experiments.train --config experiments/configs/convnext_t_imagenet.py \\
        --config.data_dir=/data/tfds --workdir runs/convnext_t
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.model = "convnext_tiny"
    c.dataset = "tfds:imagenet2012"
    # model selection on 10,000 held-out training images (10 per class, seeded, stratified);
    # the test figures are ImageNet's validation split, what papers report, never selected on
    c.validation_split = 10_000
    c.input_size = (224, 224)
    c.crop_pct = 0.875
    c.interpolation = "bicubic"
    c.batch_size = 4096
    c.grad_accum_steps = 4
    c.eval_batch_size = 1024
    c.epochs = 300
    c.optimizer = "adamw"
    c.learning_rate = 4e-3
    c.weight_decay = 0.05
    c.decay_mask = True
    c.schedule = "cosine"
    c.warmup_epochs = 20.0
    c.min_lr = 1e-6
    c.augment_policy = "randaugment"
    c.randaugment_num_ops = 2
    c.randaugment_magnitude = 9.0
    c.randaugment_magnitude_std = 0.5
    c.random_erasing = 0.25
    c.random_erasing_mode = "pixel"
    c.label_smoothing = 0.1
    c.mixup_alpha = 0.8
    c.cutmix_alpha = 1.0
    c.drop_path_rate = 0.1
    c.ema_decay = 0.9999
    c.num_workers = 16
    c.seed = 0
    return c
