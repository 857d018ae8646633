"""Segmentation: per-pixel losses, metrics, and a jit-compiled train/eval step for U-Net.

Logits are ``(N, H, W, K)``, labels int ``(N, H, W)`` in ``[0, K)``. When a valid-padding
U-Net returns a smaller map than its input, labels are centre-cropped to it
(:func:`crop_labels`).

- :func:`pixel_cross_entropy`: softmax cross-entropy averaged over pixels (optional weights).
- :func:`dice_loss`: ``1 - mean_k (2 |P_k . T_k| + eps) / (|P_k| + |T_k| + eps)`` with soft
  probabilities ``P`` and one-hot targets ``T``, summed over the batch per class (classes absent
  from both prediction and target score 1, so they do not pull the loss).
- :func:`confusion_matrix` -> :func:`iou_per_class`, :func:`mean_iou`, :func:`pixel_accuracy`,
  :func:`dice_per_class`. Mean IoU is the mean over classes present in the target or the
  prediction (an absent class has no IoU: ``nan``, skipped), computed from a confusion matrix
  summed over the whole evaluation set, as in the PASCAL VOC and Cityscapes benchmarks.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

__all__ = ["crop_labels", "pixel_cross_entropy", "dice_loss", "confusion_matrix",
           "iou_per_class", "mean_iou", "pixel_accuracy", "dice_per_class", "SegState",
           "create_seg_state", "seg_loss", "make_seg_train_step", "make_seg_eval_step", "predict",
           "evaluate_segmentation"]


def crop_labels(labels, height: int, width: int):
    """Centre crop of ``(N, H, W)`` labels to the network's output size."""
    top, left = (labels.shape[1] - height) // 2, (labels.shape[2] - width) // 2
    return labels[:, top:top + height, left:left + width]


def pixel_cross_entropy(logits, labels, weights=None):
    """Mean per-pixel softmax cross-entropy; ``weights`` ``(N, H, W)`` (e.g. class weights or
    an ignore mask) make it a weighted mean."""
    per = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    if weights is None:
        return jnp.mean(per)
    return jnp.sum(per * weights) / jnp.maximum(jnp.sum(weights), 1e-8)


def dice_loss(logits, labels, eps: float = 1.0, include_background: bool = True):
    """Soft multi-class Dice loss (Milletari et al. 2016 with squares replaced by sums)."""
    k = logits.shape[-1]
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    onehot = jax.nn.one_hot(labels, k, dtype=jnp.float32)
    axes = tuple(range(probs.ndim - 1))
    inter = jnp.sum(probs * onehot, axes)
    total = jnp.sum(probs, axes) + jnp.sum(onehot, axes)
    dice = (2 * inter + eps) / (total + eps)
    if not include_background:
        dice = dice[1:]
    return 1.0 - jnp.mean(dice)


def confusion_matrix(pred, labels, num_classes: int):
    """``(K, K)`` pixel counts (rows: true class, columns: predicted); numpy in, numpy out,
    jax in (e.g. inside jit), jax out."""
    xp = jnp if isinstance(pred, jax.Array) or isinstance(labels, jax.Array) else np
    idx = labels.reshape(-1).astype(xp.int32) * num_classes + pred.reshape(-1).astype(xp.int32)
    return xp.bincount(idx, length=num_classes * num_classes).reshape(num_classes, num_classes) \
        if xp is jnp else np.bincount(idx, minlength=num_classes ** 2).reshape(num_classes,
                                                                              num_classes)


def iou_per_class(cm):
    """IoU ``TP / (TP + FP + FN)`` per class from a confusion matrix; ``nan`` for a class that
    appears neither in the target nor in the prediction."""
    cm = np.asarray(cm, np.float64)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def mean_iou(cm) -> float:
    """Mean of :func:`iou_per_class` over the classes that occur."""
    return float(np.nanmean(iou_per_class(cm)))


def dice_per_class(cm):
    """Dice (F1) ``2 TP / (2 TP + FP + FN)`` per class; ``nan`` for absent classes."""
    cm = np.asarray(cm, np.float64)
    tp = np.diag(cm)
    denom = cm.sum(0) + cm.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / denom, np.nan)


