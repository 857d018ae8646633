"""Freezing, per-layer learning rates and frozen BatchNorm: the optimizer side of transfer.

- :func:`freeze` wraps any optax transformation so that parameters labelled ``"frozen"`` get
  ``optax.set_to_zero()`` (and hold no optimizer state) through ``optax.partition``.
- :func:`scale_by_label` multiplies each label's *update* by a factor. For every optimizer whose
  update is proportional to its learning rate (SGD, momentum, Adam(W), RMSProp, LAMB, ...) this
  is the same as multiplying that label's learning rate, and it composes with any schedule the
  base optimizer already has. :func:`layerwise_decay` computes ``decay ** (distance from head)``.
- :func:`finetune` combines the two; :func:`create_state` builds a ready ``TrainState``.
- :class:`FrozenBatchNorm` wraps ``model.apply`` so the BatchNorm layers of frozen parts run with
  their running statistics and leave them bit-identical (the feature-extractor strategy), via
  ``flax.linen.intercept_methods``: no change to the model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxcnn.transfer.labels import FROZEN, TRAINABLE, label_params, tree_paths

__all__ = [
    "freeze",
    "scale_by_label",
    "finetune",
    "layerwise_decay",
    "scales_from_rates",
    "FrozenBatchNorm",
    "frozen_batchnorm",
    "frozen_bn_modules",
    "create_state",
    "as_labels",
]


def as_labels(params, labels_or_rules):
    """A label tree, given a label tree or rules (a list of ``(pattern, label)`` pairs, or a
    dict ``{pattern: label}``; a label tree's top-level values are dicts, a rule dict's not)."""
    x = labels_or_rules
    if isinstance(x, (list, tuple)) or (
        isinstance(x, Mapping) and not any(isinstance(v, Mapping) for v in x.values())
    ):
        return label_params(params, x)
    return x


def freeze(tx: optax.GradientTransformation, labels) -> optax.GradientTransformation:
    """``tx`` for every parameter not labelled ``"frozen"``; ``optax.set_to_zero()`` for those.

    All trainable parameters share one ``tx`` (so e.g. global-norm clipping sees them all).
    """
    mask = jax.tree.map(lambda lab: FROZEN if lab == FROZEN else TRAINABLE, labels)
    return optax.partition({FROZEN: optax.set_to_zero(), TRAINABLE: tx}, mask)


def scale_by_label(
    scales: Mapping[Any, float | Callable], labels, default: float = 1.0
) -> optax.GradientTransformation:
    """Multiply the updates of each label by ``scales[label]`` (a float or a schedule
    ``step -> float``); labels not in ``scales`` use ``default``; a scale of 0 freezes."""
    present = set(jax.tree.leaves(labels))
    unknown = set(scales) - present
    if unknown:
        raise ValueError(
            f"scales given for labels that no parameter has: {sorted(map(str, unknown))}"
            f"; labels are {sorted(map(str, present))}"
        )
    transforms = {}
    for label in present:
        s = scales.get(label, default)
        if label == FROZEN or (not callable(s) and s == 0):
            transforms[label] = optax.set_to_zero()
        elif callable(s):
            transforms[label] = optax.scale_by_schedule(s)
        elif s == 1:
            transforms[label] = optax.identity()
        else:
            transforms[label] = optax.scale(float(s))
    return optax.partition(transforms, labels)


def finetune(
    tx: optax.GradientTransformation, labels, lr_scales: Mapping | None = None, lr_labels=None
) -> optax.GradientTransformation:
    """``tx`` on the trainable parameters, zero for ``"frozen"`` ones, then per-label rate
    multipliers ``lr_scales`` (over ``lr_labels``, default ``labels``).

    >>> labels = label_params(params, stage_rules(stages(model, shape)))
    >>> tx = finetune(optax.adam(1e-3), labels, layerwise_decay(stages(model, shape), 0.5))
    """
    out = freeze(tx, labels)
    if lr_scales:
        out = optax.chain(
            out, scale_by_label(lr_scales, labels if lr_labels is None else lr_labels)
        )
    return out


def layerwise_decay(groups: Sequence[str], decay: float) -> dict[str, float]:
    """``{group: decay ** (distance from the last group)}``: the head gets 1, the stage before it
    ``decay``, the stem ``decay ** (len(groups) - 1)``. ``groups`` in forward order (e.g.
    :func:`~jaxcnn.transfer.stages`, or finer path prefixes such as ``"stage1/block0"``)."""
    if not 0 < decay <= 1:
        raise ValueError(f"decay must be in (0, 1], got {decay}")
    n = len(groups)
    return {g: float(decay ** (n - 1 - i)) for i, g in enumerate(groups)}


def scales_from_rates(rates: Mapping[str, float], base_lr: float) -> dict[str, float]:
    """Explicit per-stage learning rates -> multipliers of an optimizer built with ``base_lr``
    (e.g. ``{"stem": 1e-5, ..., "head": 1e-3}`` with ``optax.adam(1e-3)``)."""
    return {k: float(r) / float(base_lr) for k, r in rates.items()}


def frozen_bn_modules(labels, batch_stats) -> frozenset[tuple[str, ...]]:
    """Module paths of the BatchNorm layers (modules with ``batch_stats``) whose parameters are
    all labelled ``"frozen"``. A BatchNorm without scale/bias follows the nearest enclosing
    module that has parameters."""
    label_of = dict(zip(tree_paths(labels), jax.tree.leaves(labels)))
    modules = {tuple(p.split("/")[:-1]) for p in tree_paths(batch_stats)}
    frozen = set()
    for mod in modules:
        for cut in range(len(mod), -1, -1):
            prefix = "/".join(mod[:cut])
            own = [
                lab
                for p, lab in label_of.items()
                if not prefix or p == prefix or p.startswith(prefix + "/")
            ]
            if own:
                if all(lab == FROZEN for lab in own):
                    frozen.add(mod)
                break
    return frozenset(frozen)


@dataclasses.dataclass(frozen=True)
class FrozenBatchNorm:
    """``apply_fn`` whose BatchNorm layers under ``frozen`` module paths always use running
    statistics (so ``mutable=["batch_stats"]`` returns them unchanged). Hashable: two wrappers
    of the same function and paths are equal, so ``jax.jit`` caches stay valid."""

    apply_fn: Callable
    frozen: frozenset

    def __call__(self, variables, *args, **kwargs):
        if not self.frozen:
            return self.apply_fn(variables, *args, **kwargs)
        with nn.intercept_methods(self._intercept):
            return self.apply_fn(variables, *args, **kwargs)

    def _intercept(self, next_fun, args, kwargs, context):
        m = context.module
        if (
            context.method_name != "__call__"
            or not isinstance(m, nn.BatchNorm)
            or tuple(m.path) not in self.frozen
        ):
            return next_fun(*args, **kwargs)
        if kwargs.get("use_running_average") is not None:
            return next_fun(*args, **{**kwargs, "use_running_average": True})
        if len(args) > 1 and args[1] is not None:
            return next_fun(args[0], True, *args[2:], **kwargs)
        old = m.use_running_average
        object.__setattr__(m, "use_running_average", True)  # this call only
        try:
            return next_fun(*args, **kwargs)
        finally:
            object.__setattr__(m, "use_running_average", old)


def frozen_batchnorm(apply_fn: Callable, labels, batch_stats) -> Callable:
    """Wrap ``apply_fn`` so the BatchNorm layers of the frozen parts (per ``labels``) keep
    their running statistics fixed. Unwraps an existing :class:`FrozenBatchNorm` first."""
    while isinstance(apply_fn, FrozenBatchNorm):
        apply_fn = apply_fn.apply_fn
    return FrozenBatchNorm(apply_fn, frozen_bn_modules(labels, batch_stats or {}))


def create_state(
    model: nn.Module,
    variables: dict,
    tx: optax.GradientTransformation,
    labels,
    lr_scales: Mapping | None = None,
    seed: int = 0,
    apply_fn: Callable | None = None,
    copy: bool = True,
):
    """A ``TrainState`` that trains only the non-frozen labels (``labels``: a label tree or
    rules), with per-label rate multipliers and frozen BatchNorm statistics.

    ``copy=True`` copies ``variables`` first: the train step donates the state, which would
    otherwise delete the caller's arrays (e.g. pretrained weights reused for several runs).

    >>> state = create_state(model, variables, optax.adam(1e-3), [("head", "head"), (".*", None)])
    """
    from jaxcnn.train.state import create_train_state

    labels = as_labels(variables["params"], labels)
    if copy:
        variables = jax.tree.map(jnp.copy, dict(variables))
    state = create_train_state(
        model, finetune(tx, labels, lr_scales), (), seed=seed, variables=variables
    )
    return state.replace(
        apply_fn=frozen_batchnorm(apply_fn or model.apply, labels, variables.get("batch_stats", {}))
    )
