"""``fit_segmentation``: the training loop behind ``python -m experiments.segment``.

Trains a segmentation network (a registered model whose ``ModelInfo.extra["task"]`` is
``"segmentation"``, e.g. ``unet_small``) on the digit canvases of :mod:`jaxcnn.data.canvas`:
every step draws a fresh batch of canvases from the *training* digits (deterministic in
``(seed, step)``), evaluation uses fixed canvases of *held-out* digits. The train step is the
generic :func:`jaxcnn.train.make_train_step` with the segmentation loss
(cross-entropy + Dice) as its ``loss_fn``; evaluation sums one confusion matrix over all
held-out pixels. Writes ``checkpoints/`` (resumable), ``metrics.json`` (per-eval history and
the final pixel accuracy, mean IoU, per-class IoU/Dice and confusion matrix) and
``predictions.png`` (input / ground truth / prediction for a few held-out canvases).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxcnn import models
from jaxcnn.checkpoint import Checkpointer
from jaxcnn.data.canvas import NUM_CLASSES, canvas_batch, colorize, digit_canvas_data
from jaxcnn.train.optim import make_optimizer, make_schedule
from jaxcnn.train.segmentation import (
    evaluate_segmentation,
    make_seg_eval_step,
    make_seg_loss,
    predict,
)
from jaxcnn.train.state import create_train_state
from jaxcnn.train.steps import make_train_step

__all__ = ["SEG_DEFAULTS", "fit_segmentation", "plot_predictions"]

SEG_DEFAULTS: dict[str, Any] = dict(
    model="unet_small",
    model_kwargs={},
    source="auto",
    data_dir="",
    num_train_digits=0,
    num_test=1000,
    canvas_size=64,
    min_digits=1,
    max_digits=3,
    batch_size=32,
    eval_batch_size=100,
    steps=1000,
    eval_every=250,
    optimizer="adam",
    learning_rate=3e-3,
    schedule="cosine",
    warmup_steps=50,
    weight_decay=0.0,
    grad_clip=0.0,
    dice_weight=0.5,
    class_weights=(),
    seed=0,
    keep_checkpoints=2,
    progress=True,
    num_pictures=8,
)


def _cfg(config) -> dict:
    given = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    unknown = sorted(set(given) - set(SEG_DEFAULTS) - {"description"})
    if unknown:
        raise ValueError(
            f"unknown config keys: {', '.join(unknown)}; known: {', '.join(sorted(SEG_DEFAULTS))}"
        )
    return {**SEG_DEFAULTS, **given}


def plot_predictions(
    images, labels, preds, path, num_classes: int = NUM_CLASSES, title: str = ""
) -> None:
    """One row per canvas: input, ground-truth mask, predicted mask (11-class colour map)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    n = len(images)
    fig, axes = plt.subplots(n, 3, figsize=(6.6, 2.2 * n + 0.6), squeeze=False)
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
    plt.close(fig)


