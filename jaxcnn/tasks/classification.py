"""Image classification on the :class:`jaxcnn.train.Trainer`: any registered classifier on any
dataset :func:`jaxcnn.data.load_splits` reads (bundled digits and MNIST, IDX files, image
folders, TFDS), through the grain input pipeline.

Selection uses the validation split only (its accuracy ranks the checkpoints and drives early
stopping); the test split is evaluated at the end, on the last state and on the selected one.
``metrics.json`` gets the per-split provenance, the test confusion matrix and per-class accuracy,
top-5 accuracy with more than 5 classes; the work directory ``curves.png`` and ``confusion.png``.

The training recipes' ingredients are config keys (docs/recipes.md): host augmentation policies
(:data:`AUGMENT_FIELDS`), Mixup/CutMix on device with soft targets (:data:`MIXUP_FIELDS`; the
train accuracy then counts a prediction right when it is the mixed target's dominant label), a
weight EMA updated after every optimizer update, evaluated beside the raw weights as
``ema_*`` metrics and selected on by default (:data:`EMA_FIELDS`), the optimizer's finer keys
(:data:`jaxcnn.train.config.OPTIMIZER_FIELDS`) and ``drop_path_rate``.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn import data as data_lib
from jaxcnn import models
from jaxcnn.train import config as config_lib
from jaxcnn.train.config import OPTIMIZER_FIELDS, ConfigError, Field
from jaxcnn.train.ema import ema_from_config, ema_update
from jaxcnn.train.losses import classification_metrics, confusion_matrix
from jaxcnn.train.metrics import topk_correct
from jaxcnn.train.mixup import (
    mix_batch,
    mixup_from_config,
    soft_cross_entropy,
    soft_target_metrics,
)
from jaxcnn.train.optim import learning_rate_at, optimizer_factory, optimizer_from_config
from jaxcnn.train.precision import get_policy, init_dynamic_scale
from jaxcnn.train.remat import check_remat, remat_blocks
from jaxcnn.train.state import create_train_state
from jaxcnn.train.steps import train_step_fn
from jaxcnn.train.trainer import Context, Task
from jaxcnn.transfer import Applied, Plan

__all__ = [
    "AUGMENT_FIELDS",
    "CLASSIFICATION_FIELDS",
    "Classification",
    "DATA_FIELDS",
    "EMA_FIELDS",
    "MIXUP_FIELDS",
]


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


def _alpha(v):
    return None if math.isfinite(v) and v >= 0 else "a finite number >= 0 (0: off)"


# Mixup/CutMix on device, per batch (jaxcnn.train.mixup reads these with label_smoothing).
MIXUP_FIELDS: dict[str, Field] = {
    "mixup_alpha": Field(0.0, "Mixup: Beta(alpha, alpha) of the mixing weight (0: off)", _alpha),
    "cutmix_alpha": Field(0.0, "CutMix: Beta(alpha, alpha) of the kept area (0: off)", _alpha),
    "mixup_prob": Field(1.0, "probability that a batch is mixed (Mixup or CutMix)", _prob),
    "mixup_switch_prob": Field(
        0.5, "with both alphas set: probability of CutMix instead of Mixup", _prob
    ),
}

# Weight EMA (jaxcnn.train.ema reads the ema_* keys; select_on_ema is the task's).
EMA_FIELDS: dict[str, Field] = {
    "ema_decay": Field(
        0.0,
        "decay of the weight EMA, updated after every optimizer update (0: no EMA)",
        config_lib._in_unit,
    ),
    "ema_warmup": Field(False, "EMA warm-up: decay 1 - (1 + s/gamma)^-power (timm ModelEmaV3)"),
    "ema_warmup_gamma": Field(1.0, "EMA warm-up gamma", config_lib._positive_finite),
    "ema_warmup_power": Field(2.0 / 3.0, "EMA warm-up power", config_lib._positive_finite),
    "ema_min_decay": Field(0.0, "EMA warm-up: lowest decay", config_lib._in_unit),
    "ema_update_after_step": Field(
        0,
        "updates before the EMA starts averaging (it copies the weights until then)",
        config_lib._at_least(0),
    ),
    "select_on_ema": Field(
        -1,
        "rank checkpoints and stop early on the EMA's validation accuracy (val_ema_accuracy) "
        "instead of the raw weights'; -1: when ema_decay > 0",
        _auto_or_bool,
        type=(bool, int),
    ),
}

CLASSIFICATION_FIELDS: dict[str, Field] = {
    **OPTIMIZER_FIELDS,
    **DATA_FIELDS,
    **AUGMENT_FIELDS,
    "label_smoothing": Field(0.0, "label smoothing of the cross-entropy", config_lib._in_unit),
    **MIXUP_FIELDS,
    **EMA_FIELDS,
    "drop_path_rate": Field(
        -1.0,
        "stochastic depth rate of the last block (convnext, swin, vit, efficientnet, "
        "mobilenet); -1: the model's default",
        lambda v: None if v == -1 or 0 <= v < 1 else "in [0, 1) or -1 (the model's default)",
    ),
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
    """Sums of one evaluation batch: loss, top-1 (and top-5 with more than 5 classes), the
    confusion matrix; with an EMA in the state, the EMA's loss and accuracies as ``ema_*``."""
    x, y, w = batch["image"], batch["label"], batch["mask"]

    def sums(variables, prefix=""):
        logits = state.apply_fn(variables, x, train=False)
        m = classification_metrics(logits, y, w)
        if num_classes > 5:
            m["correct_top5"] = jnp.sum(topk_correct(logits, y, 5) * w)
        out = {f"{prefix}{k}": v for k, v in m.items() if k != "count"}
        return out, logits

    m, logits = sums(state.variables)
    m["count"] = jnp.sum(w)
    m["confusion"] = confusion_matrix(logits, y, w, num_classes)
    if state.ema is not None:
        m.update(sums(state.ema, "ema_")[0])
    return m


