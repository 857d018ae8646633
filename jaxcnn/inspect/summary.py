"""Per-layer summary of any model: name, type, output shape, parameters and FLOPs.

The rows come from running the model under ``flax.linen.intercept_methods`` (every module call
is seen, at every depth, in the order the calls start). Parameters are counted from the
``params`` collection of each module's subtree, so a row counts its children too.

FLOPs are XLA's: each row's count is ``jax.jit(f).lower(...).cost_analysis()["flops"]`` of that
module's call lowered on its own (eval mode, the row's input shape), the way
``flax.linen.Module.tabulate(compute_flops=True)`` does it. The root row is the whole forward
pass, so the total is XLA's count for the model; a parent's FLOPs include its children's and the
functional ops it runs between them (activations, pooling, residual adds). XLA counts a
multiply-add as 2 FLOPs (papers quoting "4.1 GFLOPs" for ResNet-50 count multiply-adds).
Identical calls (same module configuration and input shape, e.g. repeated blocks) are lowered
once.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax

from jaxcnn.inspect._common import Call, fmt_int, record_calls, resolve, subtree
from jaxcnn.utils import count_params, path_str

__all__ = ["SummaryRow", "Summary", "summary", "xla_flops", "human"]


def human(n: float | None, unit: str = "") -> str:
    """``1234567 -> "1.23M"``."""
    if n is None:
        return "-"
    for p, s in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= p:
            return f"{n / p:.3g}{s}{unit}"
    return f"{n:.0f}{unit}"


def _shape_str(spec) -> str:
    if isinstance(spec, jax.ShapeDtypeStruct):
        return "(" + ", ".join(str(d) for d in spec.shape) + ")"
    if isinstance(spec, (list, tuple)):
        return "[" + ", ".join(_shape_str(s) for s in spec) + "]"
    if isinstance(spec, dict):
        return "{" + ", ".join(f"{k}: {_shape_str(v)}" for k, v in spec.items()) + "}"
    return type(spec).__name__


def _cost_flops(cost) -> float | None:
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    if not cost:
        return None
    return float(cost.get("flops", 0.0))


def xla_flops(fn, *args, compiled: bool = False) -> float | None:
    """XLA's FLOP count of ``fn(*args)`` (arrays or ``ShapeDtypeStruct``s): HLO cost analysis of
    the lowered module, or of the optimised one with ``compiled=True`` (slower: compiles)."""
    lowered = jax.jit(fn).lower(*args)
    return _cost_flops(lowered.compile().cost_analysis() if compiled else lowered.cost_analysis())


def _fields_key(module) -> tuple:
    return (type(module),) + tuple(
        (f.name, repr(getattr(module, f.name, None)))
        for f in dataclasses.fields(module)
        if f.name not in ("parent", "name")
    )


def _call_flops(call: Call, variables, cache: dict) -> float | None:
    leaves, treedef = jax.tree.flatten((call.args, call.kwargs))
    dyn = [i for i, leaf in enumerate(leaves) if isinstance(leaf, jax.ShapeDtypeStruct)]
    static = tuple(repr(leaf) for i, leaf in enumerate(leaves) if i not in dyn)
    key = (
        _fields_key(call.module),
        call.method,
        static,
        str(treedef),
        tuple((leaves[i].shape, str(leaves[i].dtype)) for i in dyn),
    )
    if key in cache:
        return cache[key]
    module = call.module.clone(parent=None)
    v = subtree(variables, call.path)

    def f(v, dyn_values):
        ls = list(leaves)
        for i, d in zip(dyn, dyn_values):
            ls[i] = d
        args, kwargs = jax.tree.unflatten(treedef, ls)
        return module.apply(
            v, *args, method=call.method, rngs={"dropout": jax.random.key(0)}, **kwargs
        )

    try:
        flops = xla_flops(f, v, [leaves[i] for i in dyn])
    except Exception:  # a module that cannot run on its own (reads its parent's state, ...)
        flops = None
    cache[key] = flops
    return flops


@dataclasses.dataclass
class SummaryRow:
    """One module: ``name`` is its ``/``-joined path (``""`` for the model itself)."""

    name: str
    path: tuple[str, ...]
    type: str
    output_shape: Any
    params: int
    flops: float | None
    calls: int = 1

    @property
    def depth(self) -> int:
        return len(self.path)


@dataclasses.dataclass
class Summary:
    """The table ``summary`` returns; ``str(summary)`` renders it, ``summary["c1"]`` is a row."""

    model_name: str
    input_shape: tuple[int, ...]
    rows: list[SummaryRow]
    total_params: int
    non_trainable: dict[str, int]
    total_flops: float | None
    depth: int | None = None

    def __getitem__(self, name: str) -> SummaryRow:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"no layer {name!r}; layers: {[r.name for r in self.rows][:20]}...")

    def shown_rows(self) -> list[SummaryRow]:
        return [r for r in self.rows if self.depth is None or r.depth <= self.depth]

    def __str__(self) -> str:
        head = ("Layer", "Type", "Output shape", "Params", "FLOPs")
        body = [
            (
                r.name or f"({self.model_name})",
                r.type,
                _shape_str(r.output_shape),
                fmt_int(r.params),
                human(r.flops),
            )
            for r in self.shown_rows()
        ]
        widths = [max(len(row[i]) for row in [head, *body]) for i in range(5)]
        align = ("<", "<", "<", ">", ">")
        line = lambda row: "  ".join(f"{c:{a}{w}}" for c, a, w in zip(row, align, widths))  # noqa
        rule = "-" * len(line(head))
        stats = "; ".join(f"{k} {fmt_int(v)}" for k, v in self.non_trainable.items())
        flops = (
            "-"
            if self.total_flops is None
            else f"{fmt_int(self.total_flops)} ({human(self.total_flops)} FLOPs, "
            f"~{human(self.total_flops / 2)} multiply-adds)"
        )
        out = [
            f"{self.model_name}: input {self.input_shape} (NHWC), eval mode",
            rule,
            line(head),
            rule,
            *map(line, body),
            rule,
            f"Total params: {fmt_int(self.total_params)}"
            + (f"  (non-trainable: {stats})" if stats else ""),
            f"FLOPs (XLA cost analysis, batch {self.input_shape[0]}): {flops}",
        ]
        return "\n".join(out)

    def _repr_pretty_(self, p, cycle):  # IPython
        p.text(str(self))


def summary(
    model,
    input_shape: Sequence[int] | None = None,
    *,
    depth: int | None = None,
    flops: bool = True,
    compiled_total: bool = False,
    **create_kwargs,
) -> Summary:
    """Per-layer table of ``model`` (a registered name or a ``flax.linen.Module``).

    Args:
      model: e.g. ``"resnet50"`` (built with ``**create_kwargs``) or a module instance.
      input_shape: ``(H, W, C)`` or ``(N, H, W, C)``; defaults to the registered input size.
      depth: show rows down to this nesting depth (``None``: all; rows are all kept).
      flops: compute per-row FLOPs (one lowering per distinct call; ``False`` is faster).
      compiled_total: count the total on the compiled (optimised) module instead of the lowered.

    >>> print(summary("lenet5"))   # rows c1 156, c3 2,416, c5 48,120, f6 10,164, head 850
    """
    module, shape, name = resolve(model, input_shape, **create_kwargs)
    calls, variables = record_calls(module, shape)
    cache: dict = {}
    rows = []
    for c in calls:
        params = count_params(subtree(variables, c.path).get("params", {}))
        fl = _call_flops(c, variables, cache) if flops else None
        rows.append(
            SummaryRow(path_str(c.path), c.path, c.type, c.out_spec, params, fl, c.times_called)
        )
    total_flops = rows[0].flops if rows and rows[0].path == () else None
    if flops and compiled_total:
        x = jax.ShapeDtypeStruct(shape, "float32")
        total_flops = xla_flops(
            lambda v, x: module.apply(v, x, train=False), variables, x, compiled=True
        )
    non_trainable = {col: count_params(tree) for col, tree in variables.items() if col != "params"}
    return Summary(
        name or type(module).__name__,
        shape,
        rows,
        count_params(variables.get("params", {})),
        non_trainable,
        total_flops,
        depth,
    )
