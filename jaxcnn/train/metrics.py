"""Classification metrics as on-device sums: top-1, top-5, per-class accuracy and loss.

:func:`classification_sums` returns sums, never means, so the results of batches add up
(``jaxcnn.utils.tree_add``) and a jitted step over a batch sharded
across devices sums over all of them; :func:`summarize` turns the totals into the numbers a
``metrics.json`` holds. Padded examples carry weight 0 and count nowhere.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = ["classification_sums", "summarize", "topk_correct"]


def topk_correct(logits, labels, k: int):
    """1.0 where ``labels`` is among the ``k`` highest logits (ties count in the label's
    favour: a label is in the top k when fewer than k logits are strictly higher)."""
    label_logit = jnp.take_along_axis(logits, labels[:, None].astype(jnp.int32), axis=-1)
    higher = jnp.sum(logits > label_logit, axis=-1)
    return (higher < k).astype(jnp.float32)


def classification_sums(
    logits, labels, weights=None, *, topk: Sequence[int] = (5,), per_class: bool = True
) -> dict:
    """Sums for one batch: ``loss_sum`` (cross-entropy), ``correct`` (top-1), ``count``,
    ``correct_top{k}`` for each ``k`` in ``topk`` smaller than the number of classes, and with
    ``per_class`` ``class_correct`` / ``class_count`` of shape ``(num_classes,)`` (top-1)."""
    logits = logits.astype(jnp.float32)
    num_classes = logits.shape[-1]
    if weights is None:
        weights = jnp.ones(labels.shape, jnp.float32)
    weights = weights.astype(jnp.float32)
    per = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32) * weights
    out = {
        "loss_sum": jnp.sum(per * weights),
        "correct": jnp.sum(correct),
        "count": jnp.sum(weights),
    }
    for k in topk:
        if k < num_classes:
            out[f"correct_top{k}"] = jnp.sum(topk_correct(logits, labels, k) * weights)
    if per_class:
        onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
        out["class_correct"] = correct @ onehot
        out["class_count"] = weights @ onehot
    return out


def summarize(sums: dict, class_names: Sequence[str] | None = None) -> dict:
    """Python numbers from summed metrics: ``loss``, ``accuracy``, ``top{k}_accuracy``,
    ``per_class_accuracy`` (a dict by class name, or a list; None for a class with no example,
    so the result is strict JSON) and ``count``."""
    s = jax.device_get(sums)
    n = float(s["count"])
    out: dict[str, Any] = {"count": n}
    if n > 0:
        out["loss"] = float(s["loss_sum"]) / n
        out["accuracy"] = float(s["correct"]) / n
        for key in s:
            if key.startswith("correct_top"):
                out[f"top{key[len('correct_top') :]}_accuracy"] = float(s[key]) / n
    if "class_correct" in s:
        cc, cn = np.asarray(s["class_correct"]), np.asarray(s["class_count"])
        acc = [float(c / t) if t > 0 else None for c, t in zip(cc, cn)]
        out["per_class_accuracy"] = dict(zip(class_names, acc)) if class_names else acc
    return out
