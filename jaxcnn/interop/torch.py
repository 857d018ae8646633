"""PyTorch ``state_dict`` (torchvision names) <-> jaxcnn variables, without importing torch.

    sd = torchvision.models.resnet50(weights="DEFAULT").state_dict()  # or np.load("r50.npz")
    variables = from_torch_state_dict("resnet50", sd)   # {"params": ..., "batch_stats": ...}
    logits = models.create_model("resnet50").apply(variables, x)     # x: NHWC

There is no per-family name table. jaxcnn leaves are ordered by the order in which their modules
are first called (parents first); torch tensors keep the ``state_dict`` order (keep it: a
``dict`` from ``state_dict()``, ``torch.load`` or ``np.load`` does; a file whose keys were
sorted by name may not). Each jaxcnn module takes the
first unused torch module (key prefix) holding exactly the same tensors (kind and converted
shape), so a block stays one block even where the two orders differ (GoogLeNet's ``aux1`` runs
mid-network but is registered last); where no module matches it descends into its children, and
single leaves take the first unused tensor of their kind and shape. Conversions: conv ``OIHW ->
HWIO`` (transposed conv ``IOHW`` -> flipped ``HWIO``), linear ``(out, in) -> (in, out)``, 1x1 conv
<-> dense, ``weight``/1-D -> ``scale``, ``running_*`` -> ``mean``/``var``, ``class_token``,
``pos_embedding``, ``in_proj_*``, ``layer_scale``/``gamma``; ``num_batches_tracked`` and
``relative_position_index`` are skipped. A dense layer fed by a flattened NHWC map (VGG, AlexNet,
GoogLeNet's aux ``fc1``) gets its input rows permuted from torch's (C, H, W) order; the
map's shape is taken from the last module output before it (H = W assumed when they differ).

Every tensor must be used exactly once and every leaf filled, else a ``ValueError`` (before any
compilation) names shape mismatches (torch key and shape, jaxcnn path and shape), leaves without
a tensor and tensors left over (located by aligning the two sequences of (kind, shape)), and
says when the number of classes differs.
``strict=False`` lets the classifier differ: leaves under a module named ``head`` (also an aux
classifier's ``aux1/head``) that find no tensor of their shape keep their fresh initialisation,
and the torch tensors left over for them (same kind, another class count) or after the last
tensor used (a classifier the model lacks, e.g. ``features_only=True``) are ignored. Anything
else still raises. Only the ``params`` and ``batch_stats`` collections are converted.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxcnn.inspect import record_calls, resolve

__all__ = ["from_torch_state_dict", "to_torch_state_dict", "torchvision_transform_input"]

SKIPPED = ("num_batches_tracked", "relative_position_index")
_KIND = {
    "in_proj_weight": "kernel",
    "in_proj_bias": "bias",
    "running_mean": "mean",
    "running_var": "var",
    "class_token": "cls_token",
    "pos_embedding": "pos_embed",
    "gamma": "layer_scale",
}
_RANK = {"bias": 1, "mean": 2, "var": 3}
_SHOW = 6  # entries of each kind listed in an error


@dataclasses.dataclass(eq=False)
class _T:
    """A torch tensor: key, module prefix, kind (jaxcnn leaf name), torch shape, value."""

    index: int
    key: str
    prefix: str
    kind: str
    shape: tuple
    value: Any = None
    used: bool = False


@dataclasses.dataclass(eq=False)
class _J:
    """A jaxcnn leaf; ``flat`` = (H, W, C) when a dense kernel's input is a flattened map."""

    col: str
    path: tuple
    shape: tuple
    dtype: Any
    transposed: bool = False
    flat: tuple | None = None
    match: _T | None = None

    @property
    def kind(self):
        return self.path[-1]

    @property
    def name(self):
        return f"{self.col}/{'/'.join(self.path)}"


def _numpy(v) -> np.ndarray:
    if type(v).__module__.startswith("torch"):
        v = v.detach().cpu()
        if str(v.dtype) == "torch.bfloat16":
            v = v.float()
        return v.numpy()
    return np.asarray(v.numpy() if hasattr(v, "numpy") and not hasattr(v, "__array__") else v)


