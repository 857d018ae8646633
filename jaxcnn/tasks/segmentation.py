"""Semantic segmentation on the :class:`jaxcnn.train.Trainer`: a U-Net (any registered model
whose ``ModelInfo.task`` is ``"segmentation"``) on canvases of real handwritten digits
(:mod:`jaxcnn.data.canvas`), 11 classes per pixel (background + 10 digits).

The data: the source digits are split first (MNIST: the first 8,000 for training, the last
2,000 held out for the test canvases), then ``validation_split`` of the training digits is held
out (seeded, stratified) for the validation canvases, so selection never sees a test digit.
Every training step draws a fresh batch of canvases from the training digits, deterministic in
``(seed, step)``; an "epoch" is ``steps_per_epoch`` such batches, with a validation pass and a
checkpoint at its end. The loss is the per-pixel cross-entropy (``class_weights``, e.g. a low
weight for the background that is ~94% of the pixels) plus ``dice_weight`` times the soft Dice
loss (:mod:`jaxcnn.train.segmentation`).

Selection uses the validation mean IoU only (best checkpoints, early stopping); the test
canvases are evaluated at the end: pixel accuracy, mean IoU, per-class IoU and Dice and the
confusion matrix, all from one confusion matrix summed over the split. The work directory gets
``metrics.json``, ``curves.png`` and ``predictions.png`` (input / ground truth / prediction
for a few test canvases).
"""

from __future__ import annotations

import math
import os

import jax
import numpy as np

from jaxcnn import models
from jaxcnn.data import canvas as canvas_lib
from jaxcnn.train import config as config_lib
from jaxcnn.train.config import ConfigError, Field
from jaxcnn.train.losses import classification_metrics
from jaxcnn.train.optim import make_optimizer, make_schedule
from jaxcnn.train.segmentation import (
    crop_labels,
    dice_per_class,
    iou_per_class,
    make_seg_loss,
    mean_iou,
    pixel_accuracy,
    predict,
    seg_eval_step_fn,
)
from jaxcnn.train.state import create_train_state
from jaxcnn.train.steps import train_step_fn
from jaxcnn.train.trainer import Context, Task
from jaxcnn.utils import optional_import

__all__ = ["SEGMENTATION_FIELDS", "Segmentation", "plot_predictions"]

NUM_CLASSES = canvas_lib.NUM_CLASSES


def _class_weights(v) -> str | None:
    if len(v) == 0:
        return None
    ok = len(v) == NUM_CLASSES and all(
        isinstance(w, (int, float)) and math.isfinite(w) and w >= 0 for w in v
    )
    return None if ok else f"() or {NUM_CLASSES} finite weights >= 0 (background first)"


def _canvas_size(v) -> str | None:
    return None if v >= 28 else ">= 28 (a digit is 28x28)"


SEGMENTATION_FIELDS: dict[str, Field | None] = {
    "model": Field("unet_small", "a registered segmentation model (unet, unet_bn, unet_small)"),
    "epochs": Field(
        6, "epochs of steps_per_epoch training steps", config_lib._at_least(1), resume_ok=True
    ),
    "steps_per_epoch": Field(
        200,
        "training steps per epoch: canvases are drawn fresh at every step, so an epoch is this "
        "many batches (validation and a checkpoint at its end)",
        config_lib._at_least(1),
    ),
    "batch_size": Field(16, "global training batch size (canvases)", config_lib._at_least(1)),
    "eval_batch_size": Field(
        100, "global evaluation batch size", config_lib._at_least(1), resume_ok=True
    ),
    "learning_rate": Field(3e-3, "peak learning rate", config_lib._positive_finite),
    "source": Field(
        "auto",
        "the digits: mnist (the MNIST test set: bundled, or data_dir), digits (scikit-learn's "
        "8x8 digits scaled to 20x20) or auto (mnist)",
        config_lib._one_of("auto", "mnist", "digits"),
    ),
    "data_dir": Field("", "folder of MNIST IDX files ('': the bundled or shared MNIST test set)"),
    "num_train_digits": Field(
        0,
        "source digits for training and validation; the rest make the test canvases "
        "(0: MNIST's first 8,000, else 80%)",
        config_lib._at_least(0),
    ),
    "validation_split": Field(
        0.1,
        "training digits held out for the validation canvases, a fraction or a count (seeded, "
        "stratified); 0: no validation, no selection",
        config_lib._fraction_or_count,
    ),
    "num_validation": Field(
        500, "fixed validation canvases (of the validation digits)", config_lib._at_least(1)
    ),
    "num_test": Field(
        1000, "fixed test canvases (of the held-out digits)", config_lib._at_least(1)
    ),
    "canvas_size": Field(64, "canvas side in pixels", _canvas_size),
    "min_digits": Field(1, "fewest digits per canvas", config_lib._at_least(1)),
    "max_digits": Field(3, "most digits per canvas", config_lib._at_least(1)),
    "dice_weight": Field(
        0.5, "weight of the soft Dice loss beside the cross-entropy", config_lib._finite_at_least(0)
    ),
    "class_weights": Field(
        (), "cross-entropy weight per class, background first (): all 1", _class_weights
    ),
    "num_pictures": Field(
        8, "test canvases drawn in predictions.png", config_lib._at_least(0), resume_ok=True
    ),
    # what this task does not read: an error when set, rather than silently ignored
    "init_from": None,
    "precision": None,
    "grad_accum_steps": None,
    "remat": None,
}


