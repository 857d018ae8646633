"""Losses and per-batch metric sums for classification (weights mask padded examples)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

__all__ = ["cross_entropy", "classification_metrics", "confusion_matrix"]


def cross_entropy(logits, labels, weights=None, label_smoothing: float = 0.0):
    """Mean softmax cross-entropy over examples with ``weights`` (0 for padding)."""
    num_classes = logits.shape[-1]
    onehot = jax.nn.one_hot(labels, num_classes)
    if label_smoothing:
        onehot = optax.smooth_labels(onehot, label_smoothing)
    per = optax.softmax_cross_entropy(logits.astype(jnp.float32), onehot)
    if weights is None:
        return jnp.mean(per)
    return jnp.sum(per * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def classification_metrics(logits, labels, weights=None) -> dict:
    """Sums (not means) so they add up across batches and devices on device:
    ``loss_sum``, ``correct``, ``count``."""
    if weights is None:
        weights = jnp.ones(labels.shape, jnp.float32)
    per = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return {
        "loss_sum": jnp.sum(per * weights),
        "correct": jnp.sum(correct * weights),
        "count": jnp.sum(weights),
    }


def confusion_matrix(logits, labels, weights, num_classes: int):
    """``(num_classes, num_classes)`` counts; rows are true labels, columns predictions."""
    pred = jnp.argmax(logits, -1)
    t = jax.nn.one_hot(labels, num_classes) * weights[:, None]
    p = jax.nn.one_hot(pred, num_classes)
    return t.T @ p