def _jax_shape(shape, kind, transposed=False):
    """The shape a torch tensor has after conversion to jaxcnn's layout."""
    s = tuple(shape)
    if kind != "kernel" or len(s) < 2:
        return s
    if len(s) == 4:
        return (s[2], s[3], s[0], s[1]) if transposed else (s[2], s[3], s[1], s[0])
    return s[::-1]


def _canon(shape):
    """Shape without leading/trailing 1s: a 1x1 conv kernel == a dense kernel, (C,1,1) == (C,)."""
    s = list(shape)
    while s and s[0] == 1:
        s.pop(0)
    while s and s[-1] == 1:
        s.pop()
    return tuple(s)


def _fits(t: _T, j: _J) -> bool:
    return t.kind == j.kind and _canon(_jax_shape(t.shape, t.kind, j.transposed)) == _canon(j.shape)


def _to_jax(v: np.ndarray, kind, j: _J) -> np.ndarray:
    if kind == "kernel" and v.ndim == 4:
        v = v[:, :, ::-1, ::-1].transpose(2, 3, 0, 1) if j.transposed else v.transpose(2, 3, 1, 0)
    elif kind == "kernel" and v.ndim == 2 and j.flat and v.shape[1] == math.prod(j.flat):
        h, w, c = j.flat
        v = v.reshape(-1, c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, -1)
    elif kind == "kernel" and v.ndim >= 2:
        v = v.transpose(tuple(range(v.ndim))[::-1])
    return np.ascontiguousarray(v).reshape(j.shape)


def _to_torch(a: np.ndarray, kind, j: _J, shape) -> np.ndarray:
    a = np.asarray(a)
    if kind == "kernel" and len(shape) >= 2:
        a = a.reshape(_jax_shape(shape, kind, j.transposed))
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


def _torch_tensors(state_dict: Mapping, with_values: bool) -> tuple[list[_T], dict]:
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            f"state_dict must be a mapping str -> array, got {type(state_dict).__name__}"
        )
    out, skipped = [], {}
    for key, v in state_dict.items():
        prefix, _, leaf = str(key).rpartition(".")
        if leaf in SKIPPED:
            skipped[key] = v
            continue
        if with_values:
            v = _numpy(v)
        shape = tuple(int(d) for d in (v.shape if hasattr(v, "shape") else v))
        kind = _KIND.get(leaf, leaf)
        if kind == "weight":
            kind = "kernel" if len(shape) >= 2 else "scale"
        out.append(_T(len(out), str(key), prefix, kind, shape, v if with_values else None))
    return out, skipped


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


def _jax_leaves(model, input_shape) -> tuple[list[_J], dict]:
    """jaxcnn leaves in call order and the module tree ``{path: (leaves, children)}``."""
    calls, abstract = record_calls(model, input_shape)
    calls = list(calls)
    index = {c.path: i for i, c in enumerate(calls)}
    leaves = [
        _J(col, path, tuple(a.shape), a.dtype)
        for col in ("params", "batch_stats")
        for path, a in traverse_util.flatten_dict(dict(abstract.get(col, {}))).items()
    ]
    owners = {j.path[:k] for j in leaves for k in range(len(j.path))}

    def call_index(mp):
        while mp and mp not in index:
            mp = mp[:-1]
        return index.get(mp, -1)

    for j in leaves:
        i = call_index(j.path[:-1])
        c = calls[i] if i >= 0 else None
        if c is not None and c.path == j.path[:-1] and j.kind == "kernel":
            j.transposed = isinstance(c.module, nn.ConvTranspose)
            x = c.args[0] if c.args else None
            if len(j.shape) == 2 and hasattr(x, "shape") and len(x.shape) == 2:
                j.flat = _flat_hint(calls, i, j.shape[0], owners)
    leaves.sort(key=lambda j: (call_index(j.path[:-1]), _RANK.get(j.kind, 0)))
    tree = {}
    for j in leaves:
        mp = j.path[:-1]
        tree.setdefault(mp, ([], []))[0].append(j)
        for k in range(len(mp), 0, -1):
            kids = tree.setdefault(mp[: k - 1], ([], []))[1]
            if mp[:k] not in kids:
                kids.append(mp[:k])
    return leaves, tree


def _signature(items):
    return tuple(sorted(items))


