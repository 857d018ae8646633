"""Optimizers and learning-rate schedules from a config.

Weight decay can be masked off the parameters recipes exempt (``decay_mask=True``, the config
switch of the same name): biases, normalisation scales and every other parameter of at
most one dimension (timm's ``param.ndim <= 1 or name.endswith(".bias")``, which also covers
ConvNeXt's layer scale), plus the embeddings timm's and torchvision's transformer recipes
exempt (``pos_embed``, ``cls_token``, ``dist_token``, ``relative_position_bias_table``,
``absolute_pos_embed``). :func:`weight_decay_mask` is that rule, usable as optax's ``mask=``.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import optax

from jaxcnn.utils.tree import map_with_path

__all__ = [
    "NO_DECAY_NAMES",
    "OPTIMIZERS",
    "learning_rate_at",
    "make_optimizer",
    "make_schedule",
    "optimizer_factory",
    "optimizer_from_config",
    "schedule_from_config",
    "weight_decay_mask",
]

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop", "lamb", "lars")

# Leaf names (the last element of a '/'-joined parameter path) that never take weight decay.
NO_DECAY_NAMES = (
    "bias",
    "scale",
    "pos_embed",
    "cls_token",
    "dist_token",
    "relative_position_bias_table",
    "absolute_pos_embed",
)


def make_schedule(
    name: str,
    lr: float,
    total_steps: int,
    warmup_steps: int = 0,
    *,
    min_lr: float = 0.0,
    warmup_init_lr: float = 0.0,
):
    """``constant``, ``cosine`` (to ``min_lr``) or ``step`` (x0.1 at 50% and 75%), after a
    linear warm-up from ``warmup_init_lr`` over ``warmup_steps``. Returns ``step -> lr``;
    :func:`learning_rate_at` reads it for logging."""
    total_steps = max(total_steps, 1)
    if min_lr and name != "cosine":
        raise ValueError(f"min_lr applies to the cosine schedule only; got schedule {name!r}")
    if name == "constant":
        sched = optax.constant_schedule(lr)
    elif name == "cosine":
        alpha = min_lr / lr if lr else 0.0
        sched = optax.cosine_decay_schedule(lr, max(total_steps - warmup_steps, 1), alpha=alpha)
    elif name == "step":
        sched = optax.piecewise_constant_schedule(
            lr, {int(total_steps * 0.5): 0.1, int(total_steps * 0.75): 0.1}
        )
    else:
        raise ValueError(f"unknown schedule {name!r}; expected constant, cosine or step")
    if warmup_steps:
        sched = optax.join_schedules(
            [optax.linear_schedule(warmup_init_lr, lr, warmup_steps), sched], [warmup_steps]
        )
    return sched


def learning_rate_at(learning_rate, step) -> float | np.ndarray:
    """The learning rate at ``step`` (an int or an array of steps) of a schedule or a float:
    the value the optimizer uses for the update that takes the state from ``step`` to
    ``step + 1`` (optax counts updates from 0)."""
    if callable(learning_rate):
        out = np.asarray(learning_rate(np.asarray(step)))
        return float(out) if out.ndim == 0 else out
    return float(learning_rate) if np.ndim(step) == 0 else np.full(np.shape(step), learning_rate)


def weight_decay_mask(
    params,
    *,
    no_decay_names: Sequence[str] = NO_DECAY_NAMES,
    min_ndim: int = 2,
    exclude: Sequence[str] = (),
) -> Any:
    """A tree of bools like ``params``: True where weight decay applies. False for leaves with
    fewer than ``min_ndim`` dimensions, leaves whose name is in ``no_decay_names``, and leaves
    whose '/'-joined path matches any regex of ``exclude`` (``re.search``). Works on arrays and
    on ``jax.ShapeDtypeStruct`` trees, and as optax's ``mask=`` callable."""
    patterns = [re.compile(p) for p in exclude]
    names = set(no_decay_names)

    def rule(path, leaf):
        name = path.rsplit("/", 1)[-1]
        if len(getattr(leaf, "shape", ())) < min_ndim or name in names:
            return False
        return not any(r.search(path) for r in patterns)

    return map_with_path(rule, params)


