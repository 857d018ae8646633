"""Name-based conversion between jaxcnn variables and another library's named tensors.

A :class:`Layout` says what every jaxcnn variable is called in one library (torchvision, timm,
Keras, ...) for one model class: a list of ``(regex, replacement)`` rules over the variable's
``/``-joined path (``"stage3/block4/conv2/kernel"``), the first rule that matches the whole path
wins, and the last component is then renamed by ``leaf_names`` (``kernel``/``scale`` ->
``weight``, ``mean`` -> ``running_mean``...). A replacement is a template (``r"layer\\1.\\2"``)
or a function ``(match, tree) -> str`` that may ask the :class:`Tree` where a module sits in the
call order (torch's ``nn.Sequential`` numbering, timm's global block index).

Loading looks every jaxcnn variable up by that name, so the order of the given tensors never
matters; a tensor is missing, unexpected or of the wrong shape by name, and the error says which
(torch key and jaxcnn path first). Families without a registered layout use :data:`JAXCNN`: the
jaxcnn path with dots and torch's leaf names (``stage1.block0.conv1.weight``).

To support another model class: write its rules and call ``register_layout("ClassName",
Layout("timm", rules))`` (see :mod:`jaxcnn.interop.layouts` for the torchvision and timm ones);
tests/test_interop.py checks every registered layout against the reference key lists in
``tests/data/reference_keys.json.gz`` (regenerate with ``experiments/verify_interop.py --keys``).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import re
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxcnn.inspect import record_calls, resolve
from jaxcnn.models import create_model
from jaxcnn.models.scan import stack_blocks

__all__ = [
    "JAXCNN",
    "VARIABLES",
    "Layout",
    "Plan",
    "Tree",
    "export",
    "layouts_for",
    "load",
    "make_plan",
    "register_layout",
]

LEAF_NAMES = {"kernel": "weight", "scale": "weight", "mean": "running_mean", "var": "running_var"}
# Buffers that carry no learned value: ignored when loading (to_torch writes them back).
BUFFERS = ("num_batches_tracked", "relative_position_index", "attn_mask")
_SHOW = 5  # entries of each kind listed in an error


@dataclasses.dataclass(frozen=True)
class Layout:
    """How one model class's variables are named (and laid out) in one library.

    Attributes:
      source: the library, e.g. ``"torchvision"``, ``"timm"``, ``"hwio"``.
      rules: ``(regex, replacement)`` pairs over the ``/``-joined variable path; the first whose
        regex matches the whole path gives the key (a template, or ``fn(match, tree) -> str``).
      leaf_names: renames of the key's last ``.``/``/`` component (applied when present).
      tensors: ``"torch"`` (conv ``OIHW``, linear ``(out, in)``) or ``"hwio"`` (jaxcnn's and
        Keras' ``HWIO``, ``(in, out)``; depthwise ``(h, w, C, 1)`` is reshaped): how the other
        library stores arrays.
      model_kwargs: ``create_model`` options this library's weights need (``{"bn_eps": 1e-5}``),
        or ``fn(keys) -> dict`` deciding from the given keys (e.g. ``aux_logits``).
      buffers: ``fn(tree) -> {key: array}``, non-learned buffers written by :func:`export`.
      ignore: last key components skipped when loading (buffers that carry no learned value).
      expand: ``(regex, ndim)`` pairs: keys the other library stores with trailing 1-dims that
        jaxcnn drops (a 1x1 conv ``(O, I, 1, 1)`` for a dense kernel, a ``(C, 1, 1)`` scale);
        only :func:`export` without a reference needs them.
    """

    source: str
    rules: tuple
    leaf_names: Mapping[str, str] = dataclasses.field(default_factory=lambda: dict(LEAF_NAMES))
    tensors: str = "torch"
    model_kwargs: Any = dataclasses.field(default_factory=dict)
    buffers: Callable | None = None
    ignore: tuple = BUFFERS
    expand: tuple = ()
    # the compiled ``rules``, set by __post_init__
    _compiled: tuple = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.tensors not in ("torch", "hwio"):
            raise ValueError(f"tensors must be 'torch' or 'hwio', got {self.tensors!r}")
        compiled = tuple((re.compile(p), r) for p, r in self.rules)
        object.__setattr__(self, "_compiled", compiled)

    def key(self, path: str, tree: "Tree") -> str:
        """The key of the variable at ``path`` (``"stage1/block0/conv1/kernel"``)."""
        for pattern, repl in self._compiled:
            m = pattern.fullmatch(path)
            if m is None:
                continue
            key = repl(m, tree) if callable(repl) else m.expand(repl)
            head, sep, last = key.rpartition("/" if "/" in key else ".")
            return head + sep + self.leaf_names.get(last, last)
        raise ValueError(
            f"the {self.source} layout of {tree.name} has no rule for {path!r}: this model "
            f"option is not supported by the {self.source} layout"
        )

    def kwargs_for(self, keys) -> dict:
        mk = self.model_kwargs
        return dict(mk(set(keys)) if callable(mk) else mk)


def _identity(m, tree):
    return m[0].replace("/", ".")


JAXCNN = Layout("jaxcnn", ((r".*", _identity),))
"""The default layout: jaxcnn's path with dots and torch's leaf names
(``stage1.block0.conv1.weight``)."""

VARIABLES = Layout("variables", ((r".*", r"\g<0>"),), leaf_names={}, tensors="hwio")
"""jaxcnn variables themselves, flattened: ``{"stage1/block0/conv1/kernel": array}``."""

_LAYOUTS: dict[str, list[Layout]] = {}


def register_layout(model_class: str, layout: Layout) -> Layout:
    """Register ``layout`` for models whose root module class is named ``model_class``."""
    if any(lay.source == layout.source for lay in _LAYOUTS.get(model_class, [])):
        raise ValueError(f"a {layout.source} layout for {model_class} is registered twice")
    _LAYOUTS.setdefault(model_class, []).append(layout)
    return layout


def layouts_for(model: nn.Module) -> list[Layout]:
    """The layouts registered for ``model``'s class, then :data:`JAXCNN`."""
    from jaxcnn.interop import keras, layouts  # noqa: F401  (register the layouts)

    return [*_LAYOUTS.get(type(model).__name__, []), JAXCNN]


def layout_named(model: nn.Module, source: str) -> Layout:
    found = [lay for lay in layouts_for(model) if lay.source == source]
    if not found:
        known = ", ".join(lay.source for lay in layouts_for(model))
        raise ValueError(
            f"no {source!r} layout for {type(model).__name__} (known: {known}); "
            f"source='auto' picks the one that names the given tensors"
        )
    return found[0]


# -- the jaxcnn side --------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class Leaf:
    """A jaxcnn variable: collection, path, shape, dtype and how its tensor is laid out.

    ``flat`` = (H, W, C) when a dense kernel's input is a flattened map (torch flattens CHW);
    ``transposed``: kernel of a transposed conv (torch ``IOHW``); ``input_conv``: the kernel of
    the first conv, applied to the image (``in_channels`` adaptation); ``key``: its name in the
    layout."""

    col: str
    path: tuple
    shape: tuple
    dtype: Any
    transposed: bool = False
    flat: tuple | None = None
    input_conv: bool = False
    key: str = ""

    @property
    def kind(self) -> str:
        return self.path[-1]

    @property
    def name(self) -> str:
        return f"{self.col}/{'/'.join(self.path)}"

    @property
    def module(self) -> tuple:
        return self.path[:-1]


class Tree:
    """Where modules sit in the forward pass (what layout rules may ask).

    Only modules holding variables (or with such descendants) count; order is the order of
    first calls (parents before children). Paths are ``/``-joined strings.
    """

    def __init__(self, model: nn.Module, name: str, leaves: Sequence[Leaf]):
        self.model, self.name = model, name
        self.modules: list[str] = []  # every module with variables below it, in call order
        seen = set()
        for j in leaves:
            for k in range(1, len(j.module) + 1):
                p = "/".join(j.module[:k])
                if p not in seen:
                    seen.add(p)
                    self.modules.append(p)
        self.owners = {"/".join(j.module) for j in leaves}
        self.shapes = {"/".join(j.path): j.shape for j in leaves}

    def has(self, path: str) -> bool:
        """``path`` is a module holding variables (or with such descendants)."""
        return path in self.owners or any(m.startswith(path + "/") for m in self.modules)

    def children(self, path: str = "") -> list[str]:
        """Names of ``path``'s child modules in call order."""
        depth = path.count("/") + 1 if path else 0
        pre = path + "/" if path else ""
        return [m[len(pre) :] for m in self.modules if m.startswith(pre) and m.count("/") == depth]

    def index(self, path: str) -> int:
        """Position of the module ``path`` among its parent's children."""
        parent, _, last = path.rpartition("/")
        return self.children(parent).index(last)

    def matching(self, among: str) -> list[str]:
        """Modules whose path fully matches the regex ``among``, in call order."""
        r = re.compile(among)
        return [m for m in self.modules if r.fullmatch(m)]

    def rank(self, path: str, among: str) -> int:
        """Position of ``path`` among the modules matching ``among`` (e.g. a global block
        index: ``rank("stage3/block1", r"stage\\d+/block\\d+")``)."""
        return self.matching(among).index(path)

    def count(self, among: str) -> int:
        return len(self.matching(among))


def _flat_hint(calls, i, fan_in, owners):
    """(H, W, C) of the NHWC map flattened into the dense layer ``calls[i]``, if any."""
    path = calls[i].path
    for c in reversed(calls[:i]):
        out = c.out_spec
        if path[: len(c.path)] == c.path or not hasattr(out, "shape"):
            continue  # an ancestor, or not one array
        if len(out.shape) == 2 and out.shape[-1] == fan_in and c.path not in owners:
            continue  # dropout and other parameter-free layers on the flat vector
        if len(out.shape) != 4:
            return None
        _, h, w, ch = out.shape
        if h * w * ch != fan_in:
            s = math.isqrt(fan_in // ch)
            if fan_in % ch or s * s * ch != fan_in:
                return None
            h = w = s
        return None if h * w == 1 else (h, w, ch)
    return None


def jax_leaves(model: nn.Module, input_shape) -> list[Leaf]:
    """jaxcnn's variables (``params`` and ``batch_stats``) in call order, from an abstract
    trace (nothing is allocated)."""
    calls, abstract = record_calls(model, input_shape)
    calls = list(calls)
    index = {c.path: i for i, c in enumerate(calls)}
    leaves = [
        Leaf(col, path, tuple(a.shape), a.dtype)
        for col in ("params", "batch_stats")
        for path, a in traverse_util.flatten_dict(dict(abstract.get(col, {}))).items()
    ]
    owners = {j.module for j in leaves}

    def call_index(mp):
        while mp and mp not in index:
            mp = mp[:-1]
        return index.get(mp, -1)

    first_conv = None
    for j in leaves:
        i = call_index(j.module)
        c = calls[i] if i >= 0 else None
        if c is None or c.path != j.module or j.kind != "kernel":
            continue
        j.transposed = isinstance(c.module, nn.ConvTranspose)
        x: Any = c.args[0] if c.args else None  # an array, a tracer or None
        if len(j.shape) == 2 and hasattr(x, "shape") and len(x.shape) == 2:
            j.flat = _flat_hint(calls, i, j.shape[0], owners)
        if (
            len(j.shape) == 4
            and hasattr(x, "shape")
            and tuple(x.shape) == tuple(input_shape)
            and (first_conv is None or i < first_conv[0])
        ):
            first_conv = (i, j)
    if first_conv is not None:
        first_conv[1].input_conv = True
    rank = {"kernel": 0, "scale": 0, "bias": 1, "mean": 2, "var": 3}
    leaves.sort(key=lambda j: (call_index(j.module), rank.get(j.kind, 0)))
    return leaves


# -- array layouts ----------------------------------------------------------------------------


def to_numpy(v) -> np.ndarray:
    """A numpy array from a numpy/JAX array, a torch tensor (bfloat16 -> float32) or anything
    with ``.numpy()`` / ``__array__``."""
    if type(v).__module__.startswith("torch"):
        v = v.detach().cpu()
        if str(v.dtype) == "torch.bfloat16":
            v = v.float()
        return v.numpy()
    return np.asarray(v.numpy() if hasattr(v, "numpy") and not hasattr(v, "__array__") else v)


def _canon(shape) -> tuple:
    """Shape without leading/trailing 1s: a 1x1 conv kernel == a dense kernel, (C,1,1) == (C,)."""
    s = list(shape)
    while s and s[0] == 1:
        s.pop(0)
    while s and s[-1] == 1:
        s.pop()
    return tuple(s)


def _as_jax_shape(shape, j: Leaf, tensors: str) -> tuple:
    """The shape a tensor of ``shape`` has in jaxcnn's layout (before the final reshape)."""
    s = tuple(shape)
    if tensors == "hwio" and j.kind == "kernel" and len(s) == 4 == len(j.shape):
        if s[3] == 1 and j.shape[2] == 1 and s[2] == j.shape[3]:  # depthwise (h, w, C, 1)
            return (s[0], s[1], 1, s[2])
    if tensors == "hwio" or j.kind != "kernel" or len(s) < 2:
        return s
    if len(s) == 4:
        return (s[2], s[3], s[0], s[1]) if j.transposed else (s[2], s[3], s[1], s[0])
    return s[::-1]


def _fits(shape, j: Leaf, tensors: str) -> bool:
    return _canon(_as_jax_shape(shape, j, tensors)) == _canon(j.shape)


def _to_jax(v: np.ndarray, j: Leaf, tensors: str) -> np.ndarray:
    if tensors == "torch" and j.kind == "kernel":
        if v.ndim == 4:
            v = (
                v[:, :, ::-1, ::-1].transpose(2, 3, 0, 1)
                if j.transposed
                else v.transpose(2, 3, 1, 0)
            )
        elif v.ndim == 2 and j.flat and v.shape[1] == math.prod(j.flat):
            h, w, c = j.flat
            v = v.reshape(-1, c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, -1)
        elif v.ndim >= 2:
            v = v.transpose(tuple(range(v.ndim))[::-1])
    return np.ascontiguousarray(v).reshape(j.shape)


def _from_jax(a: np.ndarray, j: Leaf, tensors: str, shape) -> np.ndarray:
    a = np.asarray(a)
    if tensors == "torch" and j.kind == "kernel" and len(shape) >= 2:
        a = a.reshape(_as_jax_shape(shape, j, tensors))
        if a.ndim == 4:
            a = (
                a.transpose(2, 3, 0, 1)[:, :, ::-1, ::-1]
                if j.transposed
                else a.transpose(3, 2, 0, 1)
            )
        elif a.ndim == 2 and j.flat and a.shape[0] == math.prod(j.flat):
            a = a.reshape(*j.flat, -1).transpose(3, 2, 0, 1).reshape(a.shape[1], -1)
        else:
            a = a.transpose(tuple(range(a.ndim))[::-1])
    return np.ascontiguousarray(a).reshape(shape)


def adapt_input_conv(kernel: np.ndarray, in_channels: int) -> np.ndarray:
    """timm's ``adapt_input_conv`` on an ``HWIO`` kernel: 1 channel sums over the RGB filters
    (over groups of 3 when the kernel has a multiple of 3 inputs), more than 3 repeat them
    and rescale by ``3 / in_channels``."""
    h, w, i, o = kernel.shape
    if in_channels == i:
        return kernel
    dtype = kernel.dtype
    k = kernel.astype(np.float32)
    if in_channels == 1:
        if i > 3:
            if i % 3:
                raise ValueError(f"cannot adapt a {i}-channel input conv to 1 channel")
            k = k.reshape(h, w, i // 3, 3, o).sum(axis=3)
        else:
            k = k.sum(axis=2, keepdims=True)
    elif i != 3:
        raise ValueError(f"cannot adapt a {i}-channel input conv to {in_channels} channels")
    else:
        k = np.tile(k, (1, 1, math.ceil(in_channels / 3), 1))[:, :, :in_channels]
        k *= 3 / in_channels
    return k.astype(dtype)


# -- plans: which key fills which leaf ---------------------------------------------------------


@dataclasses.dataclass
class Plan:
    """A model's leaves with their keys under one layout."""

    model: nn.Module
    name: str
    input_shape: tuple
    layout: Layout
    leaves: list[Leaf]
    tree: Tree
    spare: frozenset = frozenset()  # keys the model may leave unused (features_only)

    @property
    def keys(self) -> dict[str, Leaf]:
        return {j.key: j for j in self.leaves}


def make_plan(model: nn.Module, name: str, input_shape, layout: Layout, leaves=None) -> Plan:
    """The model's leaves keyed by ``layout`` (``leaves``: from :func:`jax_leaves`, reused)."""
    leaves = [dataclasses.replace(j) for j in (leaves or jax_leaves(model, input_shape))]
    tree = Tree(model, name, leaves)
    for j in leaves:
        j.key = layout.key("/".join(j.path), tree)
    seen: dict[str, Leaf] = {}
    for j in leaves:
        if j.key in seen:
            raise ValueError(
                f"the {layout.source} layout of {name} names two variables {j.key!r}: "
                f"{seen[j.key].name} and {j.name}"
            )
        seen[j.key] = j
    spare: frozenset[str] = frozenset()
    if getattr(model, "features_only", False):
        full = make_plan(model.clone(features_only=False), name, input_shape, layout)
        spare = frozenset(full.keys) - frozenset(seen)
    return Plan(model, name, tuple(input_shape), layout, leaves, tree, spare)


def _is_head(j: Leaf) -> bool:
    return bool(j.module) and j.module[-1] == "head"


def _other_classes(shape, j: Leaf, tensors) -> int | None:
    """The class count of ``shape`` if it fits the head leaf ``j`` but for the last axis."""
    ts = _canon(_as_jax_shape(shape, j, tensors))
    js = _canon(j.shape)
    if len(ts) == len(js) and ts[:-1] == js[:-1] and ts != js:
        return ts[-1]
    return None


def _fmt_shape(s) -> str:
    return "(" + ", ".join(str(int(d)) for d in s) + (",)" if len(s) == 1 else ")")


class ConversionError(ValueError):
    """The given tensors do not fit the model (a ``ValueError``)."""


def _check(plan: Plan, given: Mapping[str, tuple], strict: bool, adapt_input: bool) -> set:
    """Raise a :class:`ConversionError` naming the misfits; return the head leaves that keep a
    fresh initialisation (only with ``strict=False``)."""
    lay, tensors = plan.layout, plan.layout.tensors
    expected = plan.keys
    missing, wrong, fresh = [], [], set()
    for j in plan.leaves:
        if j.key not in given:
            missing.append(j)
        elif not _fits(given[j.key], j, tensors):
            s = _as_jax_shape(given[j.key], j, tensors)
            if not (adapt_input and j.input_conv and s[:2] + s[3:] == j.shape[:2] + j.shape[3:]):
                wrong.append(j)
    extra = [
        k
        for k in given
        if k not in expected and k.rpartition(".")[2] not in lay.ignore and k not in plan.spare
    ]
    heads: dict[tuple, list[Leaf]] = {}
    for j in plan.leaves:
        if _is_head(j):
            heads.setdefault(j.module, []).append(j)
    notes = []
    for mod, js in heads.items():
        gone = [j for j in js if j in missing]
        other = {_other_classes(given[j.key], j, tensors) for j in js if j in wrong}
        other_ok = len(other) == 1 and None not in other and sum(j in wrong for j in js) == len(js)
        if not strict and (len(gone) == len(js) or other_ok):
            fresh.update(js)
            continue
        if other_ok:
            (k,) = other
            notes.append(
                f"The classifier {'/'.join(mod)} has {js[0].shape[-1]} classes, the tensors "
                f"{k}: create the model with num_classes={k} to load it all, or pass "
                f"strict=False (or create_model(..., pretrained=..., num_classes=N)) for a "
                f"freshly initialised head."
            )
        elif len(gone) == len(js) and not (wrong or extra or len(missing) > len(js)):
            notes.append(
                "The tensors have no classifier: pass strict=False for a freshly initialised "
                "head, or create the model with features_only=True."
            )
        elif gone and len(gone) < len(js):
            notes.append(
                f"Only part of the classifier {'/'.join(mod)} is there; strict=False lets the "
                f"whole head be new, not part of it."
            )
    missing = [j for j in missing if j not in fresh]
    wrong = [j for j in wrong if j not in fresh]
    if not (missing or wrong or extra):
        return fresh
    raise ConversionError(_message(plan, given, missing, wrong, extra, notes, strict))


def _message(plan, given, missing, wrong, extra, notes, strict) -> str:
    """Culprits first: one line per misfit (torch key, then jaxcnn path), then a summary."""
    tensors = plan.layout.tensors
    near = {}
    for j in missing:
        m = difflib.get_close_matches(j.key, extra, n=1, cutoff=0.8)
        if m:
            near[j.key] = m[0]

    def wrong_line(j):
        s = given[j.key]
        as_jax = _fmt_shape(_as_jax_shape(s, j, tensors))
        ours = f"{j.name} {_fmt_shape(j.shape)}"
        return f"wrong shape: {j.key!r} {_fmt_shape(s)} (as {as_jax}) for {ours}"

    def missing_line(j):
        hint = f" (given: {near[j.key]!r}?)" if j.key in near else ""
        return f"missing: {j.key!r} for {j.name} {_fmt_shape(j.shape)}{hint}"

    lines = []
    for items, fmt, what in (
        (wrong, wrong_line, "of the wrong shape"),
        (missing, missing_line, "missing"),
        (extra, lambda k: f"unexpected: {k!r} {_fmt_shape(given[k])}", "unexpected"),
    ):
        lines += [fmt(x) for x in items[:_SHOW]]
        if len(items) > _SHOW:
            lines.append(f"... and {len(items) - _SHOW} more {what}")
    counts = ", ".join(
        f"{len(x)} {w}"
        for x, w in ((missing, "missing"), (extra, "unexpected"), (wrong, "of the wrong shape"))
        if x
    )
    summary = (
        f"({plan.layout.source} layout: {counts}; {len(given)} tensors given, "
        f"{len(plan.leaves)} variables)"
    )
    if not strict:
        summary += " strict=False lets only the whole classifier differ or be absent."
    return "\n".join([f"{plan.name}: {lines[0]}", *[f"  {x}" for x in lines[1:]], summary, *notes])


# -- loading and exporting ---------------------------------------------------------------------


def _shapes(tensors: Mapping) -> dict[str, tuple]:
    if not isinstance(tensors, Mapping):
        raise TypeError(f"expected a mapping str -> array, got {type(tensors).__name__}")
    return {
        str(k): tuple(int(d) for d in (v.shape if hasattr(v, "shape") else v))
        for k, v in tensors.items()
    }


def choose_layout(
    model: nn.Module, name: str, input_shape, given_keys, source: str | Layout
) -> Plan:
    """The plan of the layout named ``source``, or for ``"auto"`` of the layout whose keys
    overlap the given ones most (ties: the first registered)."""
    if isinstance(source, Layout):
        return make_plan(model, name, input_shape, source)
    if source != "auto":
        return make_plan(model, name, input_shape, layout_named(model, source))
    given = set(given_keys)
    best, leaves = None, jax_leaves(model, input_shape)
    for lay in layouts_for(model):
        plan = make_plan(model, name, input_shape, lay, leaves)
        score = len(given & (set(plan.keys) | plan.spare))
        if best is None or score > best[0]:
            best = (score, plan)
    assert best is not None  # layouts_for always holds JAXCNN
    return best[1]


def prepare(model_or_name, given_keys, input_shape, source, create_kwargs) -> Plan:
    """Build (for a name) or check (for a module) the model the tensors need, and its plan."""
    model, input_shape, name = resolve(model_or_name, input_shape, **create_kwargs)
    name = name or type(model).__name__
    plan = choose_layout(model, name, input_shape, given_keys, source)
    need = plan.layout.kwargs_for(given_keys)
    for k in need:
        if not hasattr(model, k):
            raise ValueError(
                f"{name}: {plan.layout.source}'s weights need the option {k}={need[k]!r}, "
                f"which {type(model).__name__} does not have"
            )
    if isinstance(model_or_name, str):
        need = {k: v for k, v in need.items() if k not in create_kwargs}
        if any(getattr(model, k, v) != v for k, v in need.items()):
            model, input_shape, _ = resolve(model_or_name, input_shape, **{**create_kwargs, **need})
            plan = make_plan(model, name, input_shape, plan.layout)
    else:
        bad = {k: v for k, v in need.items() if getattr(model, k, v) != v}
        if bad:
            opts = ", ".join(f"{k}={v!r}" for k, v in bad.items())
            raise ValueError(
                f"{name}: {plan.layout.source}'s weights need the model built with {opts} "
                f"(it has {', '.join(f'{k}={getattr(model, k)!r}' for k in bad)})"
            )
    return plan


def load(
    model_or_name,
    tensors: Mapping,
    input_shape=None,
    *,
    strict: bool = True,
    source: str | Layout = "auto",
    adapt_input: bool = False,
    seed: int = 0,
    **create_kwargs,
) -> dict:
    """jaxcnn variables ``{"params", "batch_stats"}`` from named tensors (see the module doc).

    ``strict=False`` lets the classifier (every ``head`` module, e.g. ``head`` and ``aux/head``)
    have another class count or be absent, as a whole; it is then freshly initialised (``seed``).
    ``adapt_input``: the first conv's input channels may differ from the tensor's and are
    adapted as timm's ``adapt_input_conv`` does. Raises :class:`ConversionError` (a
    ``ValueError``) on any misfit, before anything is compiled.

    A model with ``scan_blocks=True`` (:mod:`jaxcnn.models.scan`) is loaded through its
    unscanned twin (the names every layout knows) and its blocks are then stacked.
    """
    twin, twin_kwargs, scanned = unscanned(model_or_name, create_kwargs)
    variables = load_plan(
        prepare(twin, _shapes(tensors).keys(), input_shape, source, twin_kwargs),
        tensors,
        strict=strict,
        adapt_input=adapt_input,
        seed=seed,
    )
    return variables if scanned is None else stack_blocks(variables, scanned)


def unscanned(model_or_name, create_kwargs: Mapping) -> tuple[Any, dict, Any]:
    """``(model_or_name, create_kwargs, scanned)`` with ``scan_blocks``/``scan_remat`` off, and
    the scanned module (None when the model does not scan): converters work on the unscanned
    tree and stack it afterwards."""
    kwargs = dict(create_kwargs)
    if isinstance(model_or_name, str):
        if not kwargs.get("scan_blocks"):
            return model_or_name, kwargs, None
        scanned = create_model(model_or_name, **kwargs)
        kwargs["scan_blocks"] = kwargs["scan_remat"] = False
        return model_or_name, kwargs, scanned
    if getattr(model_or_name, "scan_blocks", False):
        twin = model_or_name.clone(parent=None, scan_blocks=False, scan_remat=False)
        return twin, kwargs, model_or_name
    return model_or_name, kwargs, None


def load_plan(plan: Plan, tensors: Mapping, *, strict=True, adapt_input=False, seed=0) -> dict:
    given = _shapes(tensors)
    fresh = _check(plan, given, strict, adapt_input)
    init = _fresh_values(plan, fresh, seed) if fresh else {}
    flat: dict[str, dict] = {"params": {}, "batch_stats": {}}
    for j in plan.leaves:
        if j in fresh:
            v = init[j.name]
        else:
            v, t = to_numpy(tensors[j.key]), plan.layout.tensors
            if adapt_input and j.input_conv and not _fits(v.shape, j, t):
                j3 = dataclasses.replace(j, shape=_as_jax_shape(v.shape, j, t))
                v = adapt_input_conv(_to_jax(v, j3, t), j.shape[2])
            else:
                v = _to_jax(v, j, t)
        flat[j.col][j.path] = jnp.asarray(v, j.dtype)
    return {c: traverse_util.unflatten_dict(f) for c, f in flat.items() if f}


def _fresh_values(plan: Plan, leaves, seed: int) -> dict:
    """Freshly initialised values of ``leaves`` (one jitted init; the rest is dead code)."""
    names = [j for j in plan.leaves if j in leaves]

    def init():
        x = jnp.zeros(plan.input_shape, jnp.float32)
        k = jax.random.key(seed)
        v = plan.model.init({"params": k, "dropout": jax.random.fold_in(k, 1)}, x, train=False)
        return [functools.reduce(lambda d, p: d[p], j.path, v[j.col]) for j in names]

    return {j.name: np.asarray(a) for j, a in zip(names, jax.jit(init)())}


def export(plan: Plan, variables: Mapping, reference: Mapping | None = None) -> dict:
    """Numpy arrays in the other library's layout, keyed by the plan's layout.

    Order: ``reference``'s when given (its buffers, e.g. ``num_batches_tracked``, are copied
    from it where it holds arrays), else jaxcnn's call order, with torch buffers
    (``num_batches_tracked`` zeros after each BatchNorm, the layout's own) added.
    """
    tensors = plan.layout.tensors
    ref_shapes = _shapes(reference) if reference is not None else {}
    if reference is not None:
        _check(plan, ref_shapes, True, False)
    out: dict[str, np.ndarray] = {}
    for j in plan.leaves:
        a = functools.reduce(lambda d, p: d[p], j.path, variables[j.col])
        shape = ref_shapes.get(j.key) or _torch_shape(j, plan.layout)
        out[j.key] = _from_jax(np.asarray(a), j, tensors, shape)
    if reference is not None:
        ordered = {}
        for k, v in reference.items():
            if k in out:
                ordered[k] = out[k]
            elif hasattr(v, "shape") and hasattr(v, "dtype"):
                ordered[k] = to_numpy(v)
        return ordered
    if tensors != "torch":
        return out
    extra = plan.layout.buffers(plan.tree) if plan.layout.buffers else {}
    ordered = {}
    for k, v in out.items():
        ordered[k] = v
        if k.endswith(".running_var"):
            ordered[k[: -len("running_var")] + "num_batches_tracked"] = np.zeros((), np.int64)
    ordered.update(extra)
    return ordered


def _torch_shape(j: Leaf, layout: Layout) -> tuple:
    """The tensor shape of ``j`` in the other library when there is no reference."""
    s = tuple(j.shape)
    if layout.tensors == "hwio" and len(s) == 4 and j.key.endswith("depthwise_kernel"):
        return (s[0], s[1], s[3], 1)  # Keras' depthwise (h, w, C, 1); jaxcnn's (h, w, 1, C)
    if layout.tensors == "torch" and j.kind == "kernel" and len(s) >= 2:
        if len(s) == 4:
            s = (s[2], s[3], s[0], s[1]) if j.transposed else (s[3], s[2], s[0], s[1])
        else:
            s = s[::-1]
    for pattern, ndim in layout.expand:
        if re.fullmatch(pattern, j.key):
            s = _canon(s) if len(_canon(s)) <= ndim else s
            return s + (1,) * (ndim - len(s))
    return s
