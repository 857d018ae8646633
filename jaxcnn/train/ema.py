"""Exponential moving average of the weights (timm's ``ModelEmaV3``), as pure functions on trees.

The EMA is a variables dict ``{"params": ..., "batch_stats": ...}`` (``batch_stats`` only when
the model has them), so ``model.apply(ema, x, train=False)`` evaluates it directly. It lives in
``TrainState.ema`` (None when off) and is checkpointed with the state.

Per update, on floating leaves of both params and BatchNorm statistics (timm averages buffers
too): ``ema = d * ema + (1 - d) * new``; other leaves are copied. The decay ``d`` at update
``step`` (the number of optimizer updates done, 1 after the first) is timm's ``get_decay``::

    s = max(0, step - update_after_step - 1)
    d = 0                                      if s == 0  (the EMA becomes a copy)
    d = clip(1 - (1 + s / gamma) ** -power,
             min_decay, decay)                 with warm-up
    d = decay                                  otherwise

so without ``update_after_step`` the first update copies the weights, and warm-up ramps the
decay up (gamma 1, power 2/3 reach 0.999 after ~31,600 steps; power 3/4 after ~10,000).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

__all__ = ["EMA_DEFAULTS", "ema_decay", "ema_from_config", "ema_init", "ema_update"]

EMA_DEFAULTS = {
    "ema_decay": 0.0,  # 0: no EMA
    "ema_warmup": False,
    "ema_warmup_gamma": 1.0,
    "ema_warmup_power": 2.0 / 3.0,
    "ema_min_decay": 0.0,
    "ema_update_after_step": 0,
}


def ema_init(params, batch_stats=None) -> dict:
    """A fresh EMA equal to ``params`` (and ``batch_stats`` when non-empty), as copies."""
    ema = {"params": jax.tree.map(jnp.array, params)}
    if batch_stats:
        ema["batch_stats"] = jax.tree.map(jnp.array, batch_stats)
    return ema


def ema_decay(
    step,
    decay: float,
    *,
    warmup: bool = False,
    warmup_gamma: float = 1.0,
    warmup_power: float = 2.0 / 3.0,
    min_decay: float = 0.0,
    update_after_step: int = 0,
):
    """The decay at update ``step`` (traceable; see the module docstring)."""
    s = jnp.maximum(jnp.asarray(step, jnp.float32) - update_after_step - 1, 0.0)
    if warmup:
        d = 1.0 - (1.0 + s / warmup_gamma) ** (-warmup_power)
        d = jnp.clip(d, min_decay, decay)
    else:
        d = jnp.float32(decay)
    return jnp.where(s > 0, d, 0.0).astype(jnp.float32)


def _lerp(e, n, d):
    if not jnp.issubdtype(jnp.asarray(n).dtype, jnp.floating):
        return n
    out = d * e.astype(jnp.float32) + (1.0 - d) * n.astype(jnp.float32)
    return out.astype(e.dtype)


def ema_update(
    ema: dict,
    params,
    batch_stats,
    step,
    decay: float,
    *,
    warmup: bool = False,
    warmup_gamma: float = 1.0,
    warmup_power: float = 2.0 / 3.0,
    min_decay: float = 0.0,
    update_after_step: int = 0,
) -> dict:
    """The EMA after one update towards ``params`` / ``batch_stats`` at update ``step``."""
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"ema decay must be in [0, 1); got {decay}")
    d = ema_decay(
        step,
        decay,
        warmup=warmup,
        warmup_gamma=warmup_gamma,
        warmup_power=warmup_power,
        min_decay=min_decay,
        update_after_step=update_after_step,
    )
    new = {"params": jax.tree.map(lambda e, n: _lerp(e, n, d), ema["params"], params)}
    if "batch_stats" in ema:
        new["batch_stats"] = jax.tree.map(
            lambda e, n: _lerp(e, n, d), ema["batch_stats"], batch_stats
        )
    return new


def ema_from_config(cfg: Mapping[str, Any]) -> dict | None:
    """The keyword arguments of :func:`ema_update` after ``step`` (``decay``, ``warmup``...)
    from the config keys of :data:`EMA_DEFAULTS` (missing keys: defaults); None when
    ``ema_decay`` is 0 (no EMA)."""
    c = {**EMA_DEFAULTS, **{k: cfg[k] for k in EMA_DEFAULTS if k in cfg}}
    if not c["ema_decay"]:
        return None
    return {
        "decay": float(c["ema_decay"]),
        "warmup": bool(c["ema_warmup"]),
        "warmup_gamma": float(c["ema_warmup_gamma"]),
        "warmup_power": float(c["ema_warmup_power"]),
        "min_decay": float(c["ema_min_decay"]),
        "update_after_step": int(c["ema_update_after_step"]),
    }