def make_optimizer(
    name: str,
    learning_rate,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    grad_clip: float | None = None,
    *,
    nesterov: bool | None = None,
    decay_mask: bool | Callable | Any = None,
) -> optax.GradientTransformation:
    """``adam``, ``adamw`` (decoupled decay), ``sgd`` (momentum, Nesterov unless
    ``nesterov=False``, coupled weight decay as torchvision's), ``rmsprop``, ``lamb`` or
    ``lars`` (momentum, Nesterov only with ``nesterov=True``; the trust ratio skips the same
    parameters as weight decay).

    ``decay_mask``: None/False decays every parameter; True uses :func:`weight_decay_mask`;
    a callable or a tree of bools is passed to optax as the mask. ``adam`` and ``rmsprop``
    take no weight decay. ``grad_clip`` clips the global gradient norm first.
    """
    if decay_mask is True:
        mask = weight_decay_mask
    elif decay_mask is None or decay_mask is False:
        mask = None
    else:
        mask = decay_mask
    if name == "adam":
        tx = optax.adam(learning_rate)
    elif name == "adamw":
        tx = optax.adamw(learning_rate, weight_decay=weight_decay, mask=mask)
    elif name == "sgd":
        tx = optax.chain(
            optax.add_decayed_weights(weight_decay, mask) if weight_decay else optax.identity(),
            optax.sgd(learning_rate, momentum, nesterov=True if nesterov is None else nesterov),
        )
    elif name == "rmsprop":
        tx = optax.rmsprop(learning_rate, momentum=momentum)
    elif name == "lamb":
        tx = optax.lamb(learning_rate, weight_decay=weight_decay, mask=mask)
    elif name == "lars":
        m = True if mask is None else mask
        tx = optax.lars(
            learning_rate,
            weight_decay=weight_decay,
            weight_decay_mask=m,
            trust_ratio_mask=m,
            momentum=momentum,
            nesterov=bool(nesterov),
        )
    else:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)}")
    if grad_clip:
        tx = optax.chain(optax.clip_by_global_norm(grad_clip), tx)
    return tx


def optimizer_from_config(
    cfg: Mapping[str, Any], steps_per_epoch: int
) -> tuple[optax.GradientTransformation, Any]:
    """``(optimizer, schedule)`` from a validated training config: the keys ``optimizer``,
    ``learning_rate``, ``schedule``, ``warmup_epochs``, ``weight_decay``, ``grad_clip`` and,
    when present (:data:`jaxcnn.train.config.OPTIMIZER_FIELDS`), ``momentum``, ``nesterov``
    (-1: the optimizer's default), ``decay_mask``, ``min_lr``, ``warmup_init_lr``. The schedule
    spans ``epochs * steps_per_epoch`` updates; :func:`learning_rate_at` reads it for logging.
    A key that the chosen optimizer or schedule cannot honour is a one-line ``ConfigError``."""
    factory = optimizer_factory(cfg)
    schedule = schedule_from_config(cfg, steps_per_epoch)
    tx = factory(schedule)
    if cfg["grad_clip"]:
        tx = optax.chain(optax.clip_by_global_norm(cfg["grad_clip"]), tx)
    return tx, schedule


def optimizer_factory(cfg: Mapping[str, Any]) -> Callable[[Any], optax.GradientTransformation]:
    """``learning rate (float or schedule) -> optimizer`` for the config's optimizer keys
    (everything of :func:`optimizer_from_config` but the schedule and clipping): what a
    :class:`jaxcnn.transfer.Plan` calls once per parameter group."""
    from jaxcnn.train.config import ConfigError

    name = cfg["optimizer"]
    nesterov = cfg.get("nesterov", -1)
    nesterov = None if nesterov == -1 or nesterov is None else bool(nesterov)
    if nesterov is not None and name not in ("sgd", "lars"):
        raise ConfigError(
            f"config key 'nesterov': only sgd and lars take Nesterov momentum; got "
            f"nesterov={nesterov} with optimizer {name!r} (use -1)"
        )
    momentum = float(cfg.get("momentum", 0.9))
    decay_mask = bool(cfg.get("decay_mask", False))

    def factory(learning_rate: Any) -> optax.GradientTransformation:
        return make_optimizer(
            name,
            learning_rate,
            cfg["weight_decay"],
            momentum=momentum,
            nesterov=nesterov,
            decay_mask=decay_mask,
        )

    return factory


def schedule_from_config(cfg: Mapping[str, Any], steps_per_epoch: int) -> Any:
    """The config's learning-rate schedule over ``epochs * steps_per_epoch`` updates (keys
    ``learning_rate``, ``schedule``, ``warmup_epochs`` and, when present, ``min_lr``,
    ``warmup_init_lr``)."""
    from jaxcnn.train.config import ConfigError

    min_lr = float(cfg.get("min_lr", 0.0))
    if min_lr and cfg["schedule"] != "cosine":
        raise ConfigError(
            f"config key 'min_lr': applies to the cosine schedule only; got min_lr={min_lr} "
            f"with schedule {cfg['schedule']!r}"
        )
    return make_schedule(
        cfg["schedule"],
        cfg["learning_rate"],
        steps_per_epoch * cfg["epochs"],
        int(cfg["warmup_epochs"] * steps_per_epoch),
        min_lr=min_lr,
        warmup_init_lr=float(cfg.get("warmup_init_lr", 0.0)),
    )
