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
from jaxcnn.train.precision import all_finite, update_dynamic_scale
from jaxcnn.train.remat import REMAT_POLICIES
from jaxcnn.train.state import TrainState

__all__ = [
    "make_train_step",
    "make_eval_step",
    "train_step_fn",
    "eval_step_fn",
    "ShardedStep",
    "REMAT_POLICIES",
]


def _split_micro(x, k: int):
    """``(B, ...) -> (k, B/k, ...)``; micro-batch ``i`` holds examples ``i, i+k, i+2k, ...``, so
    with the batch sharded in contiguous blocks every micro-batch is spread over all devices."""
    return jnp.swapaxes(x.reshape((x.shape[0] // k, k) + x.shape[1:]), 0, 1)


def train_step_fn(
    state: TrainState,
    batch: dict,
    *,
    label_smoothing: float = 0.0,
    aux_weight: float = 0.0,
    loss_fn: Callable | None = None,
    augment: Callable | None = None,
    grad_accum_steps: int = 1,
    remat: str | None = None,
):
    """One SGD step on ``batch = {"image", "label", ["mask"]}``; returns (state, metric sums).

    ``aux_weight > 0`` adds ``aux_weight * CE`` of every auxiliary classifier the model sows
    into the ``aux_logits`` collection (GoogLeNet, Inception v3).
    ``loss_fn(logits, labels, weights)`` replaces the cross-entropy if given (a weighted mean);
    ``augment(key, images)`` transforms the images on device first (keyed by step).

    ``grad_accum_steps=k`` splits the batch into ``k`` micro-batches (``lax.scan``, one in memory
    at a time) and applies one update with their gradients weighted by their example counts:
    the same update as the whole batch at once for a model without BatchNorm (or dropout).
    With BatchNorm each micro-batch is normalised with its own statistics and the running
    averages are updated ``k`` times, so results differ from the big batch (as they do between
    devices without synced BN); dropout draws per micro-batch keys.
    ``remat`` (``"dots"`` or ``"full"``) wraps the whole model in ``jax.checkpoint`` with that
    policy (see ``jaxcnn.train.remat``; per-block remat is a model option: ``remat_blocks``).
    ``state.dynamic_scale`` (float16) scales the loss, and skips non-finite steps.
    """
    k = int(grad_accum_steps)
    dropout_rng = jax.random.fold_in(state.rng, state.step)
    images = batch["image"]
    if augment is not None:
        images = augment(jax.random.fold_in(dropout_rng, 1), images)
    labels = batch["label"]
    weights = batch.get("mask")
    has_bn = bool(state.batch_stats)
    mutable = (["batch_stats"] if has_bn else []) + (["aux_logits"] if aux_weight else [])
    ds = state.dynamic_scale

    def apply(variables, x, rng):
        return state.apply_fn(
            variables, x, train=True, mutable=mutable or False, rngs={"dropout": rng}
        )

    if remat:
        if remat not in REMAT_POLICIES:
            raise ValueError(
                f"remat={remat!r}: the step takes one of {sorted(REMAT_POLICIES)}; "
                f"per-block remat is jaxcnn.train.remat.remat_blocks(model)"
            )
        apply = jax.checkpoint(apply, policy=REMAT_POLICIES[remat])

    def loss_and_grads(batch_stats, x, y, w, rng, frac):
        def compute_loss(params):
            variables = {"params": params}
            if has_bn:
                variables["batch_stats"] = batch_stats
            out = apply(variables, x, rng)
            logits, updates = out if mutable else (out, {})
            if loss_fn is None:
                loss = cross_entropy(logits, y, w, label_smoothing)
            else:
                loss = loss_fn(logits, y, w)
            if aux_weight:
                for aux in jax.tree.leaves(updates.get("aux_logits", {})):
                    loss = loss + aux_weight * cross_entropy(aux, y, w, label_smoothing)
            if frac is not None:
                loss = loss * frac
            if ds is not None:
                loss = loss * ds.scale
            return loss, (logits, updates)

        return jax.value_and_grad(compute_loss, has_aux=True)(state.params)

    if k == 1:
        (_, (logits, updates)), grads = loss_and_grads(
            state.batch_stats, images, labels, weights, dropout_rng, None
        )
        new_stats = updates["batch_stats"] if has_bn else None
        metrics = classification_metrics(logits, labels, weights)
    else:
        n = images.shape[0]
        if n % k:
            raise ValueError(f"batch of {n} does not split into grad_accum_steps={k} micro-batches")
        w_all = jnp.ones((n,), jnp.float32) if weights is None else weights
        micro = jax.tree.map(lambda a: _split_micro(a, k), (images, labels, w_all))
        # each micro-batch's mean loss weighted by its share of the (unmasked) examples
        fracs = jnp.sum(micro[2], axis=1) / jnp.maximum(jnp.sum(w_all), 1.0)

        def body(carry, xs):
            grads_acc, stats, metrics_acc = carry
            x, y, w, frac, i = xs
            w_arg = None if weights is None else w
            (_, (logits, updates)), g = loss_and_grads(
                stats, x, y, w_arg, jax.random.fold_in(dropout_rng, i), frac
            )
            m = classification_metrics(logits, y, w)
            return (
                jax.tree.map(jnp.add, grads_acc, g),
                updates["batch_stats"] if has_bn else stats,
                jax.tree.map(jnp.add, metrics_acc, m),
            ), None

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        m0 = {"loss_sum": jnp.zeros(()), "correct": jnp.zeros(()), "count": jnp.zeros(())}
        (grads, new_stats, metrics), _ = jax.lax.scan(
            body, (zeros, state.batch_stats, m0), (*micro, fracs, jnp.arange(k))
        )

    changes = {"batch_stats": new_stats} if has_bn else {}
    if ds is None:
        return state.apply_gradients(grads, **changes), metrics
    grads = jax.tree.map(lambda g: g.astype(jnp.float32) / ds.scale, grads)
    finite = all_finite(grads)
    new_state = state.apply_gradients(
        grads, dynamic_scale=update_dynamic_scale(ds, finite), **changes
    )
    # a step with inf/nan gradients changes nothing but the scale (and the step counter)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa
    new_state = new_state.replace(
        params=keep(new_state.params, state.params),
        opt_state=keep(new_state.opt_state, state.opt_state),
        batch_stats=keep(new_state.batch_stats, state.batch_stats),
    )
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


class ShardedStep:
    """A jitted step with data-parallel shardings that checks the batch size before compiling.

    Behaves like the ``jax.jit`` function it wraps (``lower``, ``_cache_size``, ...)."""

    def __init__(self, jitted, num_devices: int, grad_accum_steps: int = 1):
        self.jitted, self.num_devices, self.grad_accum_steps = jitted, num_devices, grad_accum_steps

    def _check(self, batch):
        n = jax.tree.leaves(batch)[0].shape[0]
        k = self.grad_accum_steps
        if n % k:
            raise ValueError(f"batch of {n} does not split into grad_accum_steps={k} micro-batches")
        if (n // k) % self.num_devices:
            what = "batch size" if k == 1 else f"micro-batch size ({n} / {k})"
            raise ValueError(
                f"{what} {n // k} does not divide by the {self.num_devices} "
                f"devices of the data axis; use a multiple of {self.num_devices}"
            )

    def __call__(self, state, batch):
        self._check(batch)
        return self.jitted(state, batch)

    def lower(self, state, batch):
        self._check(batch)
        return self.jitted.lower(state, batch)

    def __getattr__(self, name):
        return getattr(self.jitted, name)


def _shardings(mesh):
    """``(replicated, data)`` shardings from a ``DataParallel`` or a ``Mesh``."""
    from jaxcnn.train.mesh import DATA_AXIS, DataParallel

    if isinstance(mesh, DataParallel):
        return mesh.replicated, mesh.data, mesh.num_devices
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    return NamedSharding(mesh, P()), NamedSharding(mesh, P(DATA_AXIS)), mesh.shape[DATA_AXIS]


def make_train_step(
    label_smoothing: float = 0.0,
    aux_weight: float = 0.0,
    loss_fn: Callable | None = None,
    augment: Callable | None = None,
    donate: bool = True,
    *,
    mesh=None,
    grad_accum_steps: int = 1,
    remat: str | None = None,
    **jit_kwargs,
):
    """``jax.jit`` of :func:`train_step_fn` with the state donated (its buffers are reused).

    ``mesh`` (a :class:`jaxcnn.train.mesh.DataParallel` or a ``Mesh`` with a ``data`` axis):
    the batch is sharded along ``data`` and the state replicated (in and out), so XLA runs the
    global-batch step data-parallel with synced BatchNorm; a batch (or micro-batch) size that
    does not divide by the device count raises a ValueError before compiling.
    ``grad_accum_steps`` and ``remat``: see :func:`train_step_fn`.
    """
    if int(grad_accum_steps) < 1:
        raise ValueError(f"grad_accum_steps must be >= 1, got {grad_accum_steps}")

    def step(state, batch):
        return train_step_fn(
            state,
            batch,
            label_smoothing=label_smoothing,
            aux_weight=aux_weight,
            loss_fn=loss_fn,
            augment=augment,
            grad_accum_steps=grad_accum_steps,
            remat=remat,
        )

    donate_argnums = (0,) if donate else ()
    if mesh is None:
        return jax.jit(step, donate_argnums=donate_argnums, **jit_kwargs)
    replicated, data, n = _shardings(mesh)
    jitted = jax.jit(
        step,
        donate_argnums=donate_argnums,
        in_shardings=(replicated, data),
        out_shardings=(replicated, replicated),
        **jit_kwargs,
    )
    return ShardedStep(jitted, n, int(grad_accum_steps))


def make_eval_step(num_classes: int | None = None, *, mesh=None, **jit_kwargs):
    """``jax.jit`` of :func:`eval_step_fn` (data-parallel over ``mesh`` if given)."""

    def step(state, batch):
        return eval_step_fn(state, batch, num_classes=num_classes)

    if mesh is None:
        return jax.jit(step, **jit_kwargs)
    replicated, data, n = _shardings(mesh)
    return ShardedStep(
        jax.jit(step, in_shardings=(replicated, data), out_shardings=replicated, **jit_kwargs), n
    )
