"""Rematerialisation (gradient checkpointing): keep fewer activations for the backward pass and
recompute them instead, trading compute for memory on large models.

Two places to put it, chosen by the ``remat`` config key of :func:`jaxcnn.train.fit`:

``"blocks"``: every residual block is wrapped in :func:`flax.linen.remat` (``jax.checkpoint``
    lifted to modules), so the backward pass keeps only each block's *input* and recomputes the
    block's inside when it gets there. This is what saves memory: activations kept go from
    "every conv/BN/ReLU output" to "one tensor per block" (plus one block's inside at a time).
    Works for models with a ``block_cls`` field (the ResNet/ResNeXt/WRN family); parameter names
    and checkpoints are unchanged.
``"dots"`` / ``"full"``: the whole forward pass under one ``jax.checkpoint`` with the policy
    ``dots_saveable`` (keep conv/matmul outputs, recompute BatchNorm, activations and pooling)
    or ``nothing_saveable``; any model, applied by the train step (``make_train_step(remat=)``).
    ``"full"`` recomputes everything but the recomputation materialises the activations again
    in the backward pass, so it rarely lowers the peak; it is there to compare.

Measured (ResNet-50, see ``experiments/benchmark_steps.py --remat-compare`` and the README).
"""

from __future__ import annotations

import inspect

import flax.linen as nn
import jax

__all__ = ["REMAT_POLICIES", "REMAT_MODES", "remat_blocks", "check_remat", "saved_residual_bytes"]

REMAT_POLICIES = {
    # save conv/matmul outputs, recompute BatchNorm, activations and pooling in the backward pass
    "dots": jax.checkpoint_policies.dots_saveable,
    # save nothing inside the model: recompute the whole forward pass in the backward pass
    "full": jax.checkpoint_policies.nothing_saveable,
}
REMAT_MODES = ("blocks", *REMAT_POLICIES)


def check_remat(remat) -> str | None:
    """Normalise the ``remat`` flag: None/""/"none"/False -> None, else one of REMAT_MODES."""
    if remat in (None, False, "", "none", "None"):
        return None
    if remat is True:
        return "blocks"
    if remat not in REMAT_MODES:
        raise ValueError(f"remat={remat!r}: expected one of {list(REMAT_MODES)} or None")
    return remat


def remat_blocks(model: nn.Module) -> nn.Module:
    """``model`` with its ``block_cls`` wrapped in :func:`flax.linen.remat`. Python arguments of
    the block's ``__call__`` after ``x`` (e.g. ``train: bool``) are made static."""
    block = getattr(model, "block_cls", None)
    if block is None:
        raise ValueError(
            f"remat='blocks' needs a model with a block_cls field (ResNet family); "
            f"{type(model).__name__} has none: use remat='dots' instead"
        )
    params = list(inspect.signature(block.__call__).parameters)
    # flax counts ``self`` as argument 0 of a module method
    static = tuple(range(2, len(params)))
    return model.clone(block_cls=nn.remat(block, static_argnums=static))


def saved_residual_bytes(model: nn.Module, variables: dict, x, remat: str | None = None) -> int:
    """Bytes JAX keeps from the forward pass for the backward pass of a training-mode loss
    (the leaves of ``jax.vjp``'s closure; parameters included). This is what remat changes,
    before XLA's own scheduling and rematerialisation decide the actual peak, so it is the same
    on every platform. ``x``: a batch or its ``jax.ShapeDtypeStruct``. ``remat``: "dots"/"full"
    as the train step applies them (they keep only the model's input; the backward pass then
    recomputes every residual at once, so unlike "blocks" they do not lower the peak)."""
    remat = check_remat(remat)

    def loss(params, x):
        def apply(p, x):
            return model.apply(
                {**variables, "params": p},
                x,
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": jax.random.key(0)},
            )[0]

        if remat in REMAT_POLICIES:
            apply = jax.checkpoint(apply, policy=REMAT_POLICIES[remat])
        return apply(params, x).astype("float32").sum()

    # the residuals are the leaves of the VJP closure (a jax.tree_util.Partial); eval_shape
    # gives their shapes without running anything
    closure = jax.eval_shape(
        lambda p, x: jax.vjp(lambda q: loss(q, x), p)[1], variables["params"], x
    )
    return int(sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(closure)))
