"""Load a finished training run from its work directory: config, model, trained variables, data.

Used by ``experiments.evaluate``, ``experiments.quantize`` and ``experiments.prune`` (which
write their results with :func:`save_json`). A run is
what ``python -m experiments.train --workdir DIR`` (the classification task on the
:class:`jaxcnn.train.Trainer`) leaves: ``DIR/metrics.json`` (its ``config`` is the complete,
validated config of the run; its ``facts`` the number of classes and the input shape) and
``DIR/checkpoints/``. The parameters and BatchNorm statistics are read from a checkpoint as
saved (no optimizer is rebuilt) and checked against the model the config builds.

Data: the run's three splits as :func:`jaxcnn.data.splits_from_config` makes them from its
config (the published splits; the validation split is the dataset's own or the seeded,
stratified ``validation_split`` of train), through the run's evaluation transform
(:func:`jaxcnn.data.preprocess_from_config`: same size, channels and normalisation). The
validation split calibrates and may select; the test split is for reporting only. A split is
decoded into arrays when first asked for (these tools run on small evaluation sets).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn import data as data_lib
from jaxcnn import models
from jaxcnn.checkpoint import Checkpointer
from jaxcnn.train import config as config_lib
from jaxcnn.train.precision import get_policy

__all__ = [
    "DATA_KEYS",
    "EVAL_TRANSFORM_KEYS",
    "Run",
    "RunData",
    "load_run",
    "load_run_data",
    "read_config",
    "save_json",
]

# config keys that decide the examples a run saw and how they were transformed (the members of
# one ensemble must agree on them; the transform each model derives from them is compared too)
DATA_KEYS = (
    "dataset",
    "data_dir",
    "validation_split",
    "test_split",
    "split_seed",
    "num_train",
    "input_size",
    "channels",
    "transform",
    "mean",
    "std",
    "crop_pct",
    "interpolation",
)
SPLITS = ("train", "validation", "test")
# the fields of jaxcnn.data.Preprocess that decide an evaluation input
EVAL_TRANSFORM_KEYS = ("size", "channels", "kind", "mean", "std", "crop_pct", "interpolation")


@dataclasses.dataclass
class RunData:
    """The splits of a run (:class:`jaxcnn.data.Splits`) and its evaluation transform;
    ``get(split)`` / ``.train`` / ``.validation`` / ``.test`` give ``(images, labels)`` arrays
    (float32 NHWC as the model sees them, int32), decoded once and kept."""

    splits: Any
    pre: Any
    _arrays: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.splits.name

    @property
    def num_classes(self) -> int:
        return self.splits.num_classes

    def source(self, split_name: str):
        if split_name not in SPLITS:
            raise ValueError(f"split must be train, validation or test, got {split_name!r}")
        src = getattr(self.splits, split_name)
        if src is None:
            raise ValueError(
                f"this run's config leaves no validation split on {self.name} "
                f"(validation_split=0); use the test or train split"
            )
        return src

    def get(self, split_name: str) -> tuple[np.ndarray, np.ndarray]:
        if split_name not in self._arrays:
            self._arrays[split_name] = _decode(self.source(split_name), self.pre)
        return self._arrays[split_name]

    @property
    def train(self) -> tuple[np.ndarray, np.ndarray]:
        return self.get("train")

    @property
    def validation(self) -> tuple[np.ndarray, np.ndarray] | None:
        return None if self.splits.validation is None else self.get("validation")

    @property
    def test(self) -> tuple[np.ndarray, np.ndarray]:
        return self.get("test")


def _decode(source, pre, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Every example of ``source`` through ``pre`` (eval mode), in order, as two arrays."""
    images, labels = [], []
    it = data_lib.eval_iterator(source, pre, batch_size, process_index=0, process_count=1)
    for b in it:
        keep = b["mask"] > 0
        images.append(b["image"][keep])
        labels.append(b["label"][keep])
    return np.concatenate(images), np.concatenate(labels).astype(np.int32)


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


