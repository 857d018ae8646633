"""Analytic receptive fields of any model, derived from the model's own jaxpr.

The forward pass is traced with ``jax.make_jaxpr`` and, for every value that depends on the
input, the receptive field is carried along each input spatial axis as three numbers (the
lectures' arithmetic):

- ``size``  RF_l = RF_{l-1} + (K_eff - 1) * j_{l-1}   (K_eff = K + (K - 1)(D - 1))
- ``jump``  j_l = j_{l-1} * S_l                        (input pixels between adjacent units)
- ``start`` centre of unit 0's field, in input pixel coordinates (pixel centres 0..H-1):
  start_l = start_{l-1} + ((K_eff - 1)/2 - P_lo) * j_{l-1}

through ``conv_general_dilated`` (stride, padding, dilation; ``lhs_dilation`` makes a transposed
convolution: the jump divides by its stride) and ``reduce_window*`` (every pooling), and
unchanged through pointwise ops. Where paths merge (``add``/``mul``/``concatenate``: residuals,
Inception branches) the largest field wins. Reducing or contracting a spatial axis (global
pooling, attention over tokens) gives the union of the fields along it. Reshapes that merge H
and W into tokens keep the field (ViT's patch embedding); reshapes that split a spatial axis
(Swin's windows) make it ``global``. A branch reduced to 1x1 and broadcast back onto a spatial
map (squeeze-excite gates) is *global context*: by default it is left out of the local field and
the row is flagged (``context="include"`` counts it). Because the walk is over primitives,
functional ops that module interception would miss (``max_pool``, residual adds) are counted.

Rows are the convolutions and poolings in execution order, named by the module path from the
jaxpr's name stack; ``modules`` holds the field at every module's output (tagged during the
trace with ``checkpoint_name``).
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from jaxcnn.inspect._common import resolve, xla_convs
from jaxcnn.inspect._rf_walk import (
    TAG,
    AxisRF,
    FieldAt,
    RFRow,
    _Entry,
    _entry_summary,
    _State,
    _Walker,
)
from jaxcnn.utils import abstract_init, path_str

__all__ = ["AxisRF", "FieldAt", "RFRow", "ReceptiveFields", "receptive_fields", "trace_forward"]


def _fmt(v, frac: bool = False) -> str:
    if v is None:
        return "?"
    if isinstance(v, Fraction) and v.denominator != 1:
        return f"{v.numerator}/{v.denominator}" if frac else f"{float(v):.3g}"
    return str(int(v))


def _fmt2(pair, glob="global", frac: bool = False) -> str:
    a, b = pair
    if a is None and b is None:
        return glob
    return _fmt(a, frac) if a == b else f"{_fmt(a, frac)}x{_fmt(b, frac)}"


@dataclasses.dataclass
class ReceptiveFields:
    """Result of :func:`receptive_fields`: ``rows`` (convs and pools in order), ``modules``
    (module path -> (size, jump, start) at its output) and ``output`` (the model's output)."""

    model_name: str
    input_shape: tuple
    rows: list[RFRow]
    modules: dict
    output: FieldAt
    closed_jaxpr: Any = dataclasses.field(default=None, repr=False)
    var_tree: Any = dataclasses.field(default=None, repr=False)
    module_locs: dict = dataclasses.field(default_factory=dict, repr=False)
    model: Any = dataclasses.field(default=None, repr=False)

    def field(self, layer: str) -> tuple[FieldAt, tuple]:
        """``(FieldAt, jaxpr location)`` of a row name or a module path."""
        for r in self.rows:
            if r.name == layer:
                return FieldAt(r.size, r.jump, r.start, r.context, r.axes), r.loc
        if layer in self.modules:
            return self.modules[layer], self.module_locs[layer]
        raise KeyError(
            f"no layer {layer!r}: rows {[r.name for r in self.rows][:12]}..., "
            f"modules {list(self.modules)[:12]}..."
        )

    def __getitem__(self, name: str) -> RFRow:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"no conv/pool row {name!r}; rows: {[r.name for r in self.rows][:20]}")

    def __str__(self) -> str:
        head = ("Layer", "Op", "Kernel", "Stride", "Pad", "Dil", "Output", "RF", "Jump", "Start")
        body = [
            (
                r.name,
                r.op,
                _fmt2(r.kernel),
                _fmt2(r.stride, frac=True),
                _fmt2(r.padding),
                _fmt2(r.dilation),
                _fmt2(r.out_hw),
                _fmt2(r.size) + (" +g" if r.context else ""),
                _fmt2(r.jump, "-", True),
                _fmt2(r.start, "-"),
            )
            for r in self.rows
        ]
        widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
        line = lambda row: "  ".join(  # noqa: E731
            f"{c:<{w}}" if i < 2 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(row, widths))
        )
        rule = "-" * len(line(head))
        size, ctx = self.output.size, self.output.context
        h, w = self.input_shape[1:3]
        out = [
            f"{self.model_name}: receptive fields for input {h}x{w} (pixels; start = centre "
            f"of unit 0's field)",
            rule,
            line(head),
            rule,
            *map(line, body),
            rule,
            f"Model output: RF {_fmt2(size)}" + (" (+ global context)" if ctx else ""),
        ]
        if size[0] is None:
            glob = [k for k, v in self.modules.items() if k and v.size[0] is None]
            first = next((k for k in glob if "/" not in k), glob[0] if glob else None)
            out.append(
                f"Global from {first or 'the output'} on: every output depends on the "
                f"whole image (self-attention mixes all positions; a reshape that splits "
                f"the spatial axes, e.g. Swin's windows, is also counted as global)"
            )
        elif max(size) > max(h, w):
            out.append(
                f"(fields larger than the {h}x{w} image reach into the zero padding; "
                f"after global pooling the field is the union over the last map)"
            )
        if any(r.context for r in self.rows):
            out.append(
                "+g: a globally pooled branch (e.g. squeeze-excite) also feeds this "
                "layer; it is left out of the local field"
            )
        return "\n".join(out)

    def module_table(self, depth: int | None = 1) -> str:
        """The field at each module's output down to ``depth`` (branches already merged)."""
        items = [
            (k, v) for k, v in self.modules.items() if k and (depth is None or k.count("/") < depth)
        ]
        head = ("Module output", "RF", "Jump", "Start")
        body = [
            (
                k,
                _fmt2(v.size) + (" +g" if v.context else ""),
                _fmt2(v.jump, "-", True),
                _fmt2(v.start, "-"),
            )
            for k, v in items
        ]
        widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
        line = lambda row: "  ".join(  # noqa: E731
            f"{c:<{w}}" if i == 0 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(row, widths))
        )
        rule = "-" * len(line(head))
        return "\n".join([rule, line(head), rule, *map(line, body), rule])

    def _repr_pretty_(self, p, cycle):
        p.text(str(self))


