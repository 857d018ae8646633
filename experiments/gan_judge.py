"""The DCGAN experiment's judge: a LeNet-5 trained on real digits by the training engine, and
the wrapper that gives the GAN task its logits and features of images in ``[0, 1]``.

``train_or_load_judge(directory, epochs)`` trains it with ``experiments/configs/lenet_mnist.py``
(the classification task on the :class:`jaxcnn.train.Trainer`: the bundled MNIST test set, its
first 8,000 digits for training with 10% held out for validation, the last 2,000 for test),
continues an interrupted judge run there, or reuses a finished one (read back as
``experiments.runs.load_run`` reads any run: the checkpoint selected on validation, and the
run's own evaluation transform, so the judge standardises exactly as it was trained). A
finished run trained with another config is refused, naming the keys that differ.

``meets_target`` is the experiment's target for a set of samples: at least 80% confident and
every class between 5% and 15% of the samples.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.train.config import ConfigError, Field

__all__ = [
    "JUDGE_FIELDS",
    "Classifier",
    "judge_config",
    "meets_target",
    "train_or_load_judge",
]

# the experiment's config keys for its judge (beside the GAN task's)
JUDGE_FIELDS: dict[str, Field] = {
    "classifier_epochs": Field(
        10,
        "epochs of the LeNet-5 judge (experiments/configs/lenet_mnist.py); a finished judge in "
        "classifier_workdir must have been trained for as many",
        lambda v: None if v >= 1 else ">= 1",
    ),
    "classifier_workdir": Field(
        "",
        "the judge's work directory ('': <workdir>_judge); trained there unless it holds a "
        "finished judge run",
    ),
}


class Classifier:
    """A trained classifier as the judge: ``judge(images01) -> (logits, features)``.

    ``model`` is the classifier module (e.g. ``create_model("lenet5_modern")``) with its
    ``variables``; ``mean``/``std`` the standardisation it was trained with (applied to images
    in ``[0, 1]``, after padding each side by ``pad`` pixels of background when the classifier
    takes larger inputs). Features are the last entry of the ``features_only=True`` outputs (F6
    for LeNet-5), computed with the same parameters (the head is simply not used). ``info``:
    where the judge comes from, for ``metrics.json``.
    """

    def __init__(
        self,
        model,
        variables: dict,
        mean=0.0,
        std=1.0,
        batch_size: int = 500,
        pad: int = 0,
        info: dict | None = None,
    ):
        self.model, self.variables, self.batch_size = model, variables, batch_size
        self.mean = jnp.asarray(mean, jnp.float32)
        self.std = jnp.asarray(std, jnp.float32)
        self.pad, self.info = int(pad), dict(info or {})
        feat_model = model.clone(features_only=True)

        def run(v, x01):
            x = (x01 - self.mean) / self.std
            return model.apply(v, x, train=False), feat_model.apply(v, x, train=False)[-1]

        self._run = jax.jit(run)

    def __call__(self, images01) -> tuple[np.ndarray, np.ndarray]:
        """``(logits, features)`` for images in ``[0, 1]`` (NHWC), in fixed-size batches."""
        images01 = np.asarray(images01, np.float32)
        if self.pad:
            p = self.pad
            images01 = np.pad(images01, ((0, 0), (p, p), (p, p), (0, 0)))
        n, bs = len(images01), self.batch_size
        logits, feats = [], []
        for i in range(0, n, bs):
            x = images01[i : i + bs]
            pad = bs - len(x)
            if pad:
                x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
            lg, ft = jax.device_get(self._run(self.variables, x))
            logits.append(lg[: bs - pad])
            feats.append(ft[: bs - pad].reshape(bs - pad, -1))
        return np.concatenate(logits), np.concatenate(feats)


def meets_target(ev: dict) -> bool:
    """The experiment's target for a set of samples: >= 80% confident, every class 5%-15%."""
    return bool(
        ev["confident_share"] >= 0.8
        and ev["min_class_share"] >= 0.05
        and ev["max_class_share"] <= 0.15
    )


