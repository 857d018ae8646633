"""The rules that carry receptive fields through jaxpr primitives (used by
``jaxcnn.inspect.receptive_field``; see its docstring for the arithmetic).

A :class:`_State` maps each input spatial axis (0: H, 1: W) to an :class:`_Entry` or to ``None``
(global: the value depends on the whole input along that axis, or its position can no longer be
told). An entry says which tensor axis of the value holds that input axis (``axis``; ``None`` for a
single, collapsed position), the receptive field along it (``rf``) and the number of positions
(``n``). :data:`_Walker.RULES` maps each primitive to the rule that moves entries through it;
primitives without a rule are pointwise when an operand has the output's shape, else global.
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from typing import NamedTuple, Sequence

from jaxcnn.utils import path_str

TAG = "jaxcnn_rf:"


@dataclasses.dataclass(frozen=True)
class AxisRF:
    """Receptive field along one input axis. ``start`` is ``None`` once it is unknown."""

    size: Fraction
    jump: Fraction
    start: Fraction | None


class _Entry(NamedTuple):
    """Where one input spatial axis sits in a value, and its receptive field there."""

    axis: int | None  # tensor axis holding it; None: collapsed to one position
    rf: AxisRF
    n: int  # number of positions along ``axis``


class _Window(NamedTuple):
    """A windowed op along one tensor axis: ``kernel`` taps ``dilation`` apart, ``stride``,
    ``low_pad`` padding before the first element, over an input dilated by ``input_dilation``
    (> 1: a transposed convolution or a base-dilated pooling)."""

    kernel: int
    stride: int | Fraction
    low_pad: int
    dilation: int = 1
    input_dilation: int = 1


@dataclasses.dataclass(frozen=True)
class _State:
    axes: tuple[_Entry | None, ...]  # one _Entry or None per input spatial axis
    context: bool = False


def _window(rf: AxisRF, w: _Window) -> AxisRF:
    """The receptive field after the window ``w`` (see :class:`_Window`)."""
    k, s, lo, d, ld = w
    keff = d * (k - 1) + 1
    span = 0  # real input units spanned minus one, over the window's possible phases
    for phase in range(ld):
        hits = [phase + t * d for t in range(k) if (phase + t * d) % ld == 0]
        if hits:
            span = max(span, (max(hits) - min(hits)) // ld)
    jd = rf.jump / ld
    if rf.start is None:
        start = None
    elif ld == 1:
        start = rf.start + (Fraction(keff - 1, 2) - lo) * jd
    else:  # unit 0's taps that land on real (not inserted) input positions
        hits = [p // ld for p in (t * d - lo for t in range(k)) if p % ld == 0]
        centre = Fraction(min(hits) + max(hits), 2) if hits else (Fraction(keff - 1, 2) - lo) / ld
        start = rf.start + centre * rf.jump
    return AxisRF(rf.size + span * rf.jump, jd * s, start)


def _union(rf: AxisRF, n: int) -> AxisRF:
    start = None if rf.start is None else rf.start + Fraction(n - 1, 2) * rf.jump
    return AxisRF(rf.size + (n - 1) * rf.jump, rf.jump, start)


def _holders(state: _State) -> dict:
    """tensor axis -> the input axes it holds (two when H and W were merged into tokens)."""
    h: dict = {}
    for i, e in enumerate(state.axes):
        if e is not None and e.axis is not None:
            h.setdefault(e.axis, []).append(i)
    return h


def _merge(operands: Sequence[_State | None], include_context: bool = False) -> _State | None:
    """Several operands meet pointwise: the largest field wins on every axis (None: no operand
    carries a field)."""
    states = [s for s in operands if s is not None]
    if not states:
        return None
    context = any(s.context for s in states)
    axes: list[_Entry | None] = []
    for i in range(len(states[0].axes)):
        entries = [s.axes[i] for s in states]
        known = [e for e in entries if e is not None]
        if len(known) < len(entries):
            axes.append(None)
            continue
        pos = [e for e in known if e.axis is not None]
        col = [e for e in known if e.axis is None]
        if pos:
            best = max(pos, key=lambda e: e.rf.size)
            if col:
                big = max(col, key=lambda e: e.rf.size)
                if include_context and big.rf.size > best.rf.size:
                    best = best._replace(rf=AxisRF(big.rf.size, best.rf.jump, best.rf.start))
                else:
                    context = True
            axes.append(best)
        else:
            axes.append(max(col, key=lambda e: e.rf.size))
    return _State(tuple(axes), context)


def _remap(state: _State, fn) -> _State:
    """Apply ``fn(i, entry) -> entry`` to every tracked input axis."""
    return _State(
        tuple(None if e is None else fn(i, e) for i, e in enumerate(state.axes)), state.context
    )


def _fix_n(state: _State | None, shape) -> _State | None:
    if state is None:
        return None
    holders = _holders(state)
    return _remap(
        state,
        lambda i, e: (
            e._replace(n=shape[e.axis]) if e.axis is not None and len(holders[e.axis]) == 1 else e
        ),
    )


def _unknown_start(e: _Entry) -> _Entry:
    """The same field whose position (``start``) can no longer be told."""
    return e._replace(rf=AxisRF(e.rf.size, e.rf.jump, None))


def _global(state: _State | None) -> _State | None:
    return None if state is None else _State(tuple(None for _ in state.axes), state.context)


@dataclasses.dataclass
class RFRow:
    """A convolution or pooling: its output's receptive field along H and W."""

    name: str
    op: str
    kernel: tuple
    stride: tuple
    dilation: tuple
    padding: tuple
    out_hw: tuple
    size: tuple  # (h, w) Fraction, or None where global
    jump: tuple
    start: tuple
    context: bool = False
    loc: tuple = ()  # where the equation sits in the jaxpr (for the effective RF)
    axes: tuple = (None, None)  # tensor axes of H and W in the output
    module_type: str = ""

    @property
    def rf(self) -> int | None:
        """The field's side when square (``None`` if global or not square)."""
        return (
            int(self.size[0]) if self.size[0] is not None and self.size[0] == self.size[1] else None
        )