def trace_forward(model: nn.Module, input_shape, variables=None, **kwargs):
    """``(closed_jaxpr, variables_treedef, module_calls)`` of the eval forward pass, with each
    module's output tagged ``jaxcnn_rf:<index>`` (identity ``name`` equations)."""
    model = xla_convs(model)
    if variables is None:
        variables = abstract_init(model, input_shape, **kwargs)
    calls: dict[int, tuple] = {}

    def interceptor(next_fun, args, kw, context):
        out = next_fun(*args, **kw)
        if context.method_name == "setup":
            return out
        mod = context.module
        path = tuple(mod.scope.path) if mod.scope is not None else ()
        idx = len(calls)
        calls[idx] = (path, type(mod).__name__)
        return jax.tree.map(
            lambda a: checkpoint_name(a, f"{TAG}{idx}") if isinstance(a, jax.Array) else a, out
        )

    def fwd(v, x):
        with nn.intercept_methods(interceptor):
            return model.apply(v, x, train=False, **kwargs)

    x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
    closed = jax.make_jaxpr(fwd)(variables, x)
    return closed, jax.tree.structure(variables), calls


def _name_rows(rows: list[RFRow]) -> None:
    """A conv that is its module's only spatial op takes the module's path as its name; other
    ops are ``<module path>/<op>`` (numbered when repeated)."""
    by_path: dict = {}
    for r in rows:
        by_path.setdefault(r.name, []).append(r)
    for path, rs in by_path.items():
        mtype = rs[0].module_type
        if len(rs) == 1 and rs[0].op.startswith("conv") and "Conv" in mtype:
            continue
        seen: dict = {}
        for r in rs:
            k = seen.get(r.op, 0)
            seen[r.op] = k + 1
            total = sum(x.op == r.op for x in rs)
            label = r.op if total == 1 else f"{r.op}{k}"
            r.name = f"{path}/{label}" if path else label


def receptive_fields(
    model, input_shape: Sequence[int] | None = None, *, context: str = "ignore", **create_kwargs
) -> ReceptiveFields:
    """Analytic receptive field (size, jump, start along H and W) of every convolution and
    pooling of ``model`` (a registered name or a module), and of every module's output.

    ``context="include"`` counts globally pooled branches (squeeze-excite) in the field.
    """
    if context not in ("ignore", "include"):
        raise ValueError(f"context must be 'ignore' or 'include', got {context!r}")
    module, shape, name = resolve(model, input_shape, **create_kwargs)
    closed, treedef, calls = trace_forward(module, shape)
    walker = _Walker(type(module).__name__, calls, context == "include")
    jaxpr = closed.jaxpr
    n_vars = treedef.num_leaves
    x_state = _State(
        (
            _Entry(1, AxisRF(Fraction(1), Fraction(1), Fraction(0)), shape[1]),
            _Entry(2, AxisRF(Fraction(1), Fraction(1), Fraction(0)), shape[2]),
        )
    )
    in_states = [None] * n_vars + [x_state]
    outs = walker.run(jaxpr, in_states)
    _name_rows(walker.rows)
    modules = {path_str(k): v for k, v in walker.modules.items()}
    return ReceptiveFields(
        name or type(module).__name__,
        shape,
        walker.rows,
        modules,
        _entry_summary(outs[0]),
        closed,
        treedef,
        {path_str(k): v for k, v in walker.module_locs.items()},
        module,
    )
