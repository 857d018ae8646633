"""Parameter paths, stages and labels: how ``jaxcnn.transfer`` addresses parts of a model.

Every parameter has a ``/``-joined path (``"stage3/block1/conv1/kernel"``, big_vision style).
A *rule list* ``[(pattern, label), ...]`` maps paths to labels; the first rule that matches wins
and a parameter that no rule matches is an error (never trained or frozen by accident).
A pattern is a regular expression that must match the whole path or a leading run of its
components, so a stage name matches everything under it: ``"stage3"`` matches
``"stage3/block1/conv1/kernel"`` but not ``"stage30/..."``; ``".*/bn1"`` matches every ``bn1``'s
``scale`` and ``bias``; ``".*"`` is the catch-all. A label of ``None`` means ``"frozen"``.

*Stages* are a model's top-level parameter names in creation order (stem first, ``head`` last):
the unit of freezing, per-stage learning rates and layer-wise decay.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from typing import Any, Sequence

import flax.linen as nn
import jax
from flax import traverse_util

from jaxcnn.utils import abstract_init, count_params, map_with_path, path_str, tree_paths

__all__ = [
    "FROZEN",
    "TRAINABLE",
    "path_str",
    "tree_paths",
    "map_with_path",
    "match",
    "label_params",
    "stages",
    "param_order",
    "stage_rules",
    "count_params",
    "count_trainable",
    "describe",
]

FROZEN = "frozen"
TRAINABLE = "trainable"
Rules = Sequence[tuple[str, Any]] | Mapping[str, Any]


@functools.lru_cache(maxsize=1024)
def _compile(pattern: str) -> re.Pattern:
    try:
        return re.compile(f"(?:{pattern})(?:/.*)?")
    except re.error as e:
        raise ValueError(f"invalid parameter pattern {pattern!r}: {e}") from None


def match(pattern: str, path: str) -> bool:
    """Whether ``pattern`` matches ``path`` whole or a leading run of its components."""
    return _compile(pattern).fullmatch(path) is not None


def _rules(rules: Rules) -> list[tuple[str, Any]]:
    items = list(rules.items()) if isinstance(rules, Mapping) else list(rules)
    out = []
    for r in items:
        if isinstance(r, str):
            raise ValueError(f"rule {r!r} has no label: rules are (pattern, label) pairs")
        pattern, label = r
        _compile(pattern)
        out.append((pattern, FROZEN if label is None else label))
    return out


def label_params(params, rules: Rules):
    """A label pytree for ``params`` (same structure) from ``(pattern, label)`` rules.

    The first matching rule wins; ``None`` labels mean ``"frozen"``. Raises ``ValueError``
    listing every parameter that no rule matches. Works on arrays and on
    ``jax.ShapeDtypeStruct`` leaves (``jax.eval_shape`` output) alike.

    >>> labels = label_params(params, [("head", "head"), ("stage4", "stage4"), (".*", None)])
    """
    rules = _rules(rules)
    unmatched = []

    def one(path, _):
        for pattern, label in rules:
            if match(pattern, path):
                return label
        unmatched.append(path)
        return None

    labels = map_with_path(one, params)
    if unmatched:
        shown = ", ".join(unmatched[:12]) + (", ..." if len(unmatched) > 12 else "")
        raise ValueError(
            f"{len(unmatched)} parameter(s) match no rule: {shown}. Add a rule for "
            f"them (e.g. a final ('.*', 'frozen')); rules were "
            f"{[p for p, _ in rules]}"
        )
    return labels


def _creation_order(model: nn.Module, input_shape: Sequence[int]) -> list[str]:
    params = abstract_init(model, input_shape).get("params", {})  # dicts in creation order
    return list(traverse_util.flatten_dict(dict(params), sep="/"))


def param_order(model: "nn.Module | str", input_shape: Sequence[int] | None = None) -> list[str]:
    """Every parameter path of ``model`` in creation (forward) order, without allocating.

    ``model`` is a module (then ``input_shape`` is required) or a registered name.
    """
    if isinstance(model, str):
        from jaxcnn import models

        input_shape = input_shape or (1, *models.model_info(model).input_size)
        model = models.create_model(model)
    if input_shape is None:
        raise ValueError("param_order needs input_shape (batch first) when given a module")
    return _creation_order(model, input_shape)


def stages(model_or_params, input_shape: Sequence[int] | None = None) -> list[str]:
    """A model's stages: its top-level parameter names, stem first, ``head`` last.

    Pass a module and ``input_shape`` (exact, without allocating), a registered model name, or
    a params dict straight from ``model.init`` (it keeps creation order). JAX transformations
    (``jax.jit``, ``jax.tree.map``, a train step) return dicts with *sorted* keys; if the order
    is visibly lost (``head`` not last) this raises instead of guessing.
    """
    if isinstance(model_or_params, (str, nn.Module)):
        names: list[str] = []
        for p in param_order(model_or_params, input_shape):
            top = p.split("/", 1)[0]
            if top not in names:
                names.append(top)
        return names
    params = model_or_params
    if isinstance(params, Mapping) and "params" in params and isinstance(params["params"], Mapping):
        params = params["params"]
    names = list(params)
    if "head" in names and names[-1] != "head":
        raise ValueError(
            f"the params' top-level order {names} is not creation order (JAX sorts dict keys "
            f"in jit/tree.map outputs). Pass the module instead: stages(model, input_shape), "
            f"or params straight from model.init."
        )
    return names


def stage_rules(names: Sequence[str], label=None) -> list[tuple[str, Any]]:
    """``[(re.escape(name), name-or-label), ...]``: one rule per stage (or path prefix)."""
    return [(re.escape(n), n if label is None else label) for n in names]


def count_trainable(params, labels, frozen: Sequence[Any] = (FROZEN,)) -> int:
    """Number of parameters whose label is not frozen."""
    flags = jax.tree.map(lambda lab: lab not in frozen, labels)
    return int(
        sum(
            math.prod(p.shape) for p, f in zip(jax.tree.leaves(params), jax.tree.leaves(flags)) if f
        )
    )


def describe(params, labels) -> str:
    """A small table: label, number of tensors, number of parameters (frozen marked)."""
    rows: dict[Any, list[int]] = {}
    for p, lab in zip(jax.tree.leaves(params), jax.tree.leaves(labels)):
        r = rows.setdefault(lab, [0, 0])
        r[0] += 1
        r[1] += math.prod(p.shape)
    total = sum(r[1] for r in rows.values())
    lines = [f"{'label':<16}{'tensors':>8}{'params':>14}"]
    for lab, (n, c) in rows.items():
        lines.append(f"{str(lab):<16}{n:>8}{c:>14,}")
    trainable = sum(c for lab, (_, c) in rows.items() if lab != FROZEN)
    lines.append(f"trainable {trainable:,} of {total:,}")
    return "\n".join(lines)
