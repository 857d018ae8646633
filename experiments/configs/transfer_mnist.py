"""Transfer-learning study on the real MNIST test set: digits 0-4 -> 5-9, 50/200/1,000 labels.

    python -m experiments.transfer --config experiments/configs/transfer_mnist.py --quick
    python -m experiments.transfer --config experiments/configs/transfer_mnist.py  # + ResNet-18

Measured: docs/results.md#transfer-learning; the study itself: docs/transfer.md.
"""

import ml_collections


def _model(
    pretrain_epochs, pretrain_batch_size, pretrain_lr, steps, batch_size, lr, seeds=(), **kwargs
):
    m = ml_collections.ConfigDict()
    m.seeds = seeds  # transfer seeds for this backbone (empty: the config's ``seeds``)
    m.kwargs = kwargs  # create_model keyword arguments
    m.pretrain_epochs = pretrain_epochs
    m.pretrain_batch_size = pretrain_batch_size
    m.pretrain_lr = pretrain_lr
    m.steps = steps  # transfer training steps per run (every method gets the same budget)
    m.batch_size = batch_size  # min(batch_size, number of labelled examples)
    m.lr = lr  # head learning rate (Adam, cosine decay); the backbone gets less (layer decay)
    return m


def get_config():
    c = ml_collections.ConfigDict()
    c.dataset = "mnist_idx"  # or "tfds:mnist" (any TFDS image classification dataset)
    c.data_dir = ""  # default: ../shared/data/mnist-test
    c.test_split = 2000  # the last 2,000 images are held out (file order kept)
    c.input_size = (28, 28)
    c.channels = 1  # 3 for RGB datasets (gray images are repeated to fit)
    c.source_classes = (0, 1, 2, 3, 4)  # pretraining task
    c.target_classes = (5, 6, 7, 8, 9)  # transfer task (relabelled 0..4)
    c.label_counts = (50, 200, 1000)  # labelled target examples (nested subsets)
    c.models = ("lenet5_modern", "resnet18_cifar")
    c.quick_models = ("lenet5_modern",)  # --quick
    c.model_options = ml_collections.ConfigDict(
        {
            "lenet5_modern": _model(6, 64, 2e-3, steps=300, batch_size=32, lr=2e-3),
            # one seed and 60 steps: a batch-32 ResNet-18 step takes ~1.3 s on 2 cores
            "resnet18_cifar": _model(
                2, 128, 1e-3, steps=60, batch_size=32, lr=1e-3, seeds=(0,), in_channels=1
            ),
        }
    )
    c.methods = ("scratch", "feature_extractor", "finetune", "gradual_unfreezing", "lora")
    c.layer_decay = 0.8  # fine-tuning: lr x decay^(stages from the head)
    c.unfreeze_at = (0.0, 1 / 3, 2 / 3)  # fractions of the steps: head; + last stage; all
    c.lora_rank = 4
    c.lora_alpha = 8.0
    c.lora_lr_multiplier = 2.0  # LoRA adapters train with a larger rate, as usual
    c.probe_steps = 500  # feature extractor: full-batch softmax regression steps
    c.compilation_cache = "jax_cache"  # under the workdir ("" disables): the runs of one
    # method share their compiled train step (same shapes), so seeds and label counts are cheap
    c.augment_shift = 2  # random translations during training (all methods)
    c.seed = 0  # pretraining
    c.seeds = (0, 1, 2)  # transfer runs: one labelled subset + initialisation per seed (mean ± std)
    return c
