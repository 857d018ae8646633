"""Mixed precision: a policy chosen by one config flag, and dynamic loss scaling for float16.

``bfloat16`` (the usual choice on TPUs and recent GPUs): the model computes in bfloat16
(``dtype=jnp.bfloat16`` passed to every layer), its parameters stay float32
(``param_dtype``), so the optimizer updates float32 master weights with float32 gradients;
BatchNorm statistics stay float32 (flax's ``BatchNorm`` reduces and keeps its running averages
in float32 whatever ``dtype`` is); the loss is computed from the logits cast to float32
(``jaxcnn.train.losses``). bfloat16 has float32's exponent range, so no loss scaling is needed.

``float16`` (older GPUs): the same, plus dynamic loss scaling (Micikevicius et al., 2018): the
loss is multiplied by a scale before differentiation so small gradients do not flush to zero;
the gradients are divided back in float32; a step whose gradients are not finite is skipped and
the scale halved; after ``growth_interval`` finite steps it doubles. The scale lives in
``TrainState.dynamic_scale`` (a :class:`flax.training.dynamic_scale.DynamicScale`) and is
checkpointed with the rest of the state.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax.training.dynamic_scale import DynamicScale

__all__ = [
    "Policy",
    "get_policy",
    "init_dynamic_scale",
    "update_dynamic_scale",
    "all_finite",
    "DynamicScale",
]

_ALIASES = {
    "float32": "float32",
    "fp32": "float32",
    "f32": "float32",
    "none": "float32",
    "": "float32",
    "false": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "true": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "f16": "float16",
    "half": "float16",
}


@dataclasses.dataclass(frozen=True)
class Policy:
    """What computes in which dtype. ``model_kwargs`` go to ``create_model``."""

    name: str
    compute_dtype: Any  # None: the layers' default (float32)
    param_dtype: Any = jnp.float32
    loss_scaling: bool = False

    @property
    def model_kwargs(self) -> dict:
        if self.compute_dtype is None:
            return {}
        return {"dtype": self.compute_dtype, "param_dtype": self.param_dtype}


def get_policy(mixed_precision: Any = None) -> Policy:
    """Policy for the config key ``precision``: ``False``/``None``/``"float32"``,
    ``True``/``"bfloat16"``/``"bf16"``, or ``"float16"``/``"fp16"`` (with loss scaling)."""
    if isinstance(mixed_precision, Policy):
        return mixed_precision
    key = str(mixed_precision if mixed_precision is not None else "").lower()
    if isinstance(mixed_precision, bool):
        key = "true" if mixed_precision else "false"
    if key not in _ALIASES:
        raise ValueError(
            f"precision={mixed_precision!r}: expected 'float32', 'bfloat16' or "
            f"'float16' (or True/False)"
        )
    name = _ALIASES[key]
    if name == "float32":
        return Policy("float32", None)
    if name == "bfloat16":
        return Policy("bfloat16", jnp.bfloat16)
    return Policy("float16", jnp.float16, loss_scaling=True)


def init_dynamic_scale(
    policy: Policy | Any = None, initial_scale: float = 2.0**15, growth_interval: int = 2000
) -> DynamicScale | None:
    """The loss-scale state for ``TrainState.dynamic_scale`` (None unless the policy needs it).
    The scale and the finite-step counter are arrays, so the state is one pytree of arrays."""
    if not get_policy(policy).loss_scaling:
        return None
    # flax annotates fin_steps/scale as int/float, but its own update stores arrays there
    return DynamicScale(
        growth_interval=growth_interval,
        fin_steps=jnp.zeros((), jnp.int32),  # type: ignore[arg-type]
        scale=jnp.asarray(initial_scale, jnp.float32),  # type: ignore[arg-type]
    )


def all_finite(tree) -> jax.Array:
    """True when every element of every leaf is finite."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def update_dynamic_scale(ds: DynamicScale, finite: jax.Array) -> DynamicScale:
    """Halve the scale after a non-finite step; double it after ``growth_interval`` finite
    steps in a row (flax's ``DynamicScale`` rule, applied once per optimizer step so it also
    works with gradient accumulation)."""
    grow = ds.fin_steps == ds.growth_interval
    up = jnp.where(
        grow, jnp.minimum(ds.scale * ds.growth_factor, jnp.finfo(jnp.float32).max), ds.scale
    )
    down: jax.Array | float = ds.scale * ds.backoff_factor
    if ds.minimum_scale is not None:
        down = jnp.maximum(down, ds.minimum_scale)
    return ds.replace(
        scale=jnp.where(finite, up, down).astype(jnp.float32),
        fin_steps=jnp.where(grow | ~finite, 0, ds.fin_steps + 1).astype(jnp.int32),
    )