def _means(s: dict, prefix: str = "") -> dict:
    n = float(s["count"])
    out = {
        f"{prefix}loss": float(s[f"{prefix}loss_sum"]) / n,
        f"{prefix}accuracy": float(s[f"{prefix}correct"]) / n,
    }
    if f"{prefix}correct_top5" in s:
        out[f"{prefix}top5_accuracy"] = float(s[f"{prefix}correct_top5"]) / n
    return out


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

    def selection_for(self, cfg: dict) -> tuple[str, str] | None:
        """Validation ``ema_accuracy`` with ``select_on_ema`` (by default when there is an
        EMA), else validation ``accuracy``."""
        auto = cfg["select_on_ema"] == -1
        on_ema = cfg["ema_decay"] > 0 if auto else bool(cfg["select_on_ema"])
        if on_ema and not cfg["ema_decay"]:
            raise ConfigError(
                "config key 'select_on_ema': selecting on the EMA needs one (ema_decay > 0)"
            )
        return ("ema_accuracy", "max") if on_ema else self.selection

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
        kwargs = {**policy.model_kwargs, **cfg["model_kwargs"]}
        if cfg["drop_path_rate"] >= 0:
            if "drop_path_rate" in cfg["model_kwargs"]:
                raise ConfigError(
                    "config keys 'drop_path_rate' and 'model_kwargs.drop_path_rate' are both "
                    "set; keep one"
                )
            kwargs["drop_path_rate"] = cfg["drop_path_rate"]
        try:
            model = models.create_model(cfg["model"], num_classes=sp.num_classes, **kwargs)
        except TypeError as e:
            if "drop_path_rate" in kwargs and "'drop_path_rate'" in str(e):
                raise ConfigError(
                    f"config key 'drop_path_rate': model {cfg['model']!r} has no stochastic "
                    f"depth (convnext, swin, vit, efficientnet and mobilenet models have it); "
                    f"leave drop_path_rate at -1"
                ) from None
            raise
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
        self.total_steps = self.steps_per_epoch * cfg["epochs"]
        self.plan = self._plan(cfg)
        self.tx, self.lr = optimizer_from_config(cfg, self.steps_per_epoch)
        self.mix = mixup_from_config(cfg)
        self.ema = ema_from_config(cfg)
        self.num_classes = sp.num_classes
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
                ema=self.ema is not None,
            )
        if variables is None:  # build() refused a plan without starting weights
            raise ConfigError("config key 'transfer' needs starting weights (init_from)")
        # the config's optimizer per plan group (each on the run's schedule from its start);
        # clipping over all trainable gradients together
        self.transfer = self.plan.apply(
            self.model,
            variables,
            optimizer_factory(cfg),
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
            seed=cfg["seed"],
            dynamic_scale=init_dynamic_scale(self.policy),
            copy=False,
            ema=self.ema is not None,
        )

    # -- training ----------------------------------------------------------------------------
    @property
    def phase_starts(self) -> tuple[int, ...]:
        """The transfer plan's phase starts (the engine compiles one step per phase)."""
        return (0,) if self.transfer is None else tuple(self.transfer.starts)

    def step_fn(self, state, batch, phase: int | None = None):
        """The train step (of transfer phase ``phase``); with Mixup/CutMix the batch is mixed
        first (keyed by the step) and the loss takes the soft targets (label smoothing folded
        in); the EMA follows the updated weights."""
        cfg = self.ctx.cfg
        losses: dict[str, Any] = {}
        if self.mix.enabled:
            key = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), 2)
            images, targets, _ = mix_batch(
                key, batch["image"], batch["label"], self.num_classes, self.mix
            )
            batch = {**batch, "image": images, "label": targets}
            losses = {"loss_fn": soft_cross_entropy, "metrics_fn": soft_target_metrics}

        def step(state, batch, trainable=None):
            return train_step_fn(
                state,
                batch,
                label_smoothing=cfg["label_smoothing"],
                aux_weight=self.aux_weight,
                grad_accum_steps=cfg["grad_accum_steps"],
                remat=self.remat,
                trainable=trainable,
                **losses,
            )

        if self.transfer is None:
            new, sums = step(state, batch)
        else:
            new, sums = self.transfer.step(step, phase=phase)(state, batch)
        if self.ema is not None:
            ema = ema_update(new.ema, new.params, new.batch_stats, new.step, **self.ema)
            new = new.replace(ema=ema)
        return new, sums

    def learning_rate(self, step: int) -> float | None:
        return float(learning_rate_at(self.lr, step))

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
        out: dict[str, Any] = _means(s)
        if state.ema is not None:
            out.update(_means(s, "ema_"))
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