def fit_segmentation(
    config, workdir: str, resume: bool = False, stop_at_step: int | None = None
) -> dict:
    """Train as ``config`` says (keys: :data:`SEG_DEFAULTS`); returns the final metrics
    (also in ``workdir/metrics.json``) and the ``state``."""
    c = _cfg(config)
    os.makedirs(workdir, exist_ok=True)
    t_all = time.perf_counter()
    canvas = dict(size=c["canvas_size"], min_digits=c["min_digits"], max_digits=c["max_digits"])
    data = digit_canvas_data(
        c["num_test"],
        c["data_dir"] or None,
        c["source"],
        c["num_train_digits"] or None,
        c["seed"],
        **canvas,
    )
    train_digits, (xte, yte) = data["train_digits"], data["test"]
    model = models.create_model(
        c["model"], num_classes=NUM_CLASSES, in_channels=1, **c["model_kwargs"]
    )
    shape = (1, c["canvas_size"], c["canvas_size"], 1)
    total = c["steps"]
    lr = make_schedule(c["schedule"], c["learning_rate"], total, c["warmup_steps"])
    tx = make_optimizer(c["optimizer"], lr, c["weight_decay"], grad_clip=c["grad_clip"] or None)
    state = create_train_state(model, tx, shape, seed=c["seed"])
    loss_fn = make_seg_loss(c["dice_weight"], c["class_weights"] or None)
    train_step = make_train_step(loss_fn=loss_fn)
    eval_step = make_seg_eval_step(NUM_CLASSES)

    ckpt = Checkpointer(
        os.path.join(workdir, "checkpoints"),
        keep=c["keep_checkpoints"],
        keep_best=1,
        best_metric="mean_iou",
    )
    metrics_path = os.path.join(workdir, "metrics.json")
    history: list[dict] = []
    if resume and ckpt.latest_step() is not None:
        state, step, _ = ckpt.restore(state)
        if os.path.exists(metrics_path):
            with open(metrics_path) as f:
                history = [h for h in json.load(f).get("history", []) if h["step"] <= step]
        print(f"Resumed from checkpoint at step {step} in {ckpt.directory}")

    def write(final=None):
        out = {
            "config": c,
            "model": c["model"],
            "source": data["source"],
            "params": models.count_params(model, shape),
            "num_train_digits": int(len(train_digits[1])),
            "num_test_canvases": len(yte),
            "history": history,
        }
        if final:
            out["final"] = final
        with open(metrics_path + ".tmp", "w") as f:
            json.dump(out, f, indent=1)
        os.replace(metrics_path + ".tmp", metrics_path)

    step = int(state.step)
    t_train, sums = time.perf_counter(), None
    bar = tqdm(
        range(step, total), initial=step, total=total, disable=not c["progress"], desc="train"
    )
    for step in bar:
        x, y = canvas_batch(*train_digits, c["batch_size"], c["seed"], step, **canvas)
        state, m = train_step(state, {"image": x, "label": y})
        sums = m if sums is None else jax.tree.map(jnp.add, sums, m)
        done = step + 1
        if done % c["eval_every"] == 0 or done == total:
            s = jax.device_get(sums)
            ev = evaluate_segmentation(eval_step, state, xte, yte, c["eval_batch_size"])
            rec = {
                "step": done,
                "train_loss": float(s["loss_sum"] / s["count"]),
                "train_pixel_accuracy": float(s["correct"] / s["count"]),
                "test_loss": ev["loss"],
                "test_pixel_accuracy": ev["pixel_accuracy"],
                "test_mean_iou": ev["mean_iou"],
                "test_iou_per_class": ev["iou_per_class"],
                "elapsed_s": time.perf_counter() - t_all,
            }
            history.append(rec)
            sums = None
            ckpt.save(done, state, metrics={"mean_iou": ev["mean_iou"]})
            write()
            msg = (
                f"step {done:5d}/{total}  train loss {rec['train_loss']:.4f}  test pixel acc "
                f"{ev['pixel_accuracy']:.4f}  mean IoU {ev['mean_iou']:.4f}  "
                f"({rec['elapsed_s']:.0f}s)\n  IoU per class (bg, 0-9): "
                + " ".join("-" if v is None else f"{v:.2f}" for v in ev["iou_per_class"])
            )
            bar.write(msg) if c["progress"] else print(msg, flush=True)
        if stop_at_step is not None and done >= stop_at_step:
            if done % c["eval_every"]:
                ckpt.save(done, state)
            ckpt.close()
            write()
            return {"stopped_at_step": done}
    bar.close()
    ckpt.close()
    ev = evaluate_segmentation(eval_step, state, xte, yte, c["eval_batch_size"])
    final = {
        "mean_iou": ev["mean_iou"],
        "pixel_accuracy": ev["pixel_accuracy"],
        "iou_per_class": ev["iou_per_class"],
        "dice_per_class": ev["dice_per_class"],
        "test_loss": ev["loss"],
        "steps": int(state.step),
        "train_time_s": time.perf_counter() - t_train,
        "wall_time_s": time.perf_counter() - t_all,
        "compilations": {
            "train_step": train_step._cache_size(),
            "eval_step": eval_step._cache_size(),
        },
        "confusion": ev["confusion"].tolist(),
    }
    write(final)
    k = min(c["num_pictures"], len(xte))
    if k:
        plot_predictions(
            xte[:k],
            yte[:k],
            predict(state, xte[:k], k),
            os.path.join(workdir, "predictions.png"),
            title=f"{c['model']}: held-out mean IoU {ev['mean_iou']:.3f}",
        )
    return {**final, "state": state}
