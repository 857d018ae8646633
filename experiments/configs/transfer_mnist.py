"""Transfer-learning study on the real MNIST test set (offline): pretrain on digits 0-4 of the
first 8,000 images, transfer to digits 5-9 with 50, 200 and 1,000 labelled examples, evaluate
on the digits 5-9 among the last 2,000 images. Five methods per backbone: from scratch, feature
extractor (frozen backbone + linear probe), fine-tuning with layer-wise learning-rate decay,
gradual unfreezing, LoRA.

    python -m experiments.transfer --config experiments/configs/transfer_mnist.py --quick
    python -m experiments.transfer --config experiments/configs/transfer_mnist.py  # + ResNet-18

``--quick`` runs LeNet-5 only (about 6 min of CPU time on 2 cores). The full run adds the CIFAR-stem
ResNet-18 (2 pretraining epochs, cached in the workdir, so a rerun skips it). Outputs go to
``runs/transfer_mnist/``: results.md, results.json, accuracy.png, pretrained/*.msgpack.
TFDS instead of the IDX files is one change: ``--config.dataset=tfds:mnist`` (with
``--config.test_split=10000``: TFDS' train+test, the last 10,000 held out).

Measured (``--quick``, LeNet-5, mean ± std over 3 seeds; test accuracy on digits 5-9 of the
last 2,000 images; wall time per run on 2 contended cores, compilation included):

| method (LeNet-5, 3 seeds) | trainable | @50 | @200 | @1000 | s/run @50 | @200 | @1000 |
|---|---:|---:|---:|---:|---:|---:|---:|
| from scratch | 61,281 | 0.913 ± 0.025 | 0.976 ± 0.007 | 0.987 ± 0.001 | 71.5 | 27.4 | 20.7 |
| feature extractor | 425 | 0.808 ± 0.021 | 0.896 ± 0.017 | 0.948 ± 0.005 | 18.3 | 3.8 | 4.5 |
| fine-tune | 61,281 | 0.933 ± 0.011 | 0.979 ± 0.003 | 0.987 ± 0.003 | 63.4 | 19.9 | 21.0 |
| gradual unfreezing | 61,281 | 0.930 ± 0.002 | 0.972 ± 0.003 | 0.981 ± 0.008 | 48.5 | 12.1 | 13.8 |
| LoRA (rank 4) | 4,109 | **0.933 ± 0.012** | 0.974 ± 0.004 | 0.983 ± 0.000 | 57.7 | 20.2 | 23.4 |

Total 1,297 s contended (45 runs; pretraining cached, 136 s).

ResNet-18 (``--config.models="('resnet18_cifar',)"``, seed 0, 60 steps per run), acc @50/200/1000:
scratch 0.860/0.948/0.965, feature extractor 0.864/0.942/0.970, fine-tune 0.943/0.967/0.979,
gradual unfreezing 0.754/0.824/0.902, LoRA 0.858/0.888/0.895 (59 min shared; README discusses).
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
