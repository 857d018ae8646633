"""ViT-S/16 on ImageNet-1k with the DeiT recipe (DeiT-S: 79.8% top-1 without distillation).

Source: Touvron et al., "Training data-efficient image transformers & distillation through
attention" (ICML 2021), https://arxiv.org/abs/2012.12877, Table 9 (DeiT-B's ingredients, used
for DeiT-S unchanged), and the defaults of its ``main.py``,
https://github.com/facebookresearch/deit: batch 1,024, AdamW with learning rate
``5e-4 * batch / 512`` (1e-3 here), weight decay 0.05, cosine schedule over 300 epochs to
1e-5 after 5 warm-up epochs from 1e-6, label smoothing 0.1, stochastic depth 0.1,
RandAugment ``rand-m9-mstd0.5-inc1``, Mixup 0.8, CutMix 1.0 (one of the two per batch),
random erasing 0.25 (per-pixel noise), the weight EMA (decay 0.99996), bicubic resizing,
evaluation at 224 after resizing to 256 (``crop_pct`` 0.875).
No weight decay on biases, norms and the position/class embeddings (timm's optimizer factory
with DeiT's ``no_weight_decay``).

Not here: repeated augmentation (``--repeated-aug``); DeiT's colour jitter 0.4 is unused, as
in timm, because RandAugment is on.

    python -m experiments.train --config experiments/configs/vit_s16_imagenet.py \\
        --config.data_dir=/data/tfds --workdir runs/vit_s16
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.model = "vit_s_16"
    c.dataset = "tfds:imagenet2012"
    # model selection on 10,000 held-out training images (10 per class, seeded, stratified);
    # the test figures are ImageNet's validation split, what papers report, never selected on
    c.validation_split = 10_000
    c.input_size = (224, 224)
    c.crop_pct = 0.875
    c.interpolation = "bicubic"
    c.batch_size = 1024
    c.eval_batch_size = 1024
    c.epochs = 300
    c.optimizer = "adamw"
    c.learning_rate = 5e-4 * c.batch_size / 512
    c.weight_decay = 0.05
    c.decay_mask = True
    c.schedule = "cosine"
    c.warmup_epochs = 5.0
    c.warmup_init_lr = 1e-6
    c.min_lr = 1e-5
    c.augment_policy = "randaugment"
    c.randaugment_num_ops = 2
    c.randaugment_magnitude = 9.0
    c.randaugment_magnitude_std = 0.5
    c.random_erasing = 0.25
    c.random_erasing_mode = "pixel"
    c.label_smoothing = 0.1
    c.mixup_alpha = 0.8
    c.cutmix_alpha = 1.0
    c.mixup_prob = 1.0
    c.mixup_switch_prob = 0.5
    c.drop_path_rate = 0.1
    c.ema_decay = 0.99996
    c.num_workers = 16
    c.seed = 0
    return c
