"""Optimizers and learning-rate schedules from a config."""

from __future__ import annotations

import optax

__all__ = ["make_schedule", "make_optimizer"]


def make_schedule(name: str, lr: float, total_steps: int, warmup_steps: int = 0):
    """``constant``, ``cosine`` or ``step`` (x0.1 at 50% and 75%), with linear warmup."""
    total_steps = max(total_steps, 1)
    if name == "constant":
        sched = optax.constant_schedule(lr)
    elif name == "cosine":
        sched = optax.cosine_decay_schedule(lr, max(total_steps - warmup_steps, 1))
    elif name == "step":
        sched = optax.piecewise_constant_schedule(
            lr, {int(total_steps * 0.5): 0.1, int(total_steps * 0.75): 0.1}
        )
    else:
        raise ValueError(f"unknown schedule {name!r}; expected constant, cosine or step")
    if warmup_steps:
        sched = optax.join_schedules(
            [optax.linear_schedule(0.0, lr, warmup_steps), sched], [warmup_steps]
        )
    return sched


def make_optimizer(
    name: str,
    learning_rate,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    grad_clip: float | None = None,
) -> optax.GradientTransformation:
    """``adam``, ``adamw``, ``sgd`` (Nesterov momentum, coupled weight decay) or ``rmsprop``."""
    if name == "adam":
        tx = optax.adam(learning_rate)
    elif name == "adamw":
        tx = optax.adamw(learning_rate, weight_decay=weight_decay)
    elif name == "sgd":
        tx = optax.chain(
            optax.add_decayed_weights(weight_decay) if weight_decay else optax.identity(),
            optax.sgd(learning_rate, momentum, nesterov=True),
        )
    elif name == "rmsprop":
        tx = optax.rmsprop(learning_rate, momentum=momentum)
    else:
        raise ValueError(f"unknown optimizer {name!r}; expected adam, adamw, sgd or rmsprop")
    if grad_clip:
        tx = optax.chain(optax.clip_by_global_norm(grad_clip), tx)
    return tx
