"""A :class:`~jaxcnn.transfer.Plan` resolved on a model (:meth:`Plan.apply`): the role of every
parameter, one optimizer per phase over one state layout, the per-phase ``apply_fn`` (BatchNorm
statistics fixed where the plan says, LoRA merged) and trainable partition, the phased train step
(one compiled step: the phase is picked on device from ``state.step``), and the plan's table.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from jaxcnn.transfer.freeze import FrozenBatchNorm, frozen_bn_modules
from jaxcnn.transfer.labels import FROZEN, TRAINABLE, match
from jaxcnn.transfer.lora import LORA_LEAVES
from jaxcnn.utils import map_with_path, tree_paths

if TYPE_CHECKING:
    from jaxcnn.transfer.plan import Plan

__all__ = ["Applied", "Phase", "Role"]


@dataclasses.dataclass(frozen=True)
class Role:
    """What a plan does with one parameter (a pytree leaf): its group, its kind (``train``,
    ``frozen``, ``adapted`` for a frozen weight of a LoRA group, ``lora`` for an adapter,
    ``bn_affine`` for a BatchNorm scale/bias trained in a frozen, LoRA or waiting group), the
    phase it starts training in (None: never) and its rate scale."""

    group: str
    kind: str
    phase: int | None
    scale: float


class Phase(NamedTuple):
    """One phase of an applied plan: from step ``start``, the optimizer ``tx`` (all phases share
    one state layout), the ``apply_fn`` (BatchNorm statistics fixed where the plan says, LoRA
    merged) and ``trainable``, a tree of bools like the params (None: everything trains)."""

    start: int
    tx: optax.GradientTransformation
    apply_fn: Callable
    trainable: Any


def _bn_modules(batch_stats) -> set[str]:
    return {p.rsplit("/", 1)[0] for p in tree_paths(batch_stats or {}) if "/" in p}


def _waiting(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """``inner``'s state layout, but zero updates and the state passed through unchanged: a
    group before its phase (its moments start fresh when the phase begins)."""

    def update(updates, state, params=None):
        del params
        return jax.tree.map(jnp.zeros_like, updates), state

    return optax.GradientTransformation(inner.init, update)


def _scale_tree(scales) -> optax.GradientTransformation:
    """Multiply every update by its leaf of ``scales`` (floats, like the params)."""

    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, s: u if s == 1 else u * s, updates, scales), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def _phase_schedule(learning_rate, start: int, steps: int | None, how: str):
    """The schedule of a group that starts training at step ``start`` (its optimizer counts
    from 0 there): ``continue``: the run's schedule from ``start`` on; ``restart``: the run's
    schedule from its beginning; ``rescale``: the run's whole schedule squeezed into the
    remaining ``steps - start`` steps (peak first, annealed by the end of the run)."""
    if not callable(learning_rate) or start == 0 or how == "restart":
        return learning_rate
    if how == "continue":
        return lambda count: learning_rate(count + start)
    if not steps:
        raise ValueError("phase_lr='rescale' needs steps= (the run's length)")
    factor = steps / (steps - start)
    return lambda count: learning_rate(jnp.floor(count * factor).astype(jnp.int32))


def _warmup(steps: int) -> optax.GradientTransformation:
    return optax.scale_by_schedule(lambda count: jnp.minimum(1.0, (count + 1.0) / steps))


class Applied:
    """A :class:`Plan` resolved on a model: per-parameter :class:`Role` s, one :class:`Phase`
    per phase, the starting ``variables`` and the optimizer ``tx`` (phase 0's; every phase's
    has the same state layout)."""

    def __init__(
        self,
        plan: Plan,
        model,
        variables: dict,
        groups: Sequence[str],
        starts: Sequence[int],
        tx,
        learning_rate,
        steps: int | None,
        grad_clip: float,
        apply_fn: Callable,
    ):
        self.plan, self.model, self.variables = plan, model, variables
        self.groups, self.starts, self.steps = list(groups), list(starts), steps
        params = variables["params"]
        batch_stats = variables.get("batch_stats", {})
        self.roles = self._roles(params, batch_stats)
        # optimizer groups: "phase{k}" (trains from phase k) and "frozen"
        labels = jax.tree.map(
            lambda r: FROZEN if r.phase is None else f"phase{r.phase}",
            self.roles,
        )
        present = set(jax.tree.leaves(labels))
        inners = {}
        for k, start in enumerate(self.starts):
            if f"phase{k}" not in present:
                continue
            if isinstance(tx, optax.GradientTransformation):
                inner = tx
            else:
                if learning_rate is None:
                    raise ValueError("Plan.apply: a tx factory needs learning_rate")
                inner = tx(_phase_schedule(learning_rate, start, steps, plan.phase_lr))
            warm = self._warmup_steps(k)
            inners[f"phase{k}"] = optax.chain(inner, _warmup(warm)) if warm else inner
        scales = jax.tree.map(lambda r: r.scale, self.roles)
        base_apply = apply_fn
        lora = plan.lora()
        if lora is not None:
            base_apply = lora.wrap(apply_fn)
        phases = []
        for p, start in enumerate(self.starts):
            groups_tx = {FROZEN: optax.set_to_zero()} if FROZEN in present else {}
            for name, inner in inners.items():
                groups_tx[name] = inner if int(name[5:]) <= p else _waiting(inner)
            out = optax.partition(groups_tx, labels)
            if any(s != 1 for s in jax.tree.leaves(scales)):
                out = optax.chain(out, _scale_tree(scales))
            if grad_clip:
                out = optax.chain(optax.clip_by_global_norm(grad_clip), out)
            trains = jax.tree.map(
                lambda r, p=p: r.phase is not None and r.phase <= p,
                self.roles,
            )
            trainable = None if all(jax.tree.leaves(trains)) else trains
            fixed = self._fixed_bn(p, batch_stats)
            fn = FrozenBatchNorm(base_apply, fixed) if fixed else base_apply
            phases.append(Phase(start, out, fn, trainable))
        self.phases: tuple[Phase, ...] = tuple(phases)
        self.tx = self.phases[0].tx
        self.apply_fn = self.phases[0].apply_fn

    # -- roles --------------------------------------------------------------------------------
    def _group_scale(self, path: str) -> float:
        for pattern, s in self.plan.lr_scales:
            if match(pattern, path):
                return float(s)
        if any(match(h, path) for h in self.plan.head):
            return float(self.plan.head_lr)
        g = path.split("/", 1)[0]
        if g in self.groups:
            dist = len(self.groups) - 1 - self.groups.index(g)
        else:  # a top-level name the model did not report (e.g. added after init)
            dist = 0
        return float(self.plan.layer_decay**dist)

    def _bn_param_paths(self, params, batch_stats) -> set[str]:
        mods = _bn_modules(batch_stats)
        return {p for p in tree_paths(params) if "/" in p and p.rsplit("/", 1)[0] in mods}

    def _base_mode(self, path: str) -> str:
        plan = self.plan
        if any(match(h, path) for h in plan.head):
            return "train"
        for pattern, mode in plan.rules:
            if match(pattern, path):
                return mode
        return plan.backbone

    def _roles(self, params, batch_stats):
        plan = self.plan
        bn_params = self._bn_param_paths(params, batch_stats)
        backbone = [g for g in self.groups if not any(match(h, g) for h in plan.head)]
        unfreeze = plan._unfreeze_patterns(backbone) if plan.phases > 1 else []
        bn_affine = plan.bn_affine if plan.bn_affine is not None else plan.backbone == "lora"

        def base(path, _):  # the group's mode; BatchNorm statistics follow it
            group = path.split("/", 1)[0]
            scale = self._group_scale(path)
            mode = self._base_mode(path)
            if path.rsplit("/", 1)[-1] in LORA_LEAVES:
                return Role(group, "lora", 0, scale * plan.lora_lr)
            if mode == "train":
                return Role(group, "train", 0, scale)
            if mode == "lora":  # not trained itself, but its layer changes through adapters
                return Role(group, "adapted", None, scale)
            for k, patterns in enumerate(unfreeze, start=1):
                if any(match(q, path) for q in patterns):
                    return Role(group, "train", k, scale)
            return Role(group, "frozen", None, scale)

        def role(path, r: Role) -> Role:  # + BatchNorm affine trained from the start
            if bn_affine and path in bn_params and r.phase != 0:
                return Role(r.group, "bn_affine", 0, r.scale)
            return r

        self.base_roles = map_with_path(base, params)
        return map_with_path(role, self.base_roles)

    def _warmup_steps(self, k: int) -> int:
        w = self.plan.warmup
        if k == 0 or not w:
            return 0
        if w >= 1:
            return int(w)
        end = self.starts[k + 1] if k + 1 < len(self.starts) else self.steps
        if end is None:
            raise ValueError("a warm-up given as a fraction of its phase needs steps=")
        return max(1, int(round(w * (end - self.starts[k]))))

    def _fixed_bn(self, p: int, batch_stats) -> frozenset:
        """BatchNorm modules whose statistics are fixed in phase ``p``."""
        if not batch_stats or self.plan.bn_stats == "batch":
            return frozenset()
        if self.plan.bn_stats == "fixed":
            return frozenset(tuple(m.split("/")) for m in _bn_modules(batch_stats))

        def trains(r: Role) -> str:  # a BatchNorm follows its group, not its affine's role
            on = r.kind == "adapted" or (r.kind == "train" and r.phase is not None and r.phase <= p)
            return TRAINABLE if on else FROZEN

        labels = jax.tree.map(trains, self.base_roles)
        return frozen_bn_modules(labels, batch_stats)

    # -- use ----------------------------------------------------------------------------------
    def phase_at(self, step: int) -> int:
        """The phase in force at ``step`` (host side: which phase's step to call)."""
        return bisect.bisect_right(self.starts, int(step)) - 1

    def step(self, step_fn: Callable | None = None, phase: int | None = None) -> Callable:
        """``(state, batch) -> (state, sums)``: ``step_fn(state, batch, trainable=...)``
        (default :func:`jaxcnn.train.steps.train_step_fn`) with a phase's optimizer,
        ``apply_fn`` and trainable partition.

        ``phase=k``: phase ``k``'s step, for a loop that compiles one step per phase and picks
        it on the host (``phase_at(step)``): what the engine does. ``phase=None``: every phase
        in one function, the one in force at ``state.step`` picked on device by ``lax.switch``
        (one compilation). Every phase has the same state layout, so both give the same
        updates; but XLA:CPU (jax 0.10) runs convolution gradients inside a conditional far
        off its fast path (kernel gradients 50-300x, input gradients 2-20x slower:
        ``experiments/benchmark_conv.py --impl cond``), so on CPU the per-phase steps are the fast
        choice for a convolutional network."""
        if step_fn is None:
            from jaxcnn.train.steps import train_step_fn

            step_fn = train_step_fn

        def branch(ph: Phase):
            def run(state, batch):
                inner = state.replace(apply_fn=ph.apply_fn, tx=ph.tx)
                new, sums = step_fn(inner, batch, trainable=ph.trainable)
                return new.replace(apply_fn=state.apply_fn, tx=state.tx), sums

            return run

        if phase is not None:
            return branch(self.phases[range(len(self.phases))[phase]])
        if len(self.phases) == 1:
            return branch(self.phases[0])
        starts = jnp.asarray(self.starts, jnp.int32)
        branches = [branch(ph) for ph in self.phases]

        def phased(state, batch):
            k = jnp.sum(state.step >= starts) - 1  # the phase in force at this step
            return jax.lax.switch(k, branches, state, batch)

        return phased

    def init_state(
        self, seed: int = 0, dynamic_scale: Any = None, copy: bool = True, ema: bool = False
    ):
        """A ``TrainState`` at the plan's starting variables (copied when ``copy``: the train
        step donates its state) with phase 0's optimizer and ``apply_fn`` (and a weight EMA
        starting at them when ``ema``)."""
        from jaxcnn.train.state import create_train_state

        variables = self.variables
        if copy:
            variables = jax.tree.map(jnp.array, dict(variables))
        state = create_train_state(
            self.model,
            self.tx,
            (),
            seed=seed,
            variables=variables,
            dynamic_scale=dynamic_scale,
            ema=ema,
        )
        return state.replace(apply_fn=self.apply_fn)

    def trainable_params(self, phase: int = -1) -> int:
        """Parameters trained in ``phase`` (default the last)."""
        k = range(len(self.phases))[phase]
        return sum(
            math.prod(x.shape)
            for x, r in zip(jax.tree.leaves(self.variables["params"]), self._role_leaves())
            if r.phase is not None and r.phase <= k
        )

    def optimizer_state_bytes(self, phase: int = 0) -> int:
        """Bytes of the optimizer state (``jax.eval_shape``: nothing is allocated)."""
        shapes = jax.eval_shape(self.phases[phase].tx.init, self.variables["params"])
        return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(shapes))

    def _role_leaves(self) -> list[Role]:
        return jax.tree.leaves(self.roles)

    def rows(self) -> list[dict]:
        """One dict per group (forward order): params, trainable (last phase), mode, rate
        scale, the phase and step it starts training, BatchNorm statistics per phase."""
        flat = traverse_util.flatten_dict(dict(self.variables["params"]), sep="/")
        roles = dict(zip(tree_paths(self.variables["params"]), self._role_leaves()))
        batch_stats = self.variables.get("batch_stats", {})
        bn_mods = _bn_modules(batch_stats)
        fixed = [self._fixed_bn(p, batch_stats) for p in range(len(self.phases))]
        out = []
        order = list(self.groups) + sorted({p.split("/", 1)[0] for p in flat} - set(self.groups))
        for g in order:
            paths = [p for p in flat if p.split("/", 1)[0] == g]
            if not paths:
                continue
            rs = [roles[p] for p in paths]
            kinds = {r.kind for r in rs}
            n = sum(math.prod(flat[p].shape) for p in paths)
            n_lora = sum(math.prod(flat[p].shape) for p in paths if roles[p].kind == "lora")
            trained = sum(math.prod(flat[p].shape) for p in paths if roles[p].phase is not None)
            phases = sorted({r.phase for r in rs if r.phase is not None})
            if kinds == {"train"} and phases and phases[0] > 0:
                mode = "frozen, then train"
            elif kinds == {"train"}:
                mode = "train"
            elif "train" in kinds:
                mode = "train (part)"
            elif "lora" in kinds:
                mode = f"lora r={self.plan.lora_rank}"
            else:
                mode = "frozen"
            if "bn_affine" in kinds:
                mode += " + bn affine"
            if self.plan.reset_head and any(match(h, g) for h in self.plan.head):
                mode += " (new)"
            mods = {m for m in bn_mods if m.split("/", 1)[0] == g}
            bn = []
            for p in range(len(self.phases)):
                state = (
                    "fixed"
                    if mods and all(tuple(m.split("/")) in fixed[p] for m in mods)
                    else "batch"
                    if mods and not any(tuple(m.split("/")) in fixed[p] for m in mods)
                    else "mixed"
                    if mods
                    else "-"
                )
                bn.append(state)
            scales = sorted({r.scale for r in rs if r.phase is not None})
            out.append(
                {
                    "group": g,
                    "params": n - n_lora,
                    "trainable": trained,
                    "mode": mode,
                    "lr_scale": scales,
                    "phase": phases[0] if phases else None,
                    "from_step": self.starts[phases[0]] if phases else None,
                    "bn_stats": bn,
                }
            )
        return out

    def table(self) -> str:
        """The plan as a table, one row per group: params, trainable, mode, rate scale, from
        which phase/step it trains, BatchNorm statistics in each phase; then the totals and
        the optimizer-state size."""
        rows = self.rows()
        head = ["group", "params", "trainable", "mode", "lr scale", "trains from", "BN stats"]
        body = []
        for r in rows:
            scale = ", ".join(f"{s:.3g}" for s in r["lr_scale"]) or "-"
            start = "-" if r["phase"] is None else f"phase {r['phase']} (step {r['from_step']})"
            bn = r["bn_stats"]
            bn_text = bn[0] if len(set(bn)) == 1 else " > ".join(bn)
            body.append(
                [
                    r["group"],
                    f"{r['params']:,}",
                    f"{r['trainable']:,}",
                    r["mode"],
                    scale,
                    start,
                    bn_text,
                ]
            )
        widths = [max(len(x) for x in col) for col in zip(head, *body)]
        lines = [f"transfer plan {self.plan.label!r}:"]
        for row in [head, *body]:
            lines.append("  ".join(x.ljust(w) for x, w in zip(row, widths)).rstrip())
        total = sum(r["params"] for r in rows)
        trained = self.trainable_params()
        n_lora = sum(
            math.prod(x.shape)
            for x, r in zip(jax.tree.leaves(self.variables["params"]), self._role_leaves())
            if r.kind == "lora"
        )
        lines.append(
            f"trainable {trained:,} of {total + n_lora:,}"
            + (f" (LoRA adapters {n_lora:,})" if n_lora else "")
            + f"; optimizer state {self.optimizer_state_bytes() / 2**20:.2f} MiB"
            + (f"; phases start at steps {self.starts}" if len(self.starts) > 1 else "")
        )
        return "\n".join(lines)