def pixel_accuracy(cm) -> float:
    cm = np.asarray(cm, np.float64)
    return float(np.trace(cm) / max(cm.sum(), 1.0))


# ----------------------------------------------------------------------------------------------
# Training

@struct.dataclass
class SegState:
    """Parameters, BatchNorm statistics, optimizer state and step of a segmentation network."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    apply_fn: Callable = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)

    @property
    def variables(self) -> dict:
        return {"params": self.params, **({"batch_stats": self.batch_stats}
                                          if self.batch_stats else {})}


def create_seg_state(model, tx, input_shape, seed: int = 0) -> SegState:
    x = jnp.zeros(tuple(input_shape), jnp.float32)
    v = jax.jit(lambda k: model.init({"params": k, "dropout": k}, x))(jax.random.key(seed))
    return SegState(step=jnp.zeros((), jnp.int32), params=v["params"],
                    batch_stats=v.get("batch_stats", {}), opt_state=tx.init(v["params"]),
                    apply_fn=model.apply, tx=tx)


def seg_loss(logits, labels, dice_weight: float = 0.5, class_weights=None):
    """``cross-entropy + dice_weight * Dice loss``; ``class_weights`` ``(K,)`` weight the
    cross-entropy per true class."""
    labels = crop_labels(labels, logits.shape[1], logits.shape[2])
    w = None if class_weights is None else jnp.asarray(class_weights)[labels]
    loss = pixel_cross_entropy(logits, labels, w)
    if dice_weight:
        loss = loss + dice_weight * dice_loss(logits, labels)
    return loss


def _train_step(state: SegState, x, y, key, *, dice_weight, class_weights):
    def loss_fn(params):
        out = state.apply_fn({"params": params, **({"batch_stats": state.batch_stats}
                                                   if state.batch_stats else {})},
                             x, train=True, mutable=["batch_stats"],
                             rngs={"dropout": jax.random.fold_in(key, state.step)})
        logits, updates = out
        return seg_loss(logits, y, dice_weight, class_weights), updates.get("batch_stats", {})

    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                          opt_state=opt_state, batch_stats=stats)
    return state, loss


def make_seg_train_step(dice_weight: float = 0.5, class_weights=None):
    """``step(state, x, y, key) -> (state, loss)``, jit-compiled with the state donated."""
    cw = None if class_weights is None else tuple(float(c) for c in class_weights)
    fn = functools.partial(_train_step, dice_weight=dice_weight, class_weights=cw)
    return jax.jit(fn, donate_argnums=0)


def make_seg_eval_step():
    """``step(state, x) -> predicted classes (N, H_out, W_out)``, jit-compiled."""

    @jax.jit
    def step(state: SegState, x):
        return jnp.argmax(state.apply_fn(state.variables, x, train=False), -1)

    return step


def predict(state: SegState, images, batch_size: int = 64, eval_step=None) -> np.ndarray:
    """Predicted class maps for ``images`` in batches of a fixed size (the last one padded)."""
    eval_step = eval_step or make_seg_eval_step()
    out = []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size]
        m = len(x)
        if m < batch_size:  # static shapes: pad with copies of the last image
            x = np.concatenate([x, np.repeat(x[-1:], batch_size - m, 0)])
        out.append(np.asarray(eval_step(state, x))[:m])
    return np.concatenate(out)


def evaluate_segmentation(state: SegState, images, labels, num_classes: int,
                          batch_size: int = 64, eval_step=None) -> dict:
    """Metrics over a whole held-out set from one confusion matrix: pixel accuracy, mean IoU,
    per-class IoU and Dice (``None`` for a class absent from target and prediction)."""
    pred = predict(state, images, batch_size, eval_step)
    labels = crop_labels(np.asarray(labels), pred.shape[1], pred.shape[2])
    cm = confusion_matrix(pred, labels, num_classes)
    iou = iou_per_class(cm)
    return {"pixel_accuracy": pixel_accuracy(cm), "mean_iou": float(np.nanmean(iou)),
            "iou_per_class": [None if np.isnan(v) else float(v) for v in iou],
            "dice_per_class": [None if np.isnan(v) else float(v) for v in dice_per_class(cm)],
            "confusion": cm.tolist(), "predictions": pred}