class FieldAt(NamedTuple):
    """Receptive field of one value along (H, W); ``None`` entries are global/unknown."""

    size: tuple
    jump: tuple
    start: tuple
    context: bool = False
    axes: tuple = (None, None)  # tensor axes holding H and W in that value


def _entry_summary(state: _State | None) -> FieldAt:
    if state is None:
        return FieldAt((None, None), (None, None), (None, None), False)
    size, jump, start, axes = [], [], [], []
    for e in state.axes:
        size.append(None if e is None else e.rf.size)
        jump.append(None if e is None else e.rf.jump)
        start.append(None if e is None else e.rf.start)
        axes.append(None if e is None else e.axis)
    return FieldAt(tuple(size), tuple(jump), tuple(start), state.context, tuple(axes))


def _sub_jaxprs(eqn):
    """``(key, closed_or_open_jaxpr)`` of a call-like equation whose inputs are the eqn's."""
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        j = eqn.params.get(key)
        if j is None:
            continue
        inner = getattr(j, "jaxpr", j)
        if hasattr(inner, "eqns") and len(inner.invars) == len(eqn.invars):
            return key, j
    return None


class _Walker:
    """Walks a jaxpr, carrying a :class:`_State` per value and recording a :class:`RFRow` per
    convolution and pooling. Call-like equations (pjit, custom_vjp, remat...) are walked into;
    ``cond`` merges its branches; every other primitive goes to its rule in :data:`RULES`
    (``p_*`` methods taking ``(eqn, in_states, name_stack, loc)`` and returning out states) or,
    without one, to :meth:`fallback`."""

    # primitive name -> the method that carries fields through it
    RULES = {
        "conv_general_dilated": "p_conv_general_dilated",
        **dict.fromkeys(
            ("reduce_window", "reduce_window_max", "reduce_window_min", "reduce_window_sum"),
            "p_reduce_window",
        ),
        **dict.fromkeys(
            (
                "reduce_sum",
                "reduce_max",
                "reduce_min",
                "reduce_prod",
                "reduce_and",
                "reduce_or",
                "argmax",
                "argmin",
            ),
            "p_reduce",
        ),
        "transpose": "p_transpose",
        "squeeze": "p_squeeze",
        "broadcast_in_dim": "p_broadcast_in_dim",
        "reshape": "p_reshape",
        "slice": "p_slice",
        "pad": "p_pad",
        "concatenate": "p_concatenate",
        "split": "p_split",
        "rev": "p_rev",
        "sort": "p_sort",
        **dict.fromkeys(("cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp"), "p_cumsum"),
        "dot_general": "p_dot_general",
    }

    def __init__(self, root_name: str, calls: dict, include_context: bool):
        self.root = root_name
        self.calls = calls
        self.include_context = include_context
        self.rows: list[RFRow] = []
        self.modules: dict = {}
        self.module_locs: dict = {}

    # -- naming ---------------------------------------------------------------------------
    def _path(self, stack: str) -> tuple[str, ...]:
        parts = [p.split(".")[0] for p in stack.split("/") if p]
        if parts and parts[0] == self.root:
            parts = parts[1:]
        return tuple(parts)

    # -- the walk ---------------------------------------------------------------------------
    def run(self, jaxpr, in_states, prefix="", loc=()):
        env: dict = {}
        read = lambda v: env.get(v) if not hasattr(v, "val") else None  # noqa: E731
        for v, s in zip(jaxpr.invars, in_states):
            env[v] = s
        for i, eqn in enumerate(jaxpr.eqns):
            ins = [read(v) for v in eqn.invars]
            stack = "/".join(p for p in (prefix, str(eqn.source_info.name_stack)) if p)
            if all(s is None for s in ins):
                continue
            outs = self.eqn(eqn, ins, stack, loc + (i,))
            for v, s in zip(eqn.outvars, outs):
                env[v] = _fix_n(s, v.aval.shape) if hasattr(v.aval, "shape") else s
        return [read(v) for v in jaxpr.outvars]

    def eqn(self, eqn, ins, stack, loc):
        name = eqn.primitive.name
        p = eqn.params
        if name == "name":
            tag = p.get("name", "")
            if tag.startswith(TAG):
                idx = int(tag[len(TAG) :])
                path = self.calls[idx][0]
                if path not in self.modules:
                    self.modules[path] = _entry_summary(ins[0])
                    self.module_locs[path] = loc
            return ins
        sub = _sub_jaxprs(eqn)
        if sub is not None:
            key, j = sub
            inner = getattr(j, "jaxpr", j)
            return self.run(inner, ins, stack, loc + (key,))
        if name == "cond":
            outs = [
                self.run(b.jaxpr, ins[1:], stack, loc + (("branches", k),))
                for k, b in enumerate(p["branches"])
            ]
            return [_merge(list(o), self.include_context) for o in zip(*outs)]
        rule = self.RULES.get(name)
        if rule is not None:
            return getattr(self, rule)(eqn, ins, stack, loc)
        return self.fallback(eqn, ins)

    def fallback(self, eqn, ins):
        """Pointwise when an operand has the output's shape (operands of the same rank with
        size-1 axes broadcast); anything else that depends on the input becomes global."""
        outs = []
        for ov in eqn.outvars:
            shape = getattr(ov.aval, "shape", None)
            same, other = [], []
            for s, v in zip(ins, eqn.invars):
                if s is None:
                    continue
                ishape = getattr(v.aval, "shape", None)
                if ishape == shape:
                    same.append(s)
                elif (
                    shape is not None
                    and ishape is not None
                    and len(ishape) == len(shape)
                    and all(a in (1, b) for a, b in zip(ishape, shape))
                ):
                    same.append(
                        _remap(
                            s,
                            lambda i, e, ishape=ishape: (
                                e
                                if e.axis is None or ishape[e.axis] == shape[e.axis]
                                else _Entry(None, e.rf, 1)
                            ),
                        )
                    )
                else:
                    other.append(s)
            if same:
                st = _merge(same, self.include_context)
                for o in other:  # different shape: fine if it is collapsed (context) only
                    if any(e is None or e.axis is not None for e in o.axes):
                        st = _global(st)
                    else:
                        st = _merge([st, o], self.include_context)
                outs.append(st)
            else:
                outs.append(_global(_merge(other)))
        return outs

    # -- spatial primitives -------------------------------------------------------------------
    def _row(self, op, stack, loc, state, windows: dict[int, _Window], out_shape):
        """Record a convolution/pooling row; ``windows`` by output tensor axis."""
        path = self._path(stack)
        size, jump, start, ctx, axes = _entry_summary(state)
        kernel, stride, dil, pad, out_hw = [], [], [], [], []
        for i in range(2):
            e = state.axes[i] if state is not None else None
            t = e.axis if e is not None else None
            w = _Window(1, 1, 0) if t is None else windows.get(t, _Window(1, 1, 0))
            kernel.append(w.kernel)
            stride.append(w.stride)
            pad.append(w.low_pad)
            dil.append(w.dilation)
            out_hw.append(out_shape[t] if t is not None else 1)
        self.rows.append(
            RFRow(
                path_str(path),
                op,
                tuple(kernel),
                tuple(stride),
                tuple(dil),
                tuple(pad),
                tuple(out_hw),
                size,
                jump,
                start,
                ctx,
                loc,
                axes,
                self.calls_by_path().get(path, ""),
            )
        )

    def calls_by_path(self):
        if not hasattr(self, "_cbp"):
            self._cbp = {path: t for path, t in self.calls.values()}
        return self._cbp

    def _spatial(self, state, axis_map, windows: dict[int, _Window]):
        """Move tracked axes through a windowed op: ``axis_map`` in->out tensor axis,
        ``windows`` by input tensor axis."""
        holders = _holders(state)

        def f(i, e):
            t, rf, n = e
            if t is None:
                return e
            if t not in axis_map:
                return None
            if t in windows:
                if len(holders[t]) > 1:
                    return None
                rf = _window(rf, windows[t])
            return _Entry(axis_map[t], rf, n)

        return _remap(state, f)

    def p_conv_general_dilated(self, eqn, ins, stack, loc):
        lhs, rhs = ins[0], ins[1]
        if rhs is not None:  # kernel computed from the input: no locality to speak of
            return [_global(_merge([lhs, rhs]))]
        p = eqn.params
        dn = p["dimension_numbers"]
        lhs_spec, rhs_spec, out_spec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
        kshape = eqn.invars[1].aval.shape
        nsp = len(lhs_spec) - 2
        ld = p.get("lhs_dilation") or (1,) * nsp
        rd = p.get("rhs_dilation") or (1,) * nsp
        pad = p["padding"]
        axis_map = {lhs_spec[0]: out_spec[0], lhs_spec[1]: out_spec[1]}
        windows = {}
        for i in range(nsp):
            axis_map[lhs_spec[2 + i]] = out_spec[2 + i]
            windows[lhs_spec[2 + i]] = _Window(
                kshape[rhs_spec[2 + i]], p["window_strides"][i], pad[i][0], rd[i], ld[i]
            )
        # a spatial field sitting on the feature axis would be mixed by the contraction
        if any(e is not None and e.axis == lhs_spec[1] for e in lhs.axes):
            lhs = _global(lhs)
        out = self._spatial(lhs, axis_map, windows)
        op = "conv_transpose" if any(x > 1 for x in ld) else "conv"
        # the row reports the stride relative to the (dilated) input: s / ld
        win_out = {
            axis_map[t]: w._replace(stride=Fraction(w.stride, w.input_dilation), input_dilation=1)
            for t, w in windows.items()
        }
        self._row(
            op,
            stack,
            loc,
            _fix_n(out, eqn.outvars[0].aval.shape),
            win_out,
            eqn.outvars[0].aval.shape,
        )
        return [out]

    def p_reduce_window(self, eqn, ins, stack, loc):
        p = eqn.params
        nops = len(ins) // 2 if eqn.primitive.name == "reduce_window" else len(ins)
        state = _merge(ins[:nops], self.include_context)
        shape = eqn.invars[0].aval.shape
        nd = len(shape)
        bd = p.get("base_dilation") or (1,) * nd
        wd = p.get("window_dilation") or (1,) * nd
        windows = {
            t: _Window(
                p["window_dimensions"][t], p["window_strides"][t], p["padding"][t][0], wd[t], bd[t]
            )
            for t in range(nd)
        }
        out = self._spatial(state, {t: t for t in range(nd)}, windows)
        kind = {
            "reduce_window_max": "max_pool",
            "reduce_window_sum": "avg_pool",
            "reduce_window_min": "min_pool",
        }.get(eqn.primitive.name, "pool")
        oshape = eqn.outvars[0].aval.shape
        self._row(
            kind,
            stack,
            loc,
            _fix_n(out, oshape),
            {t: w._replace(input_dilation=1) for t, w in windows.items()},
            oshape,
        )
        return [out] * len(eqn.outvars)

    def p_reduce(self, eqn, ins, stack, loc):
        axes = tuple(eqn.params["axes"])

        def f(i, e):
            t, rf, n = e
            if t is None:
                return e
            if t in axes:
                return _Entry(None, _union(rf, n), 1)
            return _Entry(t - sum(a < t for a in axes), rf, n)

        return [_remap(ins[0], f)] * len(eqn.outvars) if ins[0] is not None else [None]

    # -- shape primitives ---------------------------------------------------------------------
    def p_transpose(self, eqn, ins, stack, loc):
        perm = list(eqn.params["permutation"])
        return [
            _remap(
                ins[0], lambda i, e: e if e.axis is None else e._replace(axis=perm.index(e.axis))
            )
        ]

    def p_squeeze(self, eqn, ins, stack, loc):
        dims = tuple(d % len(eqn.invars[0].aval.shape) for d in eqn.params["dimensions"])

        def f(i, e):
            t = e.axis
            if t is None:
                return e
            if t in dims:
                return _Entry(None, e.rf, 1)
            return e._replace(axis=t - sum(d < t for d in dims))

        return [_remap(ins[0], f)]

    def p_broadcast_in_dim(self, eqn, ins, stack, loc):
        bd = eqn.params["broadcast_dimensions"]
        ishape, oshape = eqn.invars[0].aval.shape, eqn.params["shape"]

        def f(i, e):
            t = e.axis
            if t is None:
                return e
            o = bd[t]
            if ishape[t] == 1 and oshape[o] != 1:
                return _Entry(None, e.rf, 1)
            return e._replace(axis=o)

        return [_remap(ins[0], f)]

    def p_reshape(self, eqn, ins, stack, loc):
        """A reshape keeps, merges or splits tensor axes. The axes of size > 1 are paired into
        groups whose sizes multiply to the same number (:func:`_reshape_groups`); size-1 axes
        move to a size-1 output axis at the same position (:func:`_reshape_unit_axes`); each
        group then carries its tracked axes (:func:`_reshape_group`)."""
        state = ins[0]
        a, b = eqn.invars[0].aval.shape, tuple(eqn.params["new_sizes"])
        if eqn.params.get("dimensions") is not None:
            return [_global(state)]
        holders = _holders(state)
        new = _reshape_unit_axes(state, holders, a, b)
        for gi, gj in _reshape_groups(a, b):
            if any(t in holders for t in gi):
                _reshape_group(state, holders, a, b, gi, gj, new)
        return [_State(tuple(new), state.context)]

    def p_slice(self, eqn, ins, stack, loc):
        p = eqn.params
        strides = p.get("strides") or (1,) * len(p["start_indices"])
        holders = _holders(ins[0])

        def f(i, e):
            t, rf, n = e
            if t is None or (p["start_indices"][t] == 0 and strides[t] == 1):
                return e
            if len(holders[t]) > 1:
                return None
            start = None if rf.start is None else rf.start + p["start_indices"][t] * rf.jump
            return _Entry(t, AxisRF(rf.size, rf.jump * strides[t], start), n)

        return [_remap(ins[0], f)]

    def p_pad(self, eqn, ins, stack, loc):
        cfg = eqn.params["padding_config"]
        state = _merge([ins[0], ins[1]], self.include_context) if ins[0] is not None else ins[1]
        assert state is not None  # the walk skips equations whose operands carry no field
        holders = _holders(state)

        def f(i, e):
            t, rf, n = e
            if t is None or tuple(cfg[t]) == (0, 0, 0):
                return e
            if len(holders[t]) > 1:
                return None
            lo, _, interior = cfg[t]
            jump = rf.jump / (interior + 1)
            start = None if rf.start is None else rf.start - lo * jump
            return _Entry(t, AxisRF(rf.size, jump, start), n)

        return [_remap(state, f)]

    def p_concatenate(self, eqn, ins, stack, loc):
        dim = eqn.params["dimension"]
        st = _merge(ins, self.include_context)
        assert st is not None  # the walk skips equations whose operands carry no field
        return [_remap(st, lambda i, e: e if e.axis != dim else _unknown_start(e))]

    def p_split(self, eqn, ins, stack, loc):
        axis, sizes = eqn.params["axis"], eqn.params["sizes"]
        holders = _holders(ins[0])
        outs, off = [], 0
        for s in sizes:

            def f(i, e, off=off):
                t, rf, n = e
                if t != axis or off == 0:
                    return e
                if len(holders[t]) > 1:
                    return None
                start = None if rf.start is None else rf.start + off * rf.jump
                return _Entry(t, AxisRF(rf.size, rf.jump, start), n)

            outs.append(_remap(ins[0], f))
            off += s
        return outs

    def p_rev(self, eqn, ins, stack, loc):
        dims = eqn.params["dimensions"]
        return [_remap(ins[0], lambda i, e: e if e.axis not in dims else _unknown_start(e))]

    def _along_axis(self, eqn, ins, axis):
        outs = self.fallback(eqn, ins)
        return [
            None if o is None else _remap(o, lambda i, e: None if e.axis == axis else e)
            for o in outs
        ]

    def p_sort(self, eqn, ins, stack, loc):
        return self._along_axis(eqn, ins, eqn.params["dimension"])

    def p_cumsum(self, eqn, ins, stack, loc):
        return self._along_axis(eqn, ins, eqn.params["axis"])

    def p_dot_general(self, eqn, ins, stack, loc):
        (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
        shapes = [v.aval.shape for v in eqn.invars[:2]]
        free = [
            [t for t in range(len(s)) if t not in c and t not in b]
            for s, c, b in zip(shapes, (lc, rc), (lb, rb))
        ]
        offsets = (len(lb), len(lb) + len(free[0]))
        contribs = []
        for k, (st, c, b) in enumerate(zip(ins[:2], (lc, rc), (lb, rb))):
            if st is None:
                continue
            holders = _holders(st)

            def f(i, e, k=k, c=c, b=b, holders=holders):
                t, rf, n = e
                if t is None:
                    return e
                if t in c:
                    return _Entry(None, _union(rf, n), 1)
                if t in b:
                    return _Entry(list(b).index(t), rf, n)
                return _Entry(offsets[k] + free[k].index(t), rf, n)

            contribs.append(_remap(st, f))
        if len(contribs) == 2:  # both operands carry a field: positions must agree
            axes: list[_Entry | None] = []
            for ea, eb in zip(contribs[0].axes, contribs[1].axes):
                if (
                    ea is not None
                    and eb is not None
                    and ea.axis is not None
                    and eb.axis is not None
                    and ea.axis != eb.axis
                ):
                    axes.append(None)
                else:
                    pair = _merge([_State((ea,)), _State((eb,))], self.include_context)
                    assert pair is not None  # two states in, one out
                    axes.append(pair.axes[0])
            return [_State(tuple(axes), contribs[0].context or contribs[1].context)]
        return contribs


# -- reshape --------------------------------------------------------------------------------
def _reshape_groups(a: Sequence[int], b: Sequence[int]) -> list[tuple[list[int], list[int]]]:
    """Pair the axes of size > 1 of shape ``a`` with those of ``b``: consecutive runs whose
    sizes multiply to the same number, e.g. ``(2, 7, 7, 64) -> (2, 49, 64)`` gives
    ``([0], [0]), ([1, 2], [1]), ([3], [2])``."""
    ai = [k for k in range(len(a)) if a[k] != 1]
    bj = [k for k in range(len(b)) if b[k] != 1]
    groups, i, j = [], 0, 0
    while i < len(ai) and j < len(bj):
        gi, gj = [ai[i]], [bj[j]]
        pa, pb = a[ai[i]], b[bj[j]]
        i, j = i + 1, j + 1
        while pa != pb:
            if pa < pb:
                gi.append(ai[i])
                pa *= a[ai[i]]
                i += 1
            else:
                gj.append(bj[j])
                pb *= b[bj[j]]
                j += 1
        groups.append((gi, gj))
    return groups


def _reshape_unit_axes(state: _State, holders: dict, a, b) -> list:
    """The new entries for input axes held on a size-1 tensor axis: the first unused size-1
    output axis with the same product of sizes before it, else collapsed. Other entries are
    copied unchanged (:func:`_reshape_group` moves them)."""
    new = list(state.axes)
    pre_a, pre_b = [1], [1]
    for s in a:
        pre_a.append(pre_a[-1] * s)
    for s in b:
        pre_b.append(pre_b[-1] * s)
    used = set()
    for t in holders:
        if a[t] != 1:
            continue
        cand = [k for k in range(len(b)) if b[k] == 1 and pre_b[k] == pre_a[t] and k not in used]
        for in_ax in holders[t]:
            e = state.axes[in_ax]
            new[in_ax] = e._replace(axis=cand[0]) if cand else _Entry(None, e.rf, 1)
        if cand:
            used.add(cand[0])
    return new


def _reshape_group(state: _State, holders: dict, a, b, gi, gj, new: list) -> None:
    """Move the tracked axes of one group ``gi -> gj`` into ``new`` (in place):

    - one axis to one axis: renumbered;
    - several to one (H, W -> tokens; or nearest upsampling's (H, r) -> H*r): when only the
      outermost input axis is tracked, the positions interleave by ``r`` (the product of the
      inner sizes), so the jump divides by ``r``; otherwise the tracked axes share the token axis;
    - one token axis holding H and W back to two axes (un-merging tokens): each to its own;
    - anything else: the position can no longer be told (global).
    """
    tracked = [t for t in gi if t in holders]
    if len(gi) == 1 and len(gj) == 1:
        for in_ax in holders[gi[0]]:
            new[in_ax] = state.axes[in_ax]._replace(axis=gj[0])
    elif len(gj) == 1:
        if len(tracked) == 1 and tracked[0] == gi[0] and len(holders[gi[0]]) == 1:
            r = 1
            for t in gi[1:]:
                r *= a[t]
            in_ax = holders[gi[0]][0]
            _, rf, n = state.axes[in_ax]
            start = None if rf.start is None else rf.start - Fraction(r - 1, 2) * rf.jump / r
            new[in_ax] = _Entry(gj[0], AxisRF(rf.size, rf.jump / r, start), n * r)
        else:
            for t in tracked:
                for in_ax in holders[t]:
                    new[in_ax] = state.axes[in_ax]._replace(axis=gj[0])
    elif (
        len(gi) == 1
        and len(holders[gi[0]]) == len(gj) == 2
        and all(state.axes[k].n == b[o] for k, o in zip(holders[gi[0]], gj))
    ):
        for in_ax, o in zip(sorted(holders[gi[0]]), gj):
            new[in_ax] = state.axes[in_ax]._replace(axis=o)
    else:
        for t in tracked:
            for in_ax in holders[t]:
                new[in_ax] = None
