"""Segmentation: per-pixel losses, confusion-matrix metrics and the eval step.

Logits are ``(N, H, W, K)``, labels int ``(N, H, W)`` in ``[0, K)``; ``weights`` are per pixel
``(N, H, W)`` or per example ``(N,)`` (0 masks a padded example or an ignored pixel). When a
valid-padding U-Net returns a smaller map than its input, labels are centre-cropped to it
(:func:`crop_labels`; the losses do it themselves).

Losses (jit-friendly, differentiable):

- :func:`pixel_cross_entropy`: softmax cross-entropy, the (weighted) mean over pixels; optional
  per-class weights. Written with one-hot targets: the integer-label form's gradient is a
  scatter that XLA constant-folds for a minute at 64x64.
- :func:`dice_loss`: soft Dice ``1 - mean_k (2 sum P_k T_k + eps) / (sum P_k + sum T_k + eps)``
  with softmax probabilities ``P`` and one-hot targets ``T``, sums over all pixels of the batch
  per class; ``eps = 1`` makes a class absent from both target and prediction score ~1.
- :func:`make_seg_loss`: ``cross-entropy + dice_weight * Dice`` as the
  ``loss_fn(logits, labels, weights)`` that :func:`jaxcnn.train.make_train_step` takes.

Metrics, all from one confusion matrix summed over a whole evaluation set (as PASCAL VOC and
Cityscapes compute them), numpy or jax (inside jit) alike:

- :func:`confusion_matrix` ``(K, K)``, rows true class, columns predicted.
- :func:`iou_per_class` ``TP / (TP + FP + FN)``; a class absent from both the target and the
  prediction has no IoU (``nan``) and :func:`mean_iou` leaves it out of the mean (it would
  otherwise count as 0 or 1 depending on convention). :func:`pixel_accuracy`,
  :func:`dice_per_class`.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "crop_labels",
    "pixel_cross_entropy",
    "dice_loss",
    "make_seg_loss",
    "confusion_matrix",
    "iou_per_class",
    "mean_iou",
    "pixel_accuracy",
    "dice_per_class",
    "seg_eval_step_fn",
    "make_seg_eval_step",
    "evaluate_segmentation",
    "predict",
]


def _xp(*arrays):
    return jnp if any(isinstance(a, jax.Array) for a in arrays) else np


def crop_labels(labels, height: int, width: int):
    """Centre crop of ``(N, H, W)`` labels (or weights) to the network's output size."""
    if labels.shape[1] == height and labels.shape[2] == width:
        return labels
    top, left = (labels.shape[1] - height) // 2, (labels.shape[2] - width) // 2
    return labels[:, top : top + height, left : left + width]


def _pixel_weights(weights, labels):
    """Per-pixel float weights from ``None``, ``(N,)`` or ``(N, H, W)`` weights."""
    if weights is None:
        return None
    weights = jnp.asarray(weights, jnp.float32)
    if weights.ndim == 1:
        weights = jnp.broadcast_to(weights[:, None, None], labels.shape)
    return crop_labels(weights, labels.shape[1], labels.shape[2])


def pixel_cross_entropy(logits, labels, weights=None, class_weights=None):
    """Mean per-pixel softmax cross-entropy. ``weights`` (per pixel or per example) make it a
    weighted mean; ``class_weights`` ``(K,)`` weight each pixel by its true class."""
    labels = crop_labels(labels, logits.shape[1], logits.shape[2])
    k = logits.shape[-1]
    onehot = jax.nn.one_hot(labels, k, dtype=jnp.float32)
    per = -jnp.sum(onehot * jax.nn.log_softmax(logits.astype(jnp.float32), -1), -1)
    w = _pixel_weights(weights, labels)
    if class_weights is not None:
        cw = onehot @ jnp.asarray(class_weights, jnp.float32)
        w = cw if w is None else w * cw
    if w is None:
        return jnp.mean(per)
    return jnp.sum(per * w) / jnp.maximum(jnp.sum(w), 1e-8)


def dice_loss(logits, labels, weights=None, eps: float = 1.0, include_background: bool = True):
    """Soft multi-class Dice loss over the batch (see the module docstring); ``weights`` mask
    pixels or examples out of both sums."""
    labels = crop_labels(labels, logits.shape[1], logits.shape[2])
    k = logits.shape[-1]
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    onehot = jax.nn.one_hot(labels, k, dtype=jnp.float32)
    w = _pixel_weights(weights, labels)
    if w is not None:
        probs, onehot = probs * w[..., None], onehot * w[..., None]
    axes = tuple(range(probs.ndim - 1))
    inter = jnp.sum(probs * onehot, axes)
    total = jnp.sum(probs, axes) + jnp.sum(onehot, axes)
    dice = (2 * inter + eps) / (total + eps)
    if not include_background:
        dice = dice[1:]
    return 1.0 - jnp.mean(dice)


def make_seg_loss(dice_weight: float = 0.5, class_weights=None):
    """``loss_fn(logits, labels, weights) = CE + dice_weight * Dice`` for ``make_train_step``."""
    cw = None if class_weights is None else tuple(float(c) for c in class_weights)

    def loss_fn(logits, labels, weights=None):
        loss = pixel_cross_entropy(logits, labels, weights, cw)
        if dice_weight:
            loss = loss + dice_weight * dice_loss(logits, labels, weights)
        return loss

    return loss_fn


