"""The jit-compiled train and eval steps.

One ``jax.jit`` each, with the state donated in training. The step is written for the *global*
batch: under ``jax.jit`` with a batch sharded along a ``data`` mesh axis, XLA partitions it and
BatchNorm's batch statistics are computed over the global batch (synchronised BatchNorm) with no
``axis_name`` plumbing; see ``jaxcnn.train.mesh``.
"""

from __future__ import annotations

from collections.abc import Callable

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


def _forward(state: TrainState, mutable: list[str], remat: str | None) -> Callable:
    """``apply(variables, x, rng) -> (outputs, updates)`` in training mode, with ``remat``."""

    def apply(variables, x, rng):
        out = state.apply_fn(
            variables, x, train=True, mutable=mutable or False, rngs={"dropout": rng}
        )
        return out if mutable else (out, {})

    if not remat:
        return apply
    if remat not in REMAT_POLICIES:
        raise ValueError(
            f"remat={remat!r}: the step takes one of {sorted(REMAT_POLICIES)}; "
            f"per-block remat is jaxcnn.train.remat.remat_blocks(model)"
        )
    return jax.checkpoint(apply, policy=REMAT_POLICIES[remat])


def _differentiate(fn: Callable, params, trainable):
    """``jax.value_and_grad(fn, has_aux=True)(params)``, differentiating only the leaves that
    ``trainable`` (a tree of bools like ``params``, or None: all) marks: the others are closed
    over as constants, so no gradient is computed for them (nor for anything that only they
    feed, e.g. a frozen backbone's backward pass); their gradients are returned as zeros."""
    if trainable is None:
        return jax.value_and_grad(fn, has_aux=True)(params)
    leaves, treedef = jax.tree.flatten(params)
    mask = jax.tree.leaves(jax.tree.map(lambda _, m: bool(m), params, trainable))

    def merge(parts, rest):
        it = iter(parts)
        return jax.tree.unflatten(treedef, [next(it) if m else x for x, m in zip(rest, mask)])

    out, g = jax.value_and_grad(lambda t: fn(merge(t, leaves)), has_aux=True)(
        [x for x, m in zip(leaves, mask) if m]
    )
    return out, merge(g, [jnp.zeros_like(x) for x in leaves])


def _grads_fn(
    state: TrainState, loss_fn: Callable, aux_weight: float, remat: str | None, trainable=None
):
    """``(batch_stats, x, y, w, rng, frac) -> ((loss, (logits, updates)), grads)`` where the
    loss is ``loss_fn`` plus ``aux_weight`` times the CE of every sown auxiliary classifier,
    times ``frac`` (a micro-batch's share) and the float16 loss scale; only the ``trainable``
    leaves are differentiated (see :func:`_differentiate`)."""
    has_bn = bool(state.batch_stats)
    mutable = (["batch_stats"] if has_bn else []) + (["aux_logits"] if aux_weight else [])
    apply = _forward(state, mutable, remat)
    ds = state.dynamic_scale

    def grads(batch_stats, x, y, w, rng, frac):
        def compute_loss(params):
            variables = {"params": params, **({"batch_stats": batch_stats} if has_bn else {})}
            logits, updates = apply(variables, x, rng)
            loss = loss_fn(logits, y, w)
            for aux in jax.tree.leaves(updates.get("aux_logits", {})) if aux_weight else ():
                loss = loss + aux_weight * loss_fn(aux, y, w)
            if frac is not None:
                loss = loss * frac
            if ds is not None:
                loss = loss * ds.scale
            return loss, (logits, updates)

        return _differentiate(compute_loss, state.params, trainable)

    return grads


def _accumulate(grads, state, images, labels, weights, rng, k: int, metrics_fn):
    """Gradients summed over ``k`` micro-batches (``lax.scan``, one in memory at a time), each
    weighted by its share of the unmasked examples; returns ``(grads, batch_stats, metrics)``."""
    n = images.shape[0]
    if n % k:
        raise ValueError(f"batch of {n} does not split into grad_accum_steps={k} micro-batches")
    w_all = jnp.ones((n,), jnp.float32) if weights is None else weights
    micro = jax.tree.map(lambda a: _split_micro(a, k), (images, labels, w_all))
    fracs = jnp.sum(micro[2], axis=1) / jnp.maximum(jnp.sum(w_all), 1.0)
    has_bn = bool(state.batch_stats)

    def body(carry, xs):
        g_acc, stats = carry
        x, y, w, frac, i = xs
        (_, (logits, updates)), g = grads(
            stats, x, y, None if weights is None else w, jax.random.fold_in(rng, i), frac
        )
        new_stats = updates["batch_stats"] if has_bn else stats
        return (jax.tree.map(jnp.add, g_acc, g), new_stats), metrics_fn(logits, y, w)

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    (g, stats), per_micro = jax.lax.scan(
        body, (zeros, state.batch_stats), (*micro, fracs, jnp.arange(k))
    )
    return g, stats, jax.tree.map(lambda m: jnp.sum(m, axis=0), per_micro)


