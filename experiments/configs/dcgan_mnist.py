"""DCGAN (28x28) on the 10,000 real MNIST test digits (``../shared/data/mnist-test``), judged by
a LeNet-5 trained on real digits (trained first, ~1 min, unless ``--classifier_workdir`` holds
one already).

    python -m experiments.gan --config experiments/configs/dcgan_mnist.py

Writes to runs/dcgan_mnist/: samples/epoch_NNN.png (a fixed 8x8 grid of samples after every
epoch), samples_final.png (10x10), samples_by_class.png (one row per predicted digit),
metrics.json (per-epoch losses and evaluation, final figures) and checkpoints/.
The LeNet-5 judge is written to runs/dcgan_mnist_judge/ (reused on the next run).

Generator and discriminator width: 32 (ngf = ndf = 32: G 347,072 and D 36,544 parameters),
half the paper's 64 so that a run takes minutes on 2 CPU cores; ``--config.width=64`` gives
the registered Radford/PyTorch-tutorial networks (759,680 / 138,624), ~3x slower per step.

Target: >= 80% of 1,000 samples classified with confidence >= 0.9 and every digit between 5%
and 15% of the samples. Measured (width 32, batch 32, 8 epochs, seed 0): see the README section / the
``final`` entry of metrics.json.
"""
import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.image_size = 28  # 28 or 32 (digits padded by 2 with background)
    c.width = 32  # ngf = ndf; the paper's (and the registered default) is 64
    c.latent_dim = 100
    c.data_dir = ""  # default: ../shared/data/mnist-test
    c.batch_size = 32  # more steps per pass over the 10,000 digits
    c.epochs = 8
    c.learning_rate = 2e-4  # Adam, both networks (paper)
    c.beta1 = 0.5
    c.label_smoothing = 0.1  # one-sided: real target 0.9
    c.num_eval_samples = 1000
    c.confidence = 0.9
    c.sample_mode = "running"  # generator BatchNorm at sampling: "running" averages or "batch"
    c.seed = 0
    c.keep_checkpoints = 2
    # the judge: LeNet-5 (modern) trained with experiments/configs/lenet_mnist.py
    c.classifier_epochs = 3
    return c
