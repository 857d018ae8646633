"""DCGAN (32x32: digits padded by 2) on the 10,000 real MNIST test digits
(``../shared/data/mnist-test``), judged by a LeNet-5 trained on real digits (trained first,
~1 min, unless ``--classifier_workdir`` holds one already).

    python -m experiments.gan --config experiments/configs/dcgan_mnist.py

Writes to runs/dcgan_mnist/: samples/epoch_NNN.png (a fixed 8x8 grid of samples after every
epoch), samples_final.png (10x10), samples_by_class.png (one row per predicted digit),
metrics.json (per-epoch losses and evaluation, final figures) and checkpoints/.
The LeNet-5 judge is written to runs/dcgan_mnist_judge/ (reused on the next run).

Networks: ``dcgan_generator_32`` / ``dcgan_discriminator_32`` at width 32 (ngf = ndf = 32,
1 channel: G 369,600 and D 166,784 parameters), half the paper's 64 so that a run fits
2 CPU cores. Training: batch 32, Adam 2e-4 / beta1 0.5 for both (paper), one-sided label
smoothing 0.1, top-k generator updates (Sinha et al. 2020; k = 0.97**epoch of the batch, at
least half), samples from a moving average of G's weights (decay 0.999).

Target: >= 80% of 1,000 samples classified with confidence >= 0.9 and every digit between 5% and
15% of the samples. Measured with this config (60 epochs = 18,720 steps, seed 0; judge:
10 epochs, 98.7% on the held-out digits, confident on 96.4% of real digits): **79.8%**
confident, class shares 7.8%-13.7%, Frechet distance 4.36 vs 2.87 real-vs-real (raw G 78.4%).
Over 10 other sets of 1,000 samples: 78.3% +- 1.1% confident. The class spread is met, the
confidence is not (it is 74% at epoch 20, 78% at 30, ~80% from 40 on). An epoch takes ~38 s
with its evaluation and grids when the run has the 2 cores to itself (~38 min for the 60).
The measured run was resumed twice (30 -> 45 -> 60 epochs); a fresh run from this config gave
the same figures at every epoch checked (30, 40, 45, 50). The 28x28 networks (two layers each) plateau at ~63%
(FD 48).

Tried and no better: linear learning-rate decay over the last 10 epochs (``lr_decay_start=50``:
78-79%, D wins more: D(G(z)) 0.09 -> 0.05), an InfoGAN code (``info_codes=10``: tracked the
plain run within 1-4 points to epoch 22).
"""
import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.image_size = 32  # 28 or 32 (digits padded by 2 with background)
    c.width = 32  # ngf = ndf; the paper's (and the registered default) is 64
    c.d_width = 0  # the discriminator's width (0: the same as the generator's)
    c.latent_dim = 100
    c.data_dir = ""  # default: ../shared/data/mnist-test
    c.batch_size = 32  # more steps per pass over the 10,000 digits
    c.epochs = 60
    c.learning_rate = 2e-4  # Adam, both networks (paper)
    c.beta1 = 0.5
    c.lr_decay_start = 0  # > 0: from this epoch (0-based) both learning rates decay linearly to ~0
    c.label_smoothing = 0.1  # one-sided: real target 0.9
    c.num_eval_samples = 1000
    c.eval_sets = 10  # at the end, the figures on this many other sets of samples too
    c.confidence = 0.9
    c.top_k_gamma = 0.97  # > 0: top-k generator updates, k = max(gamma**epoch, top_k_min) * batch
    c.top_k_min = 0.5
    c.info_codes = 0  # > 0: InfoGAN categorical code of this many values (D gets 1 + n outputs)
    c.info_weight = 1.0
    c.ema_decay = 0.999  # sample from an exponential moving average of G (0: the raw G)
    c.sample_mode = "batch"  # generator BatchNorm at sampling: "running" averages or "batch"
    c.seed = 0
    c.keep_checkpoints = 2
    # the judge: LeNet-5 (modern) trained with experiments/configs/lenet_mnist.py
    c.classifier_epochs = 10  # 98.7% on the held-out digits, confident on 96.1% of them
    return c
