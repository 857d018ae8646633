"""CIFAR-stem ResNet-18 on CIFAR-10 with the standard recipe (not measured here: no CIFAR-10
on this machine).

Source: the widely used recipe of https://github.com/kuangliu/pytorch-cifar (``main.py``; its
README's table lists ResNet18 at 93.02%): SGD with momentum 0.9 and
learning rate 0.1 for the batch of 128, weight decay 5e-4 on every parameter, cosine schedule
over 200 epochs, 4-pixel zero padding + random 32x32 crop + horizontal flip, per-channel
mean/std normalisation. Nesterov momentum is on here (kuangliu uses plain momentum; Nesterov
is the other common choice, e.g. in the Wide ResNet recipe of Zagoruyko & Komodakis, 2016).

10% of the training set (5,000 images, seeded, stratified) is held out for model selection;
the 10,000 test images are evaluated at the end.

    python -m experiments.train --config experiments/configs/resnet18_cifar10.py \\
        --config.data_dir=/data/tfds --workdir runs/resnet18_cifar10
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.model = "resnet18_cifar"
    c.dataset = "tfds:cifar10"
    c.input_size = (32, 32)
    c.transform = "cifar"  # 4-px zero pad + random crop, horizontal flip
    c.batch_size = 128
    c.eval_batch_size = 1000
    c.epochs = 200
    c.optimizer = "sgd"
    c.momentum = 0.9
    c.nesterov = True
    c.learning_rate = 0.1
    c.weight_decay = 5e-4
    c.schedule = "cosine"
    c.num_workers = 4
    c.seed = 0
    return c