def _match(leaves, tree, tensors) -> None:
    """Set ``j.match`` for every jaxcnn leaf that finds a torch tensor (see the docstring)."""
    members: dict[str, list[_T]] = {}
    for t in tensors:
        parts = t.prefix.split(".") if t.prefix else []
        for k in range(len(parts) + 1):
            members.setdefault(".".join(parts[:k]), []).append(t)
    by_sig: dict[tuple, list[str]] = {}
    for p, ts in members.items():
        by_sig.setdefault(
            _signature((t.kind, _canon(_jax_shape(t.shape, t.kind))) for t in ts), []
        ).append(p)

    def subtree(mp):
        own, kids = tree.get(mp, ([], []))
        return own + [j for k in kids for j in subtree(k)]

    def assign(mp, scope):
        own, kids = tree.get(mp, ([], []))
        for j in own:
            j.match = next(
                (t for t in tensors if t.index in scope and not t.used and _fits(t, j)), None
            )
            if j.match is not None:
                j.match.used = True
        for k in kids:
            sig = _signature((j.kind, _canon(j.shape)) for j in subtree(k))
            for p in by_sig.get(sig, ()):
                if all(t.index in scope and not t.used for t in members[p]):
                    assign(k, {t.index for t in members[p]})
                    break
            else:
                assign(k, scope)

    assign((), {t.index for t in tensors})


def _other_classes(t: _T, j: _J) -> bool:
    """``t`` would fill the head leaf ``j`` but for the number of classes (the last axis)."""
    ts = _jax_shape(t.shape, t.kind)
    return (
        "head" in j.path
        and t.kind == j.kind
        and len(ts) == len(j.shape)
        and ts[:-1] == j.shape[:-1]
        and ts != j.shape
    )


def _diagnose(name, leaves, tensors, strict) -> str:
    """Error text: an alignment of the two sequences (kind, shape) pinpoints the differences."""
    a = [(j.kind, _canon(j.shape)) for j in leaves]
    b = [(t.kind, _canon(_jax_shape(t.shape, t.kind))) for t in tensors]
    shape_err, missing, extra = [], [], []
    for op, i1, i2, k1, k2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        js, ts = leaves[i1:i2], tensors[k1:k2]
        if op == "replace":
            n = min(len(js), len(ts))
            for j, t in zip(js, ts):
                if j.kind == t.kind:
                    shape_err.append((j, t))
                else:
                    missing.append(j), extra.append(t)
            missing += js[n:]
            extra += ts[n:]
        elif op == "delete":
            missing += js
        elif op == "insert":
            extra += ts
    if not (shape_err or missing or extra):  # same sequence, but the orders could not agree
        missing = [j for j in leaves if j.match is None]
        extra = [t for t in tensors if not t.used]
    lines = [
        f"{name}: the state dict does not fit the model ({len(tensors)} torch tensors, "
        f"{len(leaves)} jaxcnn variables; {', '.join(SKIPPED)} skipped)."
    ]
    for j, t in shape_err:
        ts = _jax_shape(t.shape, t.kind)
        if _other_classes(t, j):
            lines.append(
                f"The classifier differs: {t.key!r} {t.shape} has {ts[-1]} classes, "
                f"{j.name} {j.shape} has {j.shape[-1]}. Create the model with "
                f"num_classes={ts[-1]} to load it all, or pass strict=False to load everything "
                f"but the head, which keeps its fresh initialisation (then train it; "
                f"jaxcnn.transfer.replace_head does the same with jaxcnn variables)."
            )
            break
    if not strict:
        lines.append("(strict=False only lets leaves under a `head` module go without a tensor.)")
    for what, items, fmt in (
        (
            "shape mismatch:",
            shape_err,
            lambda jt: (
                f"torch {jt[1].key!r} {jt[1].shape} (as "
                f"{_jax_shape(jt[1].shape, jt[1].kind)}) -> {jt[0].name} expects {jt[0].shape}"
            ),
        ),
        ("no torch tensor for", missing, lambda j: f"{j.name} {j.shape}"),
        ("torch tensor left over:", extra, lambda t: f"{t.key!r} {t.shape}"),
    ):
        if items:
            shown = "; ".join(fmt(x) for x in items[:_SHOW])
            more = f"; ... ({len(items)} in all)" if len(items) > _SHOW else ""
            lines.append(f"  {what} {shown}{more}")
    return "\n".join(lines)