def judge_config(epochs: int, data_dir: str = "", **overrides) -> dict:
    """``experiments/configs/lenet_mnist.py`` with ``epochs``, the GAN's MNIST folder
    (``data_dir``, '' for the bundled set) and ``overrides``."""
    from experiments.configs import lenet_mnist

    c = lenet_mnist.get_config().to_dict()
    c.update(epochs=int(epochs), data_dir=data_dir, **overrides)
    return c


def _fields():
    from jaxcnn.tasks import Classification
    from jaxcnn.train import config as config_lib

    return config_lib.schema(Classification.fields)


def _differences(saved: dict, wanted: dict) -> list[str]:
    """The keys that change a judge run (and ``epochs``) where two configs differ."""
    from jaxcnn.train import config as config_lib

    fields = _fields()
    a = config_lib.validate(saved, fields)
    b = config_lib.validate(wanted, fields)
    fa = {**config_lib.fingerprint(a, fields), "epochs": a["epochs"]}
    fb = {**config_lib.fingerprint(b, fields), "epochs": b["epochs"]}
    return config_lib.diff_fingerprints(fa, fb)


def train_or_load_judge(
    directory: str, epochs: int, data_dir: str = "", *, progress: bool = False, **overrides
) -> Classifier:
    """The LeNet-5 judge of ``directory``: trained there by the engine when it holds no run,
    resumed when it holds an interrupted one, read back when it holds a finished one (which
    must have been trained with the same config: :class:`ConfigError` otherwise)."""
    from experiments import runs
    from jaxcnn.tasks import Classification
    from jaxcnn.train.trainer import Trainer

    cfg = judge_config(epochs, data_dir, progress=progress, **overrides)
    metrics_path = os.path.join(directory, "metrics.json")
    metrics = {}
    if os.path.exists(metrics_path):
        with open(metrics_path) as f:
            metrics = json.load(f)
    if "final" in metrics:
        diff = _differences(metrics.get("config", {}), cfg)
        if diff:
            raise ConfigError(
                f"the judge in {directory} was trained with another config ({'; '.join(diff)}): "
                f"set classifier_epochs (or data_dir) as it was to reuse it, or "
                f"--classifier_workdir=<a new directory> to train a new one"
            )
    else:
        resume = os.path.isdir(os.path.join(directory, "checkpoints")) and any(
            p.isdigit() for p in os.listdir(os.path.join(directory, "checkpoints"))
        )
        print(
            f"{'continuing' if resume else 'training'} the LeNet-5 judge ({epochs} epochs) in "
            f"{directory}",
            flush=True,
        )
        Trainer(Classification(), cfg, directory, resume=resume).run()
        with open(metrics_path) as f:
            metrics = json.load(f)
    final = metrics["final"]
    selected = final.get("selected") or {}
    run = runs.load_run(directory, step=selected.get("step"))
    pre = runs.run_preprocess(run.config, runs.load_run_data(run.config))
    h, w = pre.size
    if pre.channels != 1 or h != w or h < 28 or (h - 28) % 2:
        raise ValueError(
            f"the judge in {directory} takes {h}x{w}x{pre.channels} inputs; a digit judge "
            f"takes 28x28x1 (or a square of one channel padded evenly around it)"
        )
    acc = selected.get("test_accuracy", final.get("test_accuracy"))
    info = {
        "directory": os.path.abspath(directory),
        "model": run.config["model"],
        "step": run.step,
        "epochs": run.config["epochs"],
        "test_accuracy": acc,
    }
    print(f"LeNet-5 judge from {directory} (step {run.step}, test accuracy {acc:.4f})", flush=True)
    return Classifier(run.model, run.variables, pre.mean, pre.std, pad=(h - 28) // 2, info=info)