def _train_metrics(logits, labels, weights):
    """Per-pixel sums (cross-entropy, correct pixels, pixels) of a training batch."""
    labels = crop_labels(labels, logits.shape[1], logits.shape[2])
    if weights is not None:
        weights = crop_labels(weights, logits.shape[1], logits.shape[2])
    return classification_metrics(logits, labels, weights)


def _padded(x: np.ndarray, y: np.ndarray, batch_size: int, rows: slice):
    """This process's rows of global evaluation batches of ``batch_size``; the last one padded
    with copies of the last example under ``mask`` 0."""
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size], y[i : i + batch_size]
        m = len(xb)
        mask = np.zeros(batch_size, np.float32)
        mask[:m] = 1.0
        if m < batch_size:
            xb = np.concatenate([xb, np.repeat(xb[-1:], batch_size - m, 0)])
            yb = np.concatenate([yb, np.repeat(yb[-1:], batch_size - m, 0)])
        yield {"image": xb[rows], "label": yb[rows], "mask": mask[rows]}


def _none_for_nan(v) -> list:
    return [None if np.isnan(a) else float(a) for a in v]


class Segmentation(Task):
    """Per-pixel classification of digit canvases (see the module docstring)."""

    name = "segmentation"
    fields = SEGMENTATION_FIELDS
    selection = ("mean_iou", "max")

    def build(self, ctx: Context) -> None:
        cfg = self.cfg = ctx.cfg
        self.ctx = ctx
        info = models.model_info(cfg["model"])
        if info.task != "segmentation":
            raise ConfigError(
                f"model {cfg['model']!r} is a {info.task} model; the segmentation task needs a "
                f"segmentation model (unet, unet_bn, unet_small)"
            )
        if cfg["min_digits"] > cfg["max_digits"]:
            raise ConfigError(
                f"config keys 'min_digits'/'max_digits': expected min_digits <= max_digits, got "
                f"{cfg['min_digits']} > {cfg['max_digits']}"
            )
        if not cfg["validation_split"] and cfg["early_stopping_patience"]:
            raise ConfigError(
                "early_stopping_patience needs validation canvases (validation_split > 0); "
                "selection never uses the test canvases"
            )
        self.canvas = dict(
            size=cfg["canvas_size"], min_digits=cfg["min_digits"], max_digits=cfg["max_digits"]
        )
        try:
            self.data = canvas_lib.digit_canvas_data(
                cfg["num_test"],
                cfg["data_dir"] or None,
                cfg["source"],
                cfg["num_train_digits"] or None,
                cfg["seed"],
                validation_split=cfg["validation_split"],
                num_validation=cfg["num_validation"],
                **self.canvas,
            )
        except ValueError as e:  # a count out of range, digits that do not fit the canvas
            raise ConfigError(str(e)) from None
        self.model = models.create_model(
            cfg["model"], num_classes=NUM_CLASSES, in_channels=1, **cfg["model_kwargs"]
        )
        self.input_shape = (1, cfg["canvas_size"], cfg["canvas_size"], 1)
        self.steps_per_epoch = cfg["steps_per_epoch"]
        total = self.steps_per_epoch * cfg["epochs"]
        lr = make_schedule(
            cfg["schedule"],
            cfg["learning_rate"],
            total,
            int(cfg["warmup_epochs"] * self.steps_per_epoch),
        )
        self.tx = make_optimizer(
            cfg["optimizer"], lr, cfg["weight_decay"], grad_clip=cfg["grad_clip"] or None
        )
        self.loss_fn = make_seg_loss(cfg["dice_weight"], cfg["class_weights"] or None)
        self._eval_step = ctx.jit_eval(
            lambda state, batch: seg_eval_step_fn(state, batch, num_classes=NUM_CLASSES)
        )

    def facts(self) -> dict:
        d = self.data
        return {
            "num_classes": NUM_CLASSES,
            "input_shape": list(self.input_shape[1:]),
            "source": d["source"],
            "num_train_digits": int(len(d["train_digits"][1])),
            "num_validation_digits": (
                0 if d["validation_digits"] is None else int(len(d["validation_digits"][1]))
            ),
            "num_validation": 0 if d["validation"] is None else int(len(d["validation"][1])),
            "num_test": int(len(d["test"][1])),
            "params": models.count_params(self.model, self.input_shape),
        }

    def describe(self) -> dict:
        seed = self.cfg["seed"]
        return {
            "dataset": f"digit canvases ({self.data['source']})",
            "splits": {
                "train": "fresh canvases of the training digits at every step, "
                f"default_rng([{seed}, step])",
                "validation": "fixed canvases of digits held out of the training digits "
                f"(validation_split={self.cfg['validation_split']}), "
                f"default_rng([{seed}, 2**31 + 1])",
                "test": f"fixed canvases of the held-out digits, default_rng([{seed}, 2**31])",
            },
            "class_names": ["background"] + [str(d) for d in range(10)],
        }

    def init_state(self):
        return create_train_state(self.model, self.tx, self.input_shape, seed=self.cfg["seed"])

    # -- training ----------------------------------------------------------------------------
    def step_fn(self, state, batch):
        return train_step_fn(state, batch, loss_fn=self.loss_fn, metrics_fn=_train_metrics)

    def train_batches(self, data_state):
        images, labels = self.data["train_digits"]
        return canvas_lib.CanvasIterator(
            images,
            labels,
            self.cfg["batch_size"],
            self.cfg["seed"],
            state=data_state,
            **self.canvas,
        )

    def summarize(self, sums: dict) -> dict:
        n = max(float(sums["count"]), 1.0)
        return {
            "loss": float(sums["loss_sum"]) / n,
            "pixel_accuracy": float(sums["correct"]) / n,
        }

    # -- evaluation --------------------------------------------------------------------------
    def splits(self) -> tuple[str, ...]:
        return ("validation", "test") if self.data["validation"] is not None else ("test",)

    def evaluate(self, state, split: str) -> dict:
        x, y = self.data["validation" if split == "validation" else "test"]
        bs = self.cfg["eval_batch_size"]
        batches = _padded(x, y, bs, self.ctx.dp.process_rows(bs))
        s = self.ctx.sum_over(self._eval_step, state, batches)
        cm = np.rint(np.asarray(s["confusion"], np.float64)).astype(np.int64)
        out = {
            "loss": float(s["loss_sum"]) / float(s["count"]),
            "pixel_accuracy": pixel_accuracy(cm),
            "mean_iou": mean_iou(cm),
            "iou_per_class": _none_for_nan(iou_per_class(cm)),
        }
        if split == "test":
            out["dice_per_class"] = _none_for_nan(dice_per_class(cm))
            out["confusion"] = cm.tolist()
        return out

    def finish(self, state, result: dict, workdir: str) -> None:

        from jaxcnn.train.plots import can_plot, plot_run_curves

        if not can_plot("curves.png and predictions.png"):
            return
        plot_run_curves(workdir, ("loss", "pixel_accuracy", "mean_iou"))
        x, y = self.data["test"]
        k = min(self.cfg["num_pictures"], len(x))
        if k:
            host = jax.device_get(state)  # this process only: no collective on global arrays
            plot_predictions(
                x[:k],
                y[:k],
                predict(host, x[:k], k),
                os.path.join(workdir, "predictions.png"),
                title=f"{self.cfg['model']}: test mean IoU {result['test_mean_iou']:.3f}",
            )