def _prepare(model_or_name, state_dict, input_shape, with_values, create_kwargs):
    model, input_shape, name = resolve(model_or_name, input_shape, **create_kwargs)
    tensors, skipped = _torch_tensors(state_dict, with_values)
    leaves, tree = _jax_leaves(model, input_shape)
    _match(leaves, tree, tensors)
    return model, input_shape, name or type(model).__name__, leaves, tensors, skipped


def from_torch_state_dict(
    model_or_name, state_dict: Mapping, input_shape=None, strict: bool = True, **create_kwargs
) -> dict:
    """jaxcnn variables ``{"params", "batch_stats"}`` for a model from a torch ``state_dict``.

    ``model_or_name``: a registered name (built with ``create_kwargs``, e.g. ``num_classes=10``)
    or a module. ``state_dict``: ``str -> array`` in the torch model's own order (numpy arrays,
    torch tensors, anything with ``__array__``). ``input_shape`` ((H, W, C) or (N, H, W, C))
    defaults to the registered ``input_size``; a module needs it (it fixes e.g. ViT's position
    embedding). ``strict``: see the module docstring. Raises ``ValueError`` on any misfit.
    """
    model, input_shape, name, leaves, tensors, _ = _prepare(
        model_or_name, state_dict, input_shape, True, create_kwargs
    )
    missing = [j for j in leaves if j.match is None]
    extra = [t for t in tensors if not t.used]
    if missing or extra:
        last = max((t.index for t in tensors if t.used), default=-1)
        heads = [j for j in missing if "head" in j.path]
        spare = lambda t: t.index > last or any(_other_classes(t, j) for j in heads)  # noqa
        if strict or len(heads) < len(missing) or not all(spare(t) for t in extra):
            raise ValueError(_diagnose(name, leaves, tensors, strict))
    fresh = _fresh_leaves(model, input_shape, missing) if missing else []
    flat: dict[str, dict] = {"params": {}, "batch_stats": {}}
    for j in leaves:
        v = _to_jax(j.match.value, j.match.kind, j) if j.match is not None else fresh.pop(0)
        flat[j.col][j.path] = jnp.asarray(v, j.dtype)
    return {c: traverse_util.unflatten_dict(f) for c, f in flat.items() if f}


def _fresh_leaves(model, input_shape, leaves):
    """Freshly initialised values of ``leaves`` (one jitted init; the rest is dead code)."""

    def init():
        x = jnp.zeros(input_shape, jnp.float32)
        v = model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x, train=False)
        return [functools.reduce(lambda d, k: d[k], j.path, v[j.col]) for j in leaves]

    return list(jax.jit(init)())


def to_torch_state_dict(
    model_or_name, variables: Mapping, reference: Mapping, input_shape=None, **create_kwargs
) -> dict:
    """The inverse: numpy arrays in torch layout, keyed and ordered like ``reference``.

    ``reference`` maps torch keys to arrays or shapes, e.g. a torchvision model's
    ``state_dict()`` (in its order). Skipped keys (``num_batches_tracked``,
    ``relative_position_index``) are copied from ``reference`` when it holds arrays there.
    """
    _, _, name, leaves, tensors, skipped = _prepare(
        model_or_name, reference, input_shape, False, create_kwargs
    )
    if any(j.match is None for j in leaves) or not all(t.used for t in tensors):
        raise ValueError(_diagnose(name, leaves, tensors, True))
    by_key = {j.match.key: j for j in leaves}
    out = {}
    for key, ref in reference.items():
        if key in skipped:
            if hasattr(ref, "shape") and hasattr(ref, "dtype"):
                out[key] = _numpy(ref)
            continue
        j = by_key[str(key)]
        a = functools.reduce(lambda d, k: d[k], j.path, variables[j.col])
        out[key] = _to_torch(np.asarray(a), j.match.kind, j, j.match.shape)
    return out


def torchvision_transform_input(x):
    """What torchvision's ``transform_input=True`` (GoogLeNet, Inception v3 pretrained weights)
    does, for NHWC input normalised with the ImageNet mean/std: the result is ``(x01 - 0.5) /
    0.5`` of the [0, 1] image. jaxcnn's models leave the step out; apply it before them."""
    mean = jnp.asarray([0.485, 0.456, 0.406])
    std = jnp.asarray([0.229, 0.224, 0.225])
    return x * (std / 0.5) + (mean - 0.5) / 0.5
