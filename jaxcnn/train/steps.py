"""The jit-compiled train and eval steps.

One ``jax.jit`` each, with the state donated in training. The step is written for the *global*
batch: under ``jax.jit`` with a batch sharded along a ``data`` mesh axis, XLA partitions it and
BatchNorm's batch statistics are computed over the global batch (synchronised BatchNorm) with no
``axis_name`` plumbing; see ``jaxcnn.train.mesh``.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from jaxcnn.train.losses import classification_metrics, confusion_matrix, cross_entropy
from jaxcnn.train.state import TrainState

__all__ = ["make_train_step", "make_eval_step", "train_step_fn", "eval_step_fn"]


def train_step_fn(state: TrainState, batch: dict, *, label_smoothing: float = 0.0,
                  aux_weight: float = 0.0, loss_fn: Callable | None = None,
                  augment: Callable | None = None):
    """One SGD step on ``batch = {"image", "label", ["mask"]}``; returns (state, metric sums).

    ``aux_weight > 0`` adds ``aux_weight * CE`` of every auxiliary classifier the model sows
    into the ``aux_logits`` collection (GoogLeNet, Inception v3).
    ``loss_fn(logits, labels, weights)`` replaces the cross-entropy if given;
    ``augment(key, images)`` transforms the images on device first (keyed by step).
    """
    dropout_rng = jax.random.fold_in(state.rng, state.step)
    images = batch["image"]
    if augment is not None:
        images = augment(jax.random.fold_in(dropout_rng, 1), images)
    weights = batch.get("mask")
    has_bn = bool(state.batch_stats)
    mutable = (["batch_stats"] if has_bn else []) + (["aux_logits"] if aux_weight else [])

    def compute_loss(params):
        variables = {"params": params}
        if has_bn:
            variables["batch_stats"] = state.batch_stats
        out = state.apply_fn(variables, images, train=True, mutable=mutable or False,
                             rngs={"dropout": dropout_rng})
        logits, updates = out if mutable else (out, {})
        if loss_fn is None:
            loss = cross_entropy(logits, batch["label"], weights, label_smoothing)
        else:
            loss = loss_fn(logits, batch["label"], weights)
        if aux_weight:
            for aux in jax.tree.leaves(updates.get("aux_logits", {})):
                loss = loss + aux_weight * cross_entropy(aux, batch["label"], weights,
                                                         label_smoothing)
        return loss, (logits, updates)

    (loss, (logits, updates)), grads = jax.value_and_grad(compute_loss, has_aux=True)(
        state.params)
    changes = {"batch_stats": updates["batch_stats"]} if has_bn else {}
    new_state = state.apply_gradients(grads, **changes)
    metrics = classification_metrics(logits, batch["label"], weights)
    return new_state, metrics


def eval_step_fn(state: TrainState, batch: dict, *, num_classes: int | None = None):
    """Metric sums (and the confusion matrix when ``num_classes`` is given) on one batch."""
    logits = state.apply_fn(state.variables, batch["image"], train=False)
    weights = batch.get("mask")
    if weights is None:
        weights = jnp.ones(batch["label"].shape, jnp.float32)
    metrics = classification_metrics(logits, batch["label"], weights)
    if num_classes:
        metrics["confusion"] = confusion_matrix(logits, batch["label"], weights, num_classes)
    return metrics


def make_train_step(label_smoothing: float = 0.0, aux_weight: float = 0.0,
                    loss_fn: Callable | None = None, augment: Callable | None = None,
                    donate: bool = True, **jit_kwargs):
    """``jax.jit`` of :func:`train_step_fn` with the state donated (its buffers are reused)."""

    def step(state, batch):
        return train_step_fn(state, batch, label_smoothing=label_smoothing,
                             aux_weight=aux_weight, loss_fn=loss_fn, augment=augment)

    return jax.jit(step, donate_argnums=(0,) if donate else (), **jit_kwargs)


def make_eval_step(num_classes: int | None = None, **jit_kwargs):
    """``jax.jit`` of :func:`eval_step_fn`."""

    def step(state, batch):
        return eval_step_fn(state, batch, num_classes=num_classes)

    return jax.jit(step, **jit_kwargs)
