"""Transfer-learning study on the real MNIST test set: digits 0-4 -> 5-9, 50/200/1,000 labels.

    python -m experiments.transfer --config experiments/configs/transfer_mnist.py --quick
    python -m experiments.transfer --config experiments/configs/transfer_mnist.py  # + ResNet-18
    python -m experiments.transfer --config experiments/configs/transfer_mnist.py \
        --config.models='("resnet18_cifar",)' --config.seeds='(0, 1, 2)' \
        --config.budgets='(60, 200, 600)' --config.label_counts='(50, 200, 1000)' \
        --config.methods='("scratch", "finetune_lwd:0.8", "gradual", "lora:4", "lora:16")'

Every network trains on the engine (jaxcnn.train.Trainer); selection (the pretrained backbone,
the reported state of every transfer run) uses validation splits held out of the train split,
never the test split. Measured: docs/results.md#transfer-learning; the study: docs/transfer.md.
"""

import ml_collections
from ml_collections import config_dict


def _model(
    pretrain_epochs, pretrain_batch_size, pretrain_lr, budgets, batch_size, lr, seeds=(), **kwargs
):
    m = ml_collections.ConfigDict()
    m.seeds = seeds  # transfer seeds for this backbone (empty: the config's ``seeds``)
    m.kwargs = kwargs  # create_model keyword arguments
    m.pretrain_epochs = pretrain_epochs
    m.pretrain_batch_size = pretrain_batch_size
    m.pretrain_lr = pretrain_lr
    # transfer training steps per run, one study per budget (every method gets the same)
    m.budgets = tuple(budgets)
    m.batch_size = batch_size  # min(batch_size, number of labelled examples)
    m.lr = lr  # head learning rate (Adam, cosine decay); the backbone gets less (layer decay)
    # pretraining: the engine evaluates the source validation split after every epoch and
    # keeps the best state
    return m


def get_config():
    c = ml_collections.ConfigDict()
    c.dataset = "mnist"  # bundled (or ../shared/data/mnist-test); or "tfds:mnist" (any TFDS
    # image classification dataset: its published train and test splits)
    c.data_dir = ""  # IDX folder (dataset "mnist_idx") or TFDS' data_dir
    # None: the dataset's own test split; the single-file MNIST test set holds out its last
    # 2,000 images (file order kept): train = the first 8,000
    c.test_split = config_dict.placeholder(int)
    c.split_seed = 0  # seed of the validation hold-outs below
    c.source_validation_split = 0.1  # of the source classes' train examples: selects the
    # pretrained state (fraction or count; seeded, stratified)
    c.validation_split = 500  # of the target classes' train examples, held out before the
    # labelled subsets are drawn: selects the reported state of every transfer run
    c.evaluations = 6  # validation evaluations per transfer run (every steps / evaluations;
    # a multiple of the unfreezing phases puts one at the end of each phase)
    c.early_stopping_patience = 0  # evaluations without a better validation accuracy (0: off)
    c.eval_batch_size = 500
    c.keep_run_checkpoints = False  # runs keep metrics.json and train.log only
    c.input_size = (28, 28)
    c.channels = 1  # 3 for RGB datasets (gray images are repeated to fit)
    c.source_classes = (0, 1, 2, 3, 4)  # pretraining task
    c.target_classes = (5, 6, 7, 8, 9)  # transfer task (relabelled 0..4)
    c.label_counts = (50, 200, 1000)  # labelled target examples (nested subsets)
    c.models = ("lenet5_modern", "resnet18_cifar")  # the backbones
    c.quick_models = ("lenet5_modern",)  # --quick
    c.model_options = ml_collections.ConfigDict(
        {
            "lenet5_modern": _model(6, 64, 2e-3, budgets=(300,), batch_size=32, lr=2e-3),
            # a batch-32 ResNet-18 step takes ~1.3 s on 2 cores: the full grid (3 budgets x
            # 3 label counts x 5 methods x 3 seeds) wants an accelerator
            "resnet18_cifar": _model(
                2, 128, 1e-3, budgets=(60, 200, 600), batch_size=32, lr=1e-3, in_channels=1
            ),
        }
    )
    c.budgets = ()  # step budgets for every backbone (empty: each backbone's own budgets)
    # methods: scratch, feature_extractor, or any jaxcnn.transfer.Plan spec (docs/transfer.md):
    # linear_probe, finetune, finetune_lwd:D, gradual[:N], lora[:R], with ,key=value options
    c.methods = ("scratch", "feature_extractor", "finetune_lwd:0.8", "gradual", "lora")
    c.probe_steps = 500  # feature extractor: full-batch softmax regression steps
    c.compilation_cache = "jax_cache"  # under the workdir ("" disables): the runs of one
    # method share their compiled train step (same shapes), so seeds and label counts are cheap
    c.augment_shift = 2  # random translations during training (all methods, pretraining)
    c.seed = 0  # pretraining
    c.seeds = (0, 1, 2)  # transfer runs: one labelled subset + initialisation per seed (mean ± std)
    return c