def confusion_matrix(pred, labels, num_classes: int, weights=None):
    """``(K, K)`` pixel counts, rows true class, columns predicted class, from class maps of
    any shape (``weights`` of the same shape count pixels fractionally, 0 drops them).
    numpy in -> numpy int64 out; jax in (also inside jit) -> jax float32 out."""
    xp = _xp(pred, labels, weights)
    idx = labels.reshape(-1).astype(xp.int32) * num_classes + pred.reshape(-1).astype(xp.int32)
    w = None if weights is None else weights.reshape(-1)
    if xp is jnp:
        w = jnp.ones(idx.shape, jnp.float32) if w is None else w.astype(jnp.float32)
        return (
            jnp.zeros(num_classes * num_classes, jnp.float32)
            .at[idx]
            .add(w)
            .reshape(num_classes, num_classes)
        )
    cm = np.bincount(idx, weights=w, minlength=num_classes**2)
    cm = cm.reshape(num_classes, num_classes)
    return cm.astype(np.int64) if w is None else cm


def iou_per_class(cm):
    """IoU ``TP / (TP + FP + FN)`` per class; ``nan`` for a class absent from both target and
    prediction (its union is empty)."""
    xp = _xp(cm)
    cm = cm.astype(xp.float32 if xp is jnp else np.float64)
    tp = xp.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    return xp.where(union > 0, tp / xp.where(union > 0, union, 1), xp.nan)


def mean_iou(cm):
    """Mean IoU over the classes present in the target or the prediction (absent classes,
    ``nan`` in :func:`iou_per_class`, are excluded)."""
    xp = _xp(cm)
    v = xp.nanmean(iou_per_class(cm))
    return float(v) if xp is np else v


def dice_per_class(cm):
    """Dice (F1) ``2 TP / (2 TP + FP + FN)`` per class; ``nan`` for absent classes."""
    xp = _xp(cm)
    cm = cm.astype(xp.float32 if xp is jnp else np.float64)
    tp = xp.diag(cm)
    denom = cm.sum(0) + cm.sum(1)
    return xp.where(denom > 0, 2 * tp / xp.where(denom > 0, denom, 1), xp.nan)


def pixel_accuracy(cm):
    """Share of pixels whose predicted class is the true one."""
    xp = _xp(cm)
    v = xp.trace(cm) / xp.maximum(cm.sum(), 1)
    return float(v) if xp is np else v


# ----------------------------------------------------------------------------------------------
# Evaluation (training uses jaxcnn.train.make_train_step(loss_fn=make_seg_loss(...)))


def seg_eval_step_fn(state, batch: dict, *, num_classes: int, loss_fn=None) -> dict:
    """Sums over one batch ``{"image", "label", ["mask"]}``: ``loss_sum`` (per-pixel
    cross-entropy, or ``loss_fn`` times the pixel count), ``count`` (pixels) and
    ``confusion`` (``(K, K)``)."""
    logits = state.apply_fn(state.variables, batch["image"], train=False)
    labels = crop_labels(batch["label"], logits.shape[1], logits.shape[2])
    w = _pixel_weights(batch.get("mask"), labels)
    if w is None:
        w = jnp.ones(labels.shape, jnp.float32)
    count = jnp.sum(w)
    loss = loss_fn(logits, labels, w) if loss_fn else pixel_cross_entropy(logits, labels, w)
    return {
        "loss_sum": loss * count,
        "count": count,
        "confusion": confusion_matrix(jnp.argmax(logits, -1), labels, num_classes, w),
    }


def make_seg_eval_step(num_classes: int, loss_fn=None):
    """``jax.jit`` of :func:`seg_eval_step_fn`: ``step(state, batch) -> metric sums``."""
    return jax.jit(
        lambda state, batch: seg_eval_step_fn(
            state, batch, num_classes=num_classes, loss_fn=loss_fn
        )
    )


def _padded_batches(images, labels, batch_size):
    for i in range(0, len(images), batch_size):
        x, y = images[i : i + batch_size], labels[i : i + batch_size]
        m = len(x)
        mask = np.zeros(batch_size, np.float32)
        mask[:m] = 1
        if m < batch_size:  # static shapes: pad with copies of the last example, masked out
            x = np.concatenate([x, np.repeat(x[-1:], batch_size - m, 0)])
            y = np.concatenate([y, np.repeat(y[-1:], batch_size - m, 0)])
        yield {"image": x, "label": y, "mask": mask}


def evaluate_segmentation(eval_step, state, images, labels, batch_size: int = 64) -> dict:
    """Metrics over a whole held-out set from one summed confusion matrix: loss, pixel
    accuracy, mean IoU, per-class IoU and Dice (``None`` where a class is absent)."""
    acc = None
    for batch in _padded_batches(images, labels, batch_size):
        m = eval_step(state, batch)
        acc = m if acc is None else jax.tree.map(jnp.add, acc, m)
    acc = jax.device_get(acc)
    cm = np.rint(np.asarray(acc["confusion"], np.float64)).astype(np.int64)
    iou = iou_per_class(cm)
    nan_to_none = lambda v: [None if np.isnan(a) else float(a) for a in v]  # noqa: E731
    return {
        "loss": float(acc["loss_sum"] / acc["count"]),
        "pixel_accuracy": pixel_accuracy(cm),
        "mean_iou": mean_iou(cm),
        "iou_per_class": nan_to_none(iou),
        "dice_per_class": nan_to_none(dice_per_class(cm)),
        "confusion": cm,
    }


def predict(state, images, batch_size: int = 64) -> np.ndarray:
    """Predicted class maps ``(N, H_out, W_out)`` for ``images`` (fixed batch shape)."""
    step = _predict_step()
    out = []
    for batch in _padded_batches(images, np.zeros(len(images)), batch_size):
        out.append(np.asarray(step(state, batch["image"])))
    return np.concatenate(out)[: len(images)]


_PREDICT: list[Callable] = []


def _predict_step():
    if not _PREDICT:
        _PREDICT.append(
            jax.jit(
                lambda state, x: jnp.argmax(state.apply_fn(state.variables, x, train=False), -1)
            )
        )
    return _PREDICT[0]
