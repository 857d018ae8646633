"""``TrainState``: everything a training run needs to continue, as one pytree."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import serialization, struct

from jaxcnn.train.ema import ema_init

__all__ = ["TrainState", "create_train_state"]


@struct.dataclass
class TrainState:
    """Parameters, BatchNorm statistics, optimizer state, step and RNG key.

    ``apply_fn`` and ``tx`` are static (not saved); everything else is a pytree leaf that Orbax
    saves and restores whole. ``rng`` is a raw ``uint32[2]`` key; per-step dropout keys are
    ``jax.random.fold_in(rng, step)`` as in the Flax ImageNet example, so a resumed run draws
    the same keys as an uninterrupted one. ``dynamic_scale`` holds the float16 loss scale
    (:func:`jaxcnn.train.precision.init_dynamic_scale`), None in float32/bfloat16. ``ema``
    holds the weight EMA as a variables dict (:mod:`jaxcnn.train.ema`), None when off.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array
    apply_fn: Callable = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)
    # float16 loss scaling (``jaxcnn.train.precision``); None otherwise.
    dynamic_scale: Any = None
    # weight EMA ``{"params", "batch_stats"}`` (``jaxcnn.train.ema``); None when off.
    ema: Any = None

    if TYPE_CHECKING:  # added by struct.dataclass, which flax's annotations do not show

        def replace(self, **changes: Any) -> TrainState: ...

    def apply_gradients(self, grads, **changes) -> "TrainState":
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
        params = optax.apply_updates(self.params, updates)
        return self.replace(step=self.step + 1, params=params, opt_state=opt_state, **changes)

    @property
    def variables(self) -> dict:
        """``{"params": ..., "batch_stats": ...}`` ready for ``model.apply``."""
        v = {"params": self.params}
        if self.batch_stats:
            v["batch_stats"] = self.batch_stats
        return v


_FIELDS = ("step", "params", "batch_stats", "opt_state", "rng", "dynamic_scale", "ema")
_OPTIONAL = ("dynamic_scale", "ema")


def _to_state_dict(state: TrainState) -> dict:
    # ``dynamic_scale`` and ``ema`` only appear when set, so checkpoints without them keep the
    # layout they had before float16 and EMA support (and old checkpoints still restore).
    return {
        k: serialization.to_state_dict(getattr(state, k))
        for k in _FIELDS
        if k not in _OPTIONAL or getattr(state, k) is not None
    }


def _from_state_dict(state: TrainState, d: dict) -> TrainState:
    unknown = set(d) - set(_FIELDS)
    if unknown:
        raise ValueError(f"unknown TrainState field(s) {sorted(unknown)} in state dict")
    updates = {}
    for k in _FIELDS:
        if k not in d:
            if k in _OPTIONAL:
                continue
            raise ValueError(f"missing field {k} in state dict while restoring a TrainState")
        updates[k] = serialization.from_state_dict(getattr(state, k), d[k], name=k)
    if "ema" not in d and state.ema is not None:
        # EMA switched on for a run saved without one: it starts at the restored weights.
        updates["ema"] = ema_init(updates["params"], updates["batch_stats"])
    return state.replace(**updates)


serialization.register_serialization_state(
    TrainState, _to_state_dict, _from_state_dict, override=True
)


def create_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    input_shape: Sequence[int],
    seed: int = 0,
    variables: dict | None = None,
    dynamic_scale: Any = None,
    ema: bool = False,
) -> TrainState:
    """Initialise ``model`` for inputs of ``input_shape`` (batch first) and wrap it with ``tx``.

    Pass ``variables`` to start from existing parameters (transfer learning, converted weights),
    ``dynamic_scale`` for float16 training (``precision.init_dynamic_scale("float16")``),
    ``ema=True`` to keep a weight EMA (starting at the initial weights) in ``state.ema``.
    """
    rng = jax.random.PRNGKey(seed)
    init_rng, state_rng = jax.random.split(rng)
    if variables is None:
        x = jnp.zeros(tuple(input_shape), jnp.float32)
        variables = jax.jit(lambda r: model.init({"params": r, "dropout": r}, x, train=False))(
            init_rng
        )
    params = variables["params"]
    batch_stats = variables.get("batch_stats", {})
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=tx.init(params),
        rng=state_rng,
        apply_fn=model.apply,
        tx=tx,
        dynamic_scale=dynamic_scale,
        ema=ema_init(params, batch_stats) if ema else None,
    )
