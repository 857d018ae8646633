"""Load a finished training run from its work directory: config, model, trained variables, data.

Used by ``experiments.evaluate``, ``experiments.quantize`` and ``experiments.prune``. A run is
what ``python -m experiments.train --workdir DIR`` leaves: ``DIR/metrics.json`` (whose
``config`` is the complete config of the run) and ``DIR/checkpoints/``. The checkpoint's
template (the training state's structure) is rebuilt from that config with the same optimizer,
so :class:`jaxcnn.checkpoint.Checkpointer` can restore it; only ``params`` and ``batch_stats``
are kept.

Data: the same train / test arrays the run trained and was tested on (same split and
normalisation), plus the validation split: the examples the config left out of training
(``num_train`` caps the train split; ``experiments/configs/compress_mnist.py`` keeps images
7,200-7,999 of the MNIST file that way). The test split is for reporting only.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np

from jaxcnn import models
from jaxcnn.checkpoint import Checkpointer
from jaxcnn.data import load_dataset, preprocess, split
from jaxcnn.train.loop import DEFAULTS
from jaxcnn.train.optim import make_optimizer, make_schedule
from jaxcnn.train.precision import get_policy, init_dynamic_scale
from jaxcnn.train.state import create_train_state

__all__ = ["Run", "RunData", "load_run", "load_run_data", "DATA_KEYS"]

# config keys that decide the data a run saw (members of one ensemble must agree on them)
DATA_KEYS = ("dataset", "data_dir", "test_split", "split_seed", "num_train", "input_size")


@dataclasses.dataclass
class RunData:
    train: tuple[np.ndarray, np.ndarray]
    validation: tuple[np.ndarray, np.ndarray] | None
    test: tuple[np.ndarray, np.ndarray]
    num_classes: int
    name: str

    def get(self, split_name: str) -> tuple[np.ndarray, np.ndarray]:
        if split_name == "validation" and self.validation is None:
            raise ValueError(
                f"this run's config leaves no validation split on {self.name} "
                "(set num_train below the train split's size)"
            )
        if split_name not in ("train", "validation", "test"):
            raise ValueError(f"split must be train, validation or test, got {split_name!r}")
        return getattr(self, split_name)


@dataclasses.dataclass
class Run:
    directory: str
    config: dict
    model: Any
    variables: dict
    step: int
    num_classes: int
    input_shape: tuple[int, ...]  # one image, (H, W, C)

    @property
    def name(self) -> str:
        return os.path.basename(os.path.normpath(self.directory))


def read_config(run_dir: str) -> dict:
    path = os.path.join(run_dir, "metrics.json")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{run_dir} is not a training run directory (no metrics.json); "
            "pass the --workdir of python -m experiments.train"
        )
    with open(path) as f:
        return {**DEFAULTS, **json.load(f)["config"]}


def load_run_data(c: dict) -> RunData:
    """Train / validation / test arrays for config ``c``, preprocessed as the run saw them."""
    info = models.model_info(c["model"])
    ds = load_dataset(c["dataset"], c["data_dir"] or None)
    test = c["test_split"]
    test = int(test) if test >= 1 else float(test)
    split_seed = None if c["split_seed"] is None or c["split_seed"] < 0 else c["split_seed"]
    train_full, test_ds = split(ds, test, seed=split_seed)
    n = c["num_train"] or len(train_full)
    train_ds = train_full.subset(np.arange(min(n, len(train_full))))
    val_ds = train_full.subset(np.arange(n, len(train_full))) if n < len(train_full) else None
    size = tuple(c["input_size"]) or info.input_size[:2]
    channels = c["model_kwargs"].get("in_channels", info.input_size[2])
    xtr, ytr, (mean, std) = preprocess(train_ds, size, channels)
    xte, yte, _ = preprocess(test_ds, size, channels, mean, std)
    val = None
    if val_ds is not None:
        xva, yva, _ = preprocess(val_ds, size, channels, mean, std)
        val = (xva, yva)
    return RunData((xtr, ytr), val, (xte, yte), ds.num_classes, ds.name)


def build_model(c: dict, num_classes: int):
    policy = get_policy(c["precision"])
    return models.create_model(
        c["model"], num_classes=num_classes, **{**policy.model_kwargs, **c["model_kwargs"]}
    )


def load_run(run_dir: str, step: int | None = None, data: RunData | None = None) -> Run:
    """The trained variables of ``run_dir`` at ``step`` (default: its newest checkpoint)."""
    c = read_config(run_dir)
    data = data if data is not None else load_run_data(c)
    model = build_model(c, data.num_classes)
    x = data.train[0]
    steps_per_epoch = max(len(data.train[1]) // c["batch_size"], 1)
    lr = make_schedule(
        c["schedule"],
        c["learning_rate"],
        steps_per_epoch * c["epochs"],
        int(c["warmup_epochs"] * steps_per_epoch),
    )
    tx = make_optimizer(c["optimizer"], lr, c["weight_decay"], grad_clip=c["grad_clip"] or None)
    template = create_train_state(
        model,
        tx,
        (1, *x.shape[1:]),
        seed=c["seed"],
        dynamic_scale=init_dynamic_scale(get_policy(c["precision"])),
    )
    # reading only: keep everything that is there
    ckpt = Checkpointer(os.path.join(run_dir, "checkpoints"), keep=1000, keep_best=0)
    try:
        restored = ckpt.restore(template, step=step)
    finally:
        ckpt.close()
    state, got = restored[0], int(restored[1])
    variables = {"params": state.params}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    return Run(
        os.path.abspath(run_dir), c, model, variables, got, data.num_classes, tuple(x.shape[1:])
    )
