"""Scanned blocks: identical residual blocks run under one :func:`flax.linen.scan`, so a deep
model compiles one block body per group instead of one per block (compile time stops growing
with depth).

Models of the families in :data:`SCAN_FAMILIES` take ``scan_blocks=True`` (and optionally
``scan_remat=True``: each scanned block under ``nn.remat(prevent_cse=False)``). The scanned
blocks of a group then live under one module ``blocks`` whose parameters and BatchNorm
statistics carry a leading axis of length ``count`` (block ``first + k`` of the unscanned tree
is row ``k``)::

    unscanned  stage3/block0/..  stage3/block1/conv1/kernel (3, 3, 256, 256) .. stage3/block22
    scanned    stage3/block0/..  stage3/blocks/conv1/kernel (22, 3, 3, 256, 256)

Which blocks are scanned is the model's ``scan_groups()``: ``(scope, first, count)`` per group
(ResNet: blocks 1.. of every stage, the first block carries the stride and the projection;
ViT: all encoder blocks; ConvNeXt: all blocks of every stage, the downsampling layer is a
separate module). Default off: parameter trees, counts and weight converters are unchanged.

:func:`stack_blocks` / :func:`unstack_blocks` convert variables between the two trees (any
collection: ``params``, ``batch_stats``, optimizer moments shaped like params), so torchvision
or timm weights converted by :mod:`jaxcnn.interop` (which yields the unscanned tree) load into a
scanned model, and a scanned checkpoint exports.

Stochastic depth stays exact: the per-block rate is a scanned input (the schedule of the
unscanned model, block by block). What differs: the dropout/drop-path random draws (the scan
splits the ``dropout`` key per block instead of folding in the block's name), so train-mode
outputs with nonzero drop rates agree in distribution, not sample by sample.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = [
    "SCAN_FAMILIES",
    "STACKED",
    "block_rates",
    "check_family",
    "check_scan_options",
    "is_stacked",
    "run_scanned",
    "scan_groups",
    "stack_blocks",
    "unstack_blocks",
]

STACKED = "blocks"  # the name of the scanned module in each group
SCAN_FAMILIES = ("resnet", "vit", "convnext")
_WHY_NOT = {
    "densenet": "its dense layers concatenate onto their input, so every layer sees a wider "
    "input than the one before: no two layers have the same parameter shapes",
    "swin": "its blocks alternate plain and shifted windows (pairs, not single blocks, repeat)",
}


def check_scan_options(model: str, scan_blocks: bool, scan_remat: bool) -> None:
    """Raise a ``ValueError`` for ``scan_remat`` without ``scan_blocks``."""
    if scan_remat and not scan_blocks:
        raise ValueError(
            f"{model}: scan_remat=True rematerialises the scanned blocks and needs "
            f"scan_blocks=True (got scan_blocks={scan_blocks!r}); without scanning use the "
            "training option remat='blocks'"
        )


def check_family(name: str, family: str) -> None:
    """Raise a ``ValueError`` when ``scan_blocks=True`` is asked of a family without it."""
    if family in SCAN_FAMILIES:
        return
    why = _WHY_NOT.get(family, "it has no run of identical blocks wired for scanning")
    raise ValueError(
        f"{name}: scan_blocks is available for the families {', '.join(SCAN_FAMILIES)}, "
        f"not {family}: {why}"
    )


def run_scanned(
    block: nn.Module,
    x,
    length: int,
    rates: Sequence[float] | None = None,
    *,
    call: Callable[..., Any] | None = None,
    remat: bool = False,
):
    """``x`` through ``length`` copies of ``block`` (an unbound module, named ``"blocks"``) with
    one :func:`flax.linen.scan`; returns the last block's output.

    ``rates``: per-block drop-path rates, passed to ``call`` as its third argument (a traced
    scalar), or None (``call`` then receives None). ``call(module, x, rate)`` runs one block
    (default ``module(x)``). ``remat``: each block under ``nn.remat(prevent_cse=False)``.
    Parameters, BatchNorm statistics and sown intermediates get a leading axis of ``length``;
    the ``params`` and ``dropout`` keys are split per block.
    """
    call = call or (lambda mdl, y, rate: mdl(y))

    def body(mdl, carry, rate):
        return call(mdl, carry, rate), None

    if remat:
        body = nn.remat(body, prevent_cse=False)
    scan = nn.scan(
        body,
        variable_axes={"params": 0, "batch_stats": 0, "intermediates": 0},
        split_rngs={"params": True, "dropout": True},
        length=length,
    )
    xs = None if rates is None else jnp.asarray(rates, jnp.float32)
    y, _ = scan(block, x, xs)
    return y


def block_rates(rates: Sequence[float]) -> tuple[float | None, Sequence[float] | None]:
    """``(static_rate, scanned_rates)``: a rate shared by every block stays a Python float (no
    ``dropout`` key is drawn when it is 0), otherwise the rates go in as a scanned input."""
    rates = tuple(float(r) for r in rates)
    if len(set(rates)) <= 1:
        return (rates[0] if rates else 0.0), None
    return None, rates


# -- converting variables -----------------------------------------------------------------------


def _resolve(model, create_kwargs) -> nn.Module:
    if isinstance(model, str):
        from jaxcnn.models import create_model

        return create_model(model, **create_kwargs)
    if create_kwargs:
        raise TypeError(f"keyword arguments {sorted(create_kwargs)} only apply to a model name")
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a model name or a flax.linen.Module, got {type(model)}")
    return model


def scan_groups(model, **create_kwargs) -> tuple[tuple[str, int, int], ...]:
    """``(scope, first, count)`` of every scanned group of ``model`` (a name built with
    ``create_kwargs``, or a module): blocks ``first .. first + count - 1`` of ``scope``
    (``"stage3"``; ``""`` for the top) are stacked under ``scope/blocks``."""
    m = _resolve(model, create_kwargs)
    groups = getattr(m, "scan_groups", None)
    if groups is None:
        raise ValueError(
            f"{type(m).__name__} has no scanned blocks; scan_blocks is available for the "
            f"families {', '.join(SCAN_FAMILIES)}"
        )
    return tuple(groups())


def _node(tree: Mapping, scope: str) -> Mapping | None:
    for part in filter(None, scope.split("/")):
        if not isinstance(tree, Mapping) or part not in tree:
            return None
        tree = tree[part]
    return tree


def _replace(tree: Mapping, scope: str, new: Mapping) -> dict:
    parts = [p for p in scope.split("/") if p]
    if not parts:
        return dict(new)
    out = dict(tree)
    out[parts[0]] = _replace(tree[parts[0]], "/".join(parts[1:]), new)
    return out


def _collections(variables: Mapping) -> list[str]:
    return [c for c, v in variables.items() if isinstance(v, Mapping)]


def _convert_groups(variables: Mapping, groups, convert) -> dict:
    """``variables`` with the node at each group's scope, in every collection, replaced by
    ``convert(where, first, count, node)`` (``where``: ``"collection/scope"`` for messages;
    None leaves the node as it is). A scope absent from a collection is passed over."""
    out = dict(variables)
    for col in _collections(variables):
        tree = out[col]
        for scope, first, count in groups:
            node = _node(tree, scope)
            new = None if node is None else convert(f"{col}/{scope}", first, count, node)
            if new is not None:
                tree = _replace(tree, scope, new)
        out[col] = tree
    return out


def _stack(where: str, first: int, count: int, node: Mapping) -> dict | None:
    if STACKED in node:
        raise ValueError(f"{where}: already stacked (it has {STACKED!r})")
    names = [f"block{first + k}" for k in range(count)]
    if not any(n in node for n in names):
        return None
    missing = [n for n in names if n not in node]
    if missing:
        raise ValueError(f"{where}: blocks {missing} are missing; cannot stack")
    extra = [k for k in node if k.startswith("block") and k[5:].isdigit()]
    extra = [k for k in extra if int(k[5:]) >= first + count]
    if extra:
        raise ValueError(
            f"{where}: blocks {sorted(extra)} beyond the {first + count} the "
            "model has; the variables belong to a deeper model"
        )
    new = {k: v for k, v in node.items() if k not in names}
    new[STACKED] = jax.tree.map(lambda *a: jnp.stack(a), *[node[n] for n in names])
    return new


def _unstack(where: str, first: int, count: int, node: Mapping) -> dict | None:
    if STACKED not in node:
        return None
    lengths = {a.shape[0] for a in jax.tree.leaves(node[STACKED])}
    if lengths != {count}:
        raise ValueError(
            f"{where}/{STACKED}: stacked along {sorted(lengths)} blocks, the model scans {count}"
        )
    new = {k: v for k, v in node.items() if k != STACKED}
    for k in range(count):
        new[f"block{first + k}"] = jax.tree.map(lambda a, k=k: a[k], node[STACKED])
    return new


def stack_blocks(variables: Mapping, model, **create_kwargs) -> dict:
    """Unscanned variables -> the tree of the same model with ``scan_blocks=True``.

    ``variables``: ``{"params": ..., "batch_stats": ...}`` (every collection is converted; a
    collection without the groups' blocks, e.g. absent statistics, is left as is).
    ``model``: a registered name (built with ``create_kwargs``) or a module, scanned or not
    (only its depths matter). Raises ``ValueError`` naming a missing block.
    """
    return _convert_groups(variables, scan_groups(model, **create_kwargs), _stack)


def unstack_blocks(variables: Mapping, model, **create_kwargs) -> dict:
    """Scanned variables -> the unscanned tree (``block0``, ``block1``, ... again); the inverse
    of :func:`stack_blocks`, same arguments. A group whose stacked axis is not the model's
    block count raises ``ValueError``."""
    return _convert_groups(variables, scan_groups(model, **create_kwargs), _unstack)


def is_stacked(variables: Mapping, model, **create_kwargs) -> bool:
    """Whether ``variables`` hold the scanned tree of ``model`` (a ``blocks`` module in one of
    its groups)."""
    groups = scan_groups(model, **create_kwargs)
    return any(
        (node := _node(variables.get(col, {}), scope)) is not None and STACKED in node
        for col in _collections(variables)
        for scope, _, _ in groups
    )
