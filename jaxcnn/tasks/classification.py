"""Image classification on the :class:`jaxcnn.train.Trainer`: any registered classifier on any
dataset :func:`jaxcnn.data.load_splits` reads (bundled digits and MNIST, IDX files, image
folders, TFDS), through the grain input pipeline.

Selection uses the validation split only (its accuracy ranks the checkpoints and drives early
stopping); the test split is evaluated at the end, on the last state and on the selected one.
``metrics.json`` gets the per-split provenance, the test confusion matrix and per-class accuracy;
the work directory ``curves.png`` and ``confusion.png``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn import data as data_lib
from jaxcnn import models
from jaxcnn.train import config as config_lib
from jaxcnn.train.config import ConfigError, Field
from jaxcnn.train.losses import classification_metrics, confusion_matrix
from jaxcnn.train.optim import make_optimizer, make_schedule
from jaxcnn.train.precision import get_policy, init_dynamic_scale
from jaxcnn.train.remat import check_remat, remat_blocks
from jaxcnn.train.state import create_train_state
from jaxcnn.train.steps import train_step_fn
from jaxcnn.train.trainer import Context, Task
from jaxcnn.transfer import Applied, Plan

__all__ = ["AUGMENT_FIELDS", "CLASSIFICATION_FIELDS", "Classification", "DATA_FIELDS"]


def _auto_or_bool(v):
    return None if v in (-1, 0, 1) or isinstance(v, bool) else "-1 (auto), true or false"


# The input keys every image task reads: jaxcnn.data.splits_from_config and
# preprocess_from_config read exactly these (jaxcnn.data.CONFIG_DEFAULTS has their defaults).
DATA_FIELDS: dict[str, Field] = {
    "dataset": Field(
        "digits",
        "digits | mnist (both bundled) | mnist_idx (+ data_dir) | idx:<folder> | folder "
        "(+ data_dir) | tfds:NAME",
    ),
    "data_dir": Field("", "folder of the dataset (mnist_idx, folder) or TFDS' data_dir"),
    "validation_split": Field(
        0.1,
        "held out of train for model selection when the dataset has no validation split of "
        "its own: fraction or count (seeded, stratified); 0: no validation, no selection",
        config_lib._fraction_or_count,
    ),
    "test_split": Field(
        None,
        "test fraction or count for datasets without a published test split (None: the "
        "dataset's default: digits 20% seeded, mnist the last 2,000)",
        lambda v: None if v is None else config_lib._fraction_or_count(v),
        type=(float, int, type(None)),
    ),
    "split_seed": Field(0, "seed of the validation (and test) split"),
    "num_train": Field(
        0, "use only the first N training examples (0: all)", config_lib._at_least(0)
    ),
    "input_size": Field(
        (), "(height, width) fed to the model; (): the model's default", config_lib._size
    ),
    "channels": Field(
        0, "input channels (0: model_kwargs['in_channels'] or the model's)", config_lib._at_least(0)
    ),
    "transform": Field(
        "auto",
        "host transforms: auto (by dataset), mnist, cifar, imagenet or none",
        config_lib._one_of("auto", "mnist", "cifar", "imagenet", "none"),
    ),
    "augment_shift": Field(
        -1,
        "random translation by up to N pixels (mnist/cifar); -1: 4 for cifar, else 0",
        config_lib._at_least(-1),
    ),
    "augment_flip": Field(
        -1,
        "random horizontal flips: true/false; -1: on for cifar and imagenet",
        _auto_or_bool,
        type=(bool, int),
    ),
    "mean": Field(
        (),
        "per-channel mean on the [0, 1] scale; (): the model's, ImageNet's "
        "(imagenet transform) or computed on the train split",
    ),
    "std": Field((), "per-channel std on the [0, 1] scale; (): as mean"),
    "crop_pct": Field(
        0.0,
        "imagenet eval: centre crop of size / crop_pct (0: the model's, else 0.875)",
        lambda v: None if 0 <= v <= 1 else "in [0, 1]",
    ),
    "interpolation": Field(
        "", "resize interpolation: bilinear, bicubic, nearest... ('': the model's, else bilinear)"
    ),
    "num_workers": Field(
        0,
        "input worker processes (0: decode in the training process)",
        config_lib._at_least(0),
        resume_ok=True,
    ),
}


def _prob(v):
    return None if 0.0 <= v <= 1.0 else "in [0, 1]"


def _jitter(v):
    if isinstance(v, (int, float)):
        return None if v >= 0 else ">= 0"
    return None if len(v) in (3, 4) and min(v) >= 0 else "a number or 3-4 numbers >= 0"


def _transfer_spec(v: str) -> str | None:
    if not v:
        return None
    try:
        Plan.parse(v)
    except ValueError as e:
        return f"a transfer plan spec ({e})"
    return None


# Host-side augmentation policies (jaxcnn.data.augment reads these; train mode only).
AUGMENT_FIELDS: dict[str, Field] = {
    "augment_policy": Field(
        "none",
        "none, randaugment, trivialaugment or autoaugment",
        config_lib._one_of("none", "randaugment", "trivialaugment", "autoaugment"),
    ),
    "randaugment_num_ops": Field(2, "RandAugment: ops per image", config_lib._at_least(0)),
    "randaugment_magnitude": Field(
        9.0,
        "RandAugment: magnitude on timm's 0-10 scale",
        lambda v: None if 0 <= v <= 10 else "in [0, 10]",
    ),
    "randaugment_magnitude_std": Field(
        0.5,
        "RandAugment: noise on the magnitude per op (inf: uniform)",
        lambda v: None if v >= 0 else ">= 0",
    ),
    "randaugment_prob": Field(0.5, "RandAugment: probability each chosen op is applied", _prob),
    "randaugment_increasing": Field(True, "RandAugment: timm's increasing-severity op set"),
    "color_jitter": Field(
        0.0,
        "brightness = contrast = saturation strength (or a 3-4 tuple with hue)",
        _jitter,
        type=(float, int, tuple, list),
    ),
    "random_erasing": Field(0.0, "random erasing probability per image", _prob),
    "random_erasing_mode": Field(
        "pixel",
        "erased values: const (0), rand (per channel) or pixel (per pixel)",
        config_lib._one_of("const", "rand", "pixel"),
    ),
    "random_erasing_area": Field(
        (0.02, 1 / 3),
        "erased fraction of the image (min, max)",
        lambda v: (
            None if len(v) == 2 and 0 < v[0] <= v[1] <= 1 else "(min, max) with 0 < min <= max <= 1"
        ),
    ),
    "random_erasing_min_aspect": Field(
        0.3, "aspect ratio in [min, 1/min]", lambda v: None if 0 < v <= 1 else "in (0, 1]"
    ),
    "random_erasing_count": Field(1, "at most this many erased boxes", config_lib._at_least(1)),
}

CLASSIFICATION_FIELDS: dict[str, Field] = {
    **DATA_FIELDS,
    **AUGMENT_FIELDS,
    "label_smoothing": Field(0.0, "label smoothing of the cross-entropy", config_lib._in_unit),
    "aux_weight": Field(
        -1.0,
        "weight of auxiliary classifiers (GoogLeNet, Inception v3); -1: the model's default",
        lambda v: None if v == -1 or v >= 0 else ">= 0 or -1 (the model's default)",
    ),
    "transfer": Field(
        "",
        "transfer-learning plan over the starting weights (init_from): linear_probe, finetune, "
        "finetune_lwd[:decay], gradual[:phases] or lora[:rank], with ,key=value options "
        "(docs/transfer.md); '': everything trains as usual",
        _transfer_spec,
    ),
}


def _eval_sums(state, batch, num_classes: int):
    logits = state.apply_fn(state.variables, batch["image"], train=False)
    w = batch["mask"]
    m = classification_metrics(logits, batch["label"], w)
    m["confusion"] = confusion_matrix(logits, batch["label"], w, num_classes)
    return m


class Classification(Task):
    """Softmax classification of ``{"image", "label"}`` examples.

    ``splits`` (a :class:`jaxcnn.data.Splits`) replaces the config's dataset keys, for data
    built in Python (the transfer study, tests); ``variables`` starts from given weights
    (``init_from`` does the same from a file). ``plan`` (a :class:`jaxcnn.transfer.Plan` or
    its spec) replaces the config's ``transfer`` key: the starting weights are trained under
    it (frozen parts hold no optimizer state and get no gradient; phases of gradual
    unfreezing are picked on device from the step, in one compiled step).
    """

    name = "classification"
    fields = CLASSIFICATION_FIELDS
    selection = ("accuracy", "max")

    def __init__(
        self, splits: Any = None, variables: dict | None = None, plan: Plan | str | None = None
    ):
        self._given_splits = splits
        self._given_variables = variables
        self._given_plan = plan
        self.transfer: Applied | None = None

    # -- set-up ------------------------------------------------------------------------------
    def build(self, ctx: Context) -> None:
        cfg = ctx.cfg
        self.ctx = ctx
        self.info = models.model_info(cfg["model"])
        if self.info.task != "classification":
            raise ConfigError(
                f"model {cfg['model']!r} is a {self.info.task} model; the classification task "
                f"needs a classifier"
            )
        if "num_classes" in cfg["model_kwargs"]:
            raise ConfigError(
                "config key 'model_kwargs': num_classes comes from the dataset's labels, got "
                f"model_kwargs.num_classes={cfg['model_kwargs']['num_classes']!r}; drop it"
            )
        sp = self._given_splits or data_lib.splits_from_config(cfg)
        self.data = sp
        if sp.validation is None and cfg["early_stopping_patience"]:
            raise ConfigError(
                "early_stopping_patience needs a validation split (validation_split > 0); "
                "selection never uses the test split"
            )
        self.pre = data_lib.preprocess_from_config(cfg, self.info, sp)
        policy = get_policy(cfg["precision"])
        self.policy = policy
        model = models.create_model(
            cfg["model"],
            num_classes=sp.num_classes,
            **{**policy.model_kwargs, **cfg["model_kwargs"]},
        )
        remat = check_remat(cfg["remat"] if cfg["remat"] != "none" else "")
        if remat == "blocks":
            model = remat_blocks(model)
        self.remat = None if remat == "blocks" else remat
        self.model = model
        self.input_shape = (1, *self.pre.size, self.pre.channels)
        self.steps_per_epoch = data_lib.steps_per_epoch(len(sp.train), cfg["batch_size"])
        if self.steps_per_epoch < 1:
            raise ConfigError(
                f"batch_size {cfg['batch_size']} is larger than the {len(sp.train)} training "
                f"examples"
            )
        total = self.steps_per_epoch * cfg["epochs"]
        self.total_steps = total
        self.plan = self._plan(cfg)
        self.lr = make_schedule(
            cfg["schedule"],
            cfg["learning_rate"],
            total,
            int(cfg["warmup_epochs"] * self.steps_per_epoch),
        )
        self.tx = make_optimizer(
            cfg["optimizer"], self.lr, cfg["weight_decay"], grad_clip=cfg["grad_clip"] or None
        )
        aux = cfg["aux_weight"] if cfg["aux_weight"] >= 0 else self.info.aux_weight
        if aux and not cfg["model_kwargs"].get("aux_logits", True):
            aux = 0.0
        self.aux_weight = float(aux)
        self._eval_step = ctx.jit_eval(
            lambda state, batch: _eval_sums(state, batch, sp.num_classes)
        )

    def _plan(self, cfg) -> Plan | None:
        spec = self._given_plan if self._given_plan is not None else cfg["transfer"]
        if not spec:
            return None
        if self._given_variables is None and not cfg["init_from"]:
            raise ConfigError(
                f"config key 'transfer': the plan {str(spec)!r} transfers pretrained weights; "
                f"set init_from (a checkpoint or weight file)"
            )
        try:
            return Plan.parse(spec)
        except ValueError as e:
            raise ConfigError(f"config key 'transfer': {e}") from None

    def facts(self) -> dict:
        sp = self.data
        return {
            "num_classes": sp.num_classes,
            "input_shape": list(self.input_shape[1:]),
            "num_train": len(sp.train),
            "num_validation": 0 if sp.validation is None else len(sp.validation),
            "num_test": len(sp.test),
            "params": models.count_params(self.model, self.input_shape),
        }

    def describe(self) -> dict:
        out: dict[str, Any] = {
            "dataset": self.data.name,
            "splits": dict(self.data.provenance),
            "class_names": list(self.data.class_names),
        }
        if self.transfer is not None:
            out["transfer"] = {
                "plan": self.transfer.plan.label,
                "phase_starts": list(self.transfer.starts),
                "groups": self.transfer.rows(),
                "trainable_params": self.transfer.trainable_params(),
                "optimizer_state_bytes": self.transfer.optimizer_state_bytes(),
            }
        return out

    def init_state(self):
        cfg = self.ctx.cfg
        variables = self._given_variables
        if variables is not None:
            # a copy: the train step donates the state's buffers; the caller's arrays stay usable
            variables = jax.tree.map(jnp.array, variables)
        elif cfg["init_from"]:
            from jaxcnn.interop import load_variables

            # strict=False: a classifier for another class count is replaced by a fresh one
            variables = load_variables(
                cfg["init_from"], self.model, strict=False, input_shape=self.input_shape[1:]
            )
        if self.plan is None:
            return create_train_state(
                self.model,
                self.tx,
                self.input_shape,
                seed=cfg["seed"],
                variables=variables,
                dynamic_scale=init_dynamic_scale(self.policy),
            )
        if variables is None:  # build() refused a plan without starting weights
            raise ConfigError("config key 'transfer' needs starting weights (init_from)")
        # the config's optimizer per plan group (each on the run's schedule from its start);
        # clipping over all trainable gradients together
        self.transfer = self.plan.apply(
            self.model,
            variables,
            lambda lr: make_optimizer(cfg["optimizer"], lr, cfg["weight_decay"]),
            self.lr,
            input_shape=self.input_shape,
            steps=self.total_steps,
            seed=cfg["seed"],
            grad_clip=cfg["grad_clip"],
        )
        self.tx = self.transfer.tx
        if self.ctx.main:
            print(self.transfer.table(), flush=True)
        return self.transfer.init_state(
            seed=cfg["seed"], dynamic_scale=init_dynamic_scale(self.policy), copy=False
        )

    # -- training ----------------------------------------------------------------------------
    def step_fn(self, state, batch):
        cfg = self.ctx.cfg

        def step(state, batch, trainable=None):
            return train_step_fn(
                state,
                batch,
                label_smoothing=cfg["label_smoothing"],
                aux_weight=self.aux_weight,
                grad_accum_steps=cfg["grad_accum_steps"],
                remat=self.remat,
                trainable=trainable,
            )

        if self.transfer is None:
            return step(state, batch)
        return self.transfer.step(step)(state, batch)

    def train_batches(self, data_state):
        cfg = self.ctx.cfg
        return data_lib.train_iterator(
            self.data.train,
            self.pre,
            cfg["batch_size"],
            seed=cfg["seed"],
            num_workers=cfg["num_workers"],
            state=data_state,
        )

    def summarize(self, sums: dict) -> dict:
        n = max(float(sums["count"]), 1.0)
        return {"loss": float(sums["loss_sum"]) / n, "accuracy": float(sums["correct"]) / n}

    # -- evaluation --------------------------------------------------------------------------
    def splits(self) -> tuple[str, ...]:
        return ("validation", "test") if self.data.validation is not None else ("test",)

    def evaluate(self, state, split: str) -> dict:
        cfg = self.ctx.cfg
        source = self.data.validation if split == "validation" else self.data.test
        batches = data_lib.eval_iterator(
            source, self.pre, cfg["eval_batch_size"], num_workers=cfg["num_workers"]
        )
        s = self.ctx.sum_over(self._eval_step, state, batches)
        n = float(s["count"])
        out: dict[str, Any] = {
            "loss": float(s["loss_sum"]) / n,
            "accuracy": float(s["correct"]) / n,
        }
        if split == "test":
            cm = np.rint(np.asarray(s["confusion"])).astype(int)
            out["confusion"] = cm.tolist()
            rows = cm.sum(1)
            out["per_class_accuracy"] = [
                float(cm[i, i] / rows[i]) if rows[i] else None for i in range(len(cm))
            ]
            out["count"] = int(n)
        return out

    def finish(self, state, result: dict, workdir: str) -> None:
        import os

        from jaxcnn.train.plots import can_plot, plot_confusion, plot_run_curves

        if not can_plot("curves.png and confusion.png"):
            return
        plot_run_curves(workdir, ("loss", "accuracy"))
        plot_confusion(
            np.asarray(result["test_confusion"]),
            os.path.join(workdir, "confusion.png"),
            self.data.class_names,
            f"{self.ctx.cfg['model']} on {self.data.name}: test accuracy "
            f"{result['test_accuracy']:.4f}",
        )
