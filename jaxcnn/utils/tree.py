"""Pytree helpers shared by every package: parameter paths, parameter counts, abstract init,
running sums.

One home, one contract each (the bottom of the package: this module imports nothing else from
``jaxcnn``):

- ``path_str(path)``: a path, as JAX key-path entries or plain names, joined with ``/``.
- ``tree_paths(tree)`` / ``map_with_path(fn, tree)``: the ``/``-joined path of every leaf.
- ``count_params(tree_or_module, input_shape=None)``: the number of scalars of a pytree, or of a
  module's ``params`` collection (``jaxcnn.models.count_params`` also takes registered names).
- ``abstract_init(model, input_shape)``: shapes and dtypes of ``model.init`` (``jax.eval_shape``:
  nothing allocated), dicts in creation order.
- ``tree_add(total, tree)``: one step of a running sum of metric trees (``None`` starts it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = [
    "abstract_init",
    "count_params",
    "map_with_path",
    "path_str",
    "tree_add",
    "tree_paths",
]


def _entry_name(entry: Any) -> str:
    for attr in ("key", "name", "idx"):  # DictKey, GetAttrKey, SequenceKey / FlattenedIndexKey
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def path_str(path: Sequence[Any]) -> str:
    """``"stage1/block0/conv1"`` from a path given as JAX key-path entries
    (``(DictKey('stage1'), DictKey('block0'), ...)``, as ``jax.tree_util`` yields them) or as
    plain names (``("stage1", "block0", "conv1")``, as ``module.scope.path``); the root is ``""``.
    """
    return "/".join(e if isinstance(e, str) else _entry_name(e) for e in path)


def tree_paths(tree: Any) -> list[str]:
    """Paths of the leaves of ``tree``, in JAX's flattening order (dict keys sorted)."""
    return [path_str(kp) for kp, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def map_with_path(fn: Callable[[str, Any], Any], tree: Any) -> Any:
    """``fn(path, leaf)`` over every leaf, ``path`` ``/``-joined; same structure as ``tree``."""
    return jax.tree_util.tree_map_with_path(lambda kp, x: fn(path_str(kp), x), tree)


def _rngs(seed: int) -> dict[str, jax.Array]:
    return {"params": jax.random.key(seed), "dropout": jax.random.key(seed + 1)}


def _key_order(tree: Any) -> Any:
    return {k: _key_order(v) for k, v in tree.items()} if isinstance(tree, Mapping) else None


def _reorder(tree: Any, keys: Any) -> Any:
    return {k: _reorder(tree[k], keys[k]) for k in keys} if keys is not None else tree


def abstract_init(model: Any, input_shape: Sequence[int], *, seed: int = 0, **apply_kwargs: Any):
    """Shapes and dtypes (``jax.ShapeDtypeStruct`` leaves) of
    ``model.init({"params", "dropout"}, zeros(input_shape), train=False, **apply_kwargs)``.

    Nothing is allocated or compiled (``jax.eval_shape``): this is how parameter counts of
    VGG-19 or ViT-H are taken cheaply. The nested dicts keep the order in which the model
    created its variables (stem first, head last), which ``jax.eval_shape``'s own output loses.
    """
    order: dict[str, Any] = {}

    def init():
        x = jnp.zeros(tuple(int(s) for s in input_shape), jnp.float32)
        v = model.init(_rngs(seed), x, train=False, **apply_kwargs)
        order["keys"] = _key_order(v)  # creation order, still intact inside the trace
        return v

    return _reorder(jax.eval_shape(init), order["keys"])


def count_params(tree_or_module: Any, input_shape: Sequence[int] | None = None) -> int:
    """Number of parameters.

    - a pytree (arrays or ``jax.ShapeDtypeStruct`` leaves, e.g. ``variables["params"]``): the
      number of scalars in all its leaves;
    - a Flax module: the scalars of its ``params`` collection (BatchNorm statistics excluded),
      from :func:`abstract_init` with an input of ``input_shape`` (batch first), required.

    ``jaxcnn.models.count_params`` is the same function that also takes a registered name.
    """
    if isinstance(tree_or_module, nn.Module):
        if input_shape is None:
            raise ValueError(
                f"count_params needs input_shape (batch first, e.g. (1, 224, 224, 3)) for the "
                f"module {type(tree_or_module).__name__}"
            )
        tree = abstract_init(tree_or_module, input_shape).get("params", {})
    elif input_shape is not None:
        raise TypeError("input_shape only applies to a module, not to a pytree of parameters")
    else:
        tree = tree_or_module
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))


def tree_add(total: Any, tree: Any) -> Any:
    """``total + tree`` leaf by leaf; ``total=None`` returns ``tree`` (the first term).

    The running sum of per-batch metric trees: ``sums = tree_add(sums, metrics)``.
    """
    return tree if total is None else jax.tree.map(jnp.add, total, tree)