def plot_predictions(
    images, labels, preds, path, num_classes: int = NUM_CLASSES, title: str = ""
) -> None:
    """One row per canvas: input, ground-truth mask, predicted mask (one colour per class)."""
    Figure = optional_import("matplotlib.figure", "segmentation pictures").Figure
    Patch = optional_import("matplotlib.patches", "segmentation pictures").Patch

    colorize = canvas_lib.colorize
    n = len(images)
    fig = Figure(figsize=(6.6, 2.2 * n + 0.6))
    axes = fig.subplots(n, 3, squeeze=False)
    labels = crop_labels(np.asarray(labels), preds.shape[1], preds.shape[2])
    for i in range(n):
        for j, (img, name) in enumerate(
            (
                (images[i, ..., 0], "input"),
                (colorize(labels[i], num_classes), "ground truth"),
                (colorize(preds[i], num_classes), "prediction"),
            )
        ):
            ax = axes[i, j]
            ax.imshow(img, cmap="gray" if j == 0 else None, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name)
    palette = colorize(np.arange(num_classes), num_classes)
    handles = [
        Patch(color=palette[k], label="bg" if k == 0 else str(k - 1)) for k in range(num_classes)
    ]
    fig.legend(
        handles=handles, loc="lower center", ncol=min(num_classes, 11), fontsize=7, frameon=False
    )
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    fig.savefig(path, dpi=90)
