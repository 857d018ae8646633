"""The transfer study at toy size (LeNet-5, 20 labels, one seed, a few steps per run): every
method runs end to end through the engine in seconds. tests/test_transfer.py runs it; it is
also the way to try a change to the study before a long run.

    python -m experiments.transfer --config experiments/configs/transfer_tiny.py
"""

from experiments.configs.transfer_mnist import _model
from experiments.configs.transfer_mnist import get_config as _full


def get_config():
    c = _full()
    c.label_counts = (20,)
    c.models = c.quick_models = ("lenet5_modern",)
    c.model_options = {
        "lenet5_modern": _model(1, 128, 2e-3, budgets=(20,), batch_size=16, lr=2e-3),
        # a narrow ResNet-18 (16 filters at the stem): BatchNorm everywhere, for quick looks at
        # what the study's methods do on a deep backbone (--config.models='("resnet18_cifar",)')
        "resnet18_cifar": _model(
            3, 128, 2e-3, budgets=(60,), batch_size=32, lr=1e-3, in_channels=1, num_filters=16
        ),
    }
    c.source_validation_split = 200
    c.validation_split = 100
    c.evaluations = 2
    c.probe_steps = 50
    c.seeds = (0,)
    c.compilation_cache = ""
    return c