def _apply_update(state: TrainState, grads, new_stats) -> TrainState:
    """The optimizer update; with a float16 loss scale the gradients are unscaled first and a
    step with non-finite gradients changes nothing but the scale (and the step counter)."""
    changes = {"batch_stats": new_stats} if state.batch_stats else {}
    ds = state.dynamic_scale
    if ds is None:
        return state.apply_gradients(grads, **changes)
    grads = jax.tree.map(lambda g: g.astype(jnp.float32) / ds.scale, grads)
    finite = all_finite(grads)
    new = state.apply_gradients(grads, dynamic_scale=update_dynamic_scale(ds, finite), **changes)

    def keep(a, b):
        return jax.tree.map(lambda x, y: jnp.where(finite, x, y), a, b)

    return new.replace(
        params=keep(new.params, state.params),
        opt_state=keep(new.opt_state, state.opt_state),
        batch_stats=keep(new.batch_stats, state.batch_stats),
    )


def train_step_fn(
    state: TrainState,
    batch: dict,
    *,
    label_smoothing: float = 0.0,
    aux_weight: float = 0.0,
    loss_fn: Callable | None = None,
    metrics_fn: Callable | None = None,
    augment: Callable | None = None,
    grad_accum_steps: int = 1,
    remat: str | None = None,
    trainable=None,
):
    """One SGD step on ``batch = {"image", "label", ["mask"]}``; returns (state, metric sums).

    ``loss_fn(logits, labels, weights)`` (a weighted mean) replaces the cross-entropy with
    ``label_smoothing``; ``metrics_fn(logits, labels, weights)`` (sums) replaces
    :func:`classification_metrics`. ``aux_weight > 0`` adds ``aux_weight`` times the loss of
    every auxiliary classifier the model sows into the ``aux_logits`` collection (GoogLeNet,
    Inception v3). ``augment(key, images)`` transforms the images on device first (keyed by
    step).

    ``grad_accum_steps=k`` splits the batch into ``k`` micro-batches (``lax.scan``, one in memory
    at a time) and applies one update with their gradients weighted by their example counts:
    the same update as the whole batch at once for a model without BatchNorm (or dropout).
    With BatchNorm each micro-batch is normalised with its own statistics and the running
    averages are updated ``k`` times, so results differ from the big batch (as they do between
    devices without synced BN); dropout draws per micro-batch keys.
    ``remat`` (``"dots"`` or ``"full"``) wraps the whole model in ``jax.checkpoint`` with that
    policy (see ``jaxcnn.train.remat``; per-block remat is a model option: ``remat_blocks``).
    ``state.dynamic_scale`` (float16) scales the loss, and skips non-finite steps.
    ``trainable`` (a tree of bools like ``state.params``; None: all) differentiates only the
    marked parameters: frozen ones get zero gradients without any being computed (what
    ``jaxcnn.transfer.Plan`` passes for a frozen backbone).
    """
    if loss_fn is None:

        def loss_fn(logits, y, w):
            return cross_entropy(logits, y, w, label_smoothing)

    metrics_fn = classification_metrics if metrics_fn is None else metrics_fn
    k = int(grad_accum_steps)
    rng = jax.random.fold_in(state.rng, state.step)
    images = batch["image"]
    if augment is not None:
        images = augment(jax.random.fold_in(rng, 1), images)
    labels, weights = batch["label"], batch.get("mask")
    grads = _grads_fn(state, loss_fn, aux_weight, remat, trainable)
    if k == 1:
        (_, (logits, updates)), g = grads(state.batch_stats, images, labels, weights, rng, None)
        new_stats = updates["batch_stats"] if state.batch_stats else None
        metrics = metrics_fn(logits, labels, weights)
    else:
        g, new_stats, metrics = _accumulate(
            grads, state, images, labels, weights, rng, k, metrics_fn
        )
    return _apply_update(state, g, new_stats), metrics


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