def _fields():
    from jaxcnn.tasks import Classification

    return config_lib.schema(Classification.fields)


def _metrics(run_dir: str) -> dict:
    path = os.path.join(run_dir, "metrics.json")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{run_dir} is not a training run directory (no metrics.json); "
            "pass the --workdir of python -m experiments.train"
        )
    with open(path) as f:
        return json.load(f)


def save_json(path: str, obj) -> None:
    """Write the results ``obj`` of a tool above to ``path`` as JSON (its ``--json`` flag) and
    print ``wrote PATH``."""
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
    print(f"wrote {path}")


def read_config(run_dir: str) -> dict:
    """The run's config with every key of the classification schema (defaults filled in)."""
    m = _metrics(run_dir)
    task = m.get("task", "classification")
    if task != "classification":
        raise ValueError(f"{run_dir} is a {task} run; these tools read classification runs")
    return config_lib.validate(m["config"], _fields())


def load_run_data(c: dict) -> RunData:
    """The splits and the evaluation transform of config ``c`` (as the run made them)."""
    c = config_lib.validate(c, _fields())
    splits = data_lib.splits_from_config(c)
    pre = data_lib.preprocess_from_config(c, models.model_info(c["model"]), splits)
    return RunData(splits, pre)


def run_preprocess(c: dict, data: RunData):
    """The evaluation transform the run of config ``c`` applies to ``data``'s splits."""
    c = config_lib.validate(c, _fields())
    return data_lib.preprocess_from_config(c, models.model_info(c["model"]), data.splits)


def build_model(c: dict, num_classes: int):
    policy = get_policy(c["precision"])
    return models.create_model(
        c["model"], num_classes=num_classes, **{**policy.model_kwargs, **c["model_kwargs"]}
    )


def load_run(run_dir: str, step: int | None = None) -> Run:
    """The trained variables of ``run_dir`` at ``step`` (default: its newest checkpoint)."""
    m = _metrics(run_dir)
    c = read_config(run_dir)
    facts = m.get("facts") or {}
    if "num_classes" not in facts or "input_shape" not in facts:
        raise ValueError(
            f"{run_dir}/metrics.json has no facts (num_classes, input_shape): not written by "
            f"the training engine (python -m experiments.train)"
        )
    num_classes, input_shape = int(facts["num_classes"]), tuple(facts["input_shape"])
    model = build_model(c, num_classes)
    # reading only: keep everything that is there
    ckpt = Checkpointer(os.path.join(run_dir, "checkpoints"), keep=1000, keep_best=0)
    try:
        restored = ckpt.restore(None, step=step)
    finally:
        ckpt.close()
    tree, got = restored.state, int(restored.step)
    variables = {"params": tree["params"]}
    if tree.get("batch_stats"):
        variables["batch_stats"] = tree["batch_stats"]
    _check_structure(run_dir, got, model, variables, input_shape)
    variables = jax.tree.map(jnp.asarray, variables)  # jax arrays: Qwix finds params by identity
    return Run(os.path.abspath(run_dir), c, model, variables, got, num_classes, input_shape)


def _check_structure(run_dir, step, model, variables, input_shape) -> None:
    """The checkpoint's variables must be the ones the config's model has (same paths, shapes)."""
    want = jax.eval_shape(
        lambda: model.init(jax.random.key(0), np.zeros((1, *input_shape), np.float32))
    )
    want = {k: v for k, v in want.items() if k in ("params", "batch_stats") and v}
    shapes = lambda t: {  # noqa: E731
        jax.tree_util.keystr(p): tuple(np.shape(x))
        for p, x in jax.tree_util.tree_flatten_with_path(t)[0]
    }
    got, exp = shapes(variables), shapes(want)
    if got != exp:
        diff = sorted(set(got.items()) ^ set(exp.items()))[:4]
        raise ValueError(
            f"{run_dir} step {step}: the checkpoint's variables do not match the model its "
            f"config builds (first differences: {diff})"
        )
