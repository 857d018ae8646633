"""One plan for transfer learning: what trains, how fast, from which step, and how BatchNorm
behaves, as one object usable from Python and from a config string.

A :class:`Plan` speaks of *groups*: a model's stages (its top-level parameter names, ``stem``
first, ``head`` last; :func:`~jaxcnn.transfer.stages`). Per group it fixes

- the **mode**: ``train``, ``frozen`` or ``lora`` (rank-r adapters on its kernels, the base
  weights frozen; :class:`~jaxcnn.transfer.LoRA`). The head always trains and is freshly
  initialised unless ``reset_head=False``;
- the **learning-rate scale**: ``layer_decay ** (groups from the head)`` (layer-wise decay) or
  explicit ``lr_scales``; LoRA adapters get ``lora_lr`` times their group's scale;
- the **phase** it starts training in (gradual unfreezing): phases are counted in steps, a
  group unfrozen in phase ``k`` starts with fresh optimizer moments, at its layer-wise rate on the
  run's schedule (not a restarted one) after a linear warm-up of ``warmup`` steps;
- its **BatchNorm** handling: statistics *fixed* (running averages, also in training; nothing
  updated) or *batch* (batch statistics in training, running averages updated), and whether
  the affine scale/bias train. ``bn_stats="auto"``: a group's statistics are fixed while it does
  not train (frozen, LoRA, waiting for its phase) and batch statistics once it does.

"Frozen means free": a frozen parameter gets no optimizer state (``optax.set_to_zero`` under
``optax.partition``) and no gradient (the train step differentiates only the trainable
partition: :func:`jaxcnn.train.steps.train_step_fn`'s ``trainable``). Groups *waiting* for a later
phase are the exception: all phases run in one compiled step over one optimizer-state layout,
so a waiting group holds its (zero) optimizer state from the start; it is not differentiated
before its phase.

    plan = Plan.parse("finetune_lwd:0.7")   # or Plan(backbone="frozen"), PRESETS
    applied = plan.apply(model, variables, optax.adam, schedule, input_shape=(1, 32, 32, 3),
                         steps=1000)
    print(applied.table())
    state = applied.init_state()
    step = jax.jit(applied.step(), donate_argnums=0)  # picks the phase from state.step

Presets (:data:`PRESETS`), each taking ``,key=value`` options (:meth:`Plan.parse`):
``linear_probe``, ``finetune``, ``finetune_lwd[:decay]``, ``gradual[:phases]``, ``lora[:rank]``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from jaxcnn.transfer.freeze import FrozenBatchNorm, frozen_bn_modules
from jaxcnn.transfer.heads import replace_head
from jaxcnn.transfer.labels import FROZEN, TRAINABLE, match, stages
from jaxcnn.transfer.lora import LORA_LEAVES, LoRA
from jaxcnn.utils import map_with_path, tree_paths

__all__ = ["Applied", "PRESETS", "Phase", "Plan", "Role"]

MODES = ("train", "frozen", "lora")
BN_STATS = ("auto", "fixed", "batch")

# name -> (what it does, Plan keyword arguments, the name of its ":arg" keyword)
PRESETS: dict[str, tuple[str, dict, str | None]] = {
    "linear_probe": (
        "frozen backbone (BatchNorm statistics fixed), new head",
        {"backbone": "frozen"},
        None,
    ),
    "finetune": ("everything trains at one rate, new head", {"backbone": "train"}, None),
    "finetune_lwd": (
        "everything trains, rate x decay^(groups from the head) (default decay 0.7)",
        {"backbone": "train", "layer_decay": 0.7},
        "layer_decay",
    ),
    "gradual": (
        "head first, then one more group per phase back from the head, everything in the "
        "last phase (default 3 phases, evenly spaced over the run); layer-wise rates (0.7), "
        "fresh moments and a warm-up (a quarter of its phase) for each newly unfrozen group",
        {"backbone": "frozen", "phases": 3, "layer_decay": 0.7, "warmup": 0.25},
        "phases",
    ),
    "lora": (
        "rank-r LoRA on every backbone kernel (default rank 8, alpha = 2 x rank), BatchNorm "
        "affine and new head trained, BatchNorm statistics fixed",
        {"backbone": "lora", "lora_rank": 8},
        "lora_rank",
    ),
}

# ``,key=value`` option names of a spec -> Plan field
_OPTIONS = {
    "decay": "layer_decay",
    "warmup": "warmup",
    "at": "unfreeze_at",
    "phases": "phases",
    "bn_stats": "bn_stats",
    "bn_affine": "bn_affine",
    "rank": "lora_rank",
    "alpha": "lora_alpha",
    "lr": "lora_lr",
    "reset_head": "reset_head",
}


@dataclasses.dataclass(frozen=True)
class Role:
    """What a plan does with one parameter (a pytree leaf): its group, its kind (``train``,
    ``frozen``, ``lora`` for an adapter, ``bn_affine`` for a BatchNorm scale/bias trained in a
    frozen, LoRA or waiting group), the phase it starts training in (None: never) and its rate
    scale."""

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


def _bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("true", "1", "yes", "on"):
        return True
    if t in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _number(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise ValueError(f"expected a finite number, got {text!r}")
    return v


def _parse_option(field: str, text: str):
    if field in ("bn_affine", "reset_head"):
        return _bool(text)
    if field == "bn_stats":
        return text.strip()
    if field in ("phases", "lora_rank"):
        v = _number(text)
        if not v.is_integer():
            raise ValueError(f"expected a whole number, got {text!r}")
        return int(v)
    if field == "unfreeze_at":
        return tuple(_number(t) for t in text.split("/") if t.strip())
    return _number(text)


@dataclasses.dataclass(frozen=True)
class Plan:
    """A transfer-learning plan (see the module docstring). Every field has a default that is
    plain fine-tuning; :meth:`parse` builds one from a preset spec.

    Attributes:
      backbone: the mode of every group but the head: ``train``, ``frozen`` or ``lora``.
      head: patterns of the head (always trained).
      reset_head: initialise the head afresh (:func:`~jaxcnn.transfer.replace_head`).
      layer_decay: rate scale ``layer_decay ** (groups from the head)``.
      lr_scales: ``((pattern, scale), ...)`` rate scales by parameter pattern (first match
        wins) instead of the decay's.
      phases: gradual unfreezing in this many phases (1: none). Phase 0 trains what
        ``backbone``/``rules`` say (the head); phase ``k`` adds ``unfreeze[k-1]``.
      unfreeze_at: starts of phases 1.. (a value < 1 is a fraction of the run's steps, else a
        step); default evenly spaced ``k / phases``.
      unfreeze: patterns each phase 1.. adds; default one group per phase back from the head,
        and every group in the last phase.
      warmup: linear warm-up of a group unfrozen in a phase ``k >= 1``: steps, or (< 1) a
        fraction of its phase's length.
      bn_stats: ``auto`` (fixed while the group does not train, batch statistics once it does),
        ``fixed`` (running averages everywhere, also for trained groups) or ``batch`` (batch
        statistics everywhere, also in frozen groups: running averages adapt to the new data).
      bn_affine: train the BatchNorm scale/bias of frozen and LoRA groups (None: True for
        ``lora``, False otherwise). Trained groups always train theirs.
      lora_rank, lora_alpha, lora_lr: LoRA's rank, alpha (None: 2 x rank) and rate multiplier.
      rules: ``((pattern, mode), ...)`` per-parameter modes before the group's (first match
        wins), e.g. ``(("stem", "frozen"),)`` to keep the stem frozen while fine-tuning.
      name: how tables and reports name the plan (``parse`` keeps the spec).
    """

    backbone: str = "train"
    head: tuple[str, ...] = ("head",)
    reset_head: bool = True
    layer_decay: float = 1.0
    lr_scales: tuple[tuple[str, float], ...] = ()
    phases: int = 1
    unfreeze_at: tuple[float, ...] = ()
    unfreeze: tuple[tuple[str, ...], ...] = ()
    warmup: float = 0.0
    bn_stats: str = "auto"
    bn_affine: bool | None = None
    lora_rank: int = 8
    lora_alpha: float | None = None
    lora_lr: float = 1.0
    rules: tuple[tuple[str, str], ...] = ()
    name: str = ""

    def __post_init__(self):
        for f in ("head", "lr_scales", "unfreeze_at", "unfreeze", "rules"):
            v = getattr(self, f)
            if isinstance(v, Mapping):
                v = tuple(v.items())
            if f == "head" and isinstance(v, str):
                v = (v,)
            if f == "unfreeze":
                v = tuple((p,) if isinstance(p, str) else tuple(p) for p in v)
            object.__setattr__(self, f, tuple(v))
        if self.backbone not in MODES:
            raise ValueError(f"Plan backbone must be one of {MODES}, got {self.backbone!r}")
        for pattern, mode in self.rules:
            if mode not in ("train", "frozen"):
                raise ValueError(
                    f"Plan rule {pattern!r}: mode must be train or frozen, got {mode!r}"
                )
        if self.bn_stats not in BN_STATS:
            raise ValueError(f"Plan bn_stats must be one of {BN_STATS}, got {self.bn_stats!r}")
        if not 0 < self.layer_decay <= 1:
            raise ValueError(f"Plan layer_decay must be in (0, 1], got {self.layer_decay}")
        if self.phases < 1:
            raise ValueError(f"Plan phases must be >= 1, got {self.phases}")
        if self.phases > 1 and self.backbone != "frozen" and not self.rules:
            raise ValueError(
                "gradual unfreezing (phases > 1) needs something frozen to unfreeze: "
                f"backbone='frozen', got {self.backbone!r}"
            )
        if self.unfreeze_at and len(self.unfreeze_at) != self.phases - 1:
            raise ValueError(
                f"Plan unfreeze_at gives {len(self.unfreeze_at)} start(s) for "
                f"{self.phases - 1} phase(s) after the first"
            )
        if list(self.unfreeze_at) != sorted(set(self.unfreeze_at)) or any(
            a <= 0 for a in self.unfreeze_at
        ):
            raise ValueError(f"Plan unfreeze_at must be > 0 and increase, got {self.unfreeze_at}")
        if self.unfreeze and len(self.unfreeze) != self.phases - 1:
            raise ValueError(
                f"Plan unfreeze names {len(self.unfreeze)} phase(s); phases={self.phases}"
            )
        if self.warmup < 0:
            raise ValueError(f"Plan warmup must be >= 0, got {self.warmup}")
        if self.lora_rank < 1:
            raise ValueError(f"Plan lora_rank must be >= 1, got {self.lora_rank}")
        if self.lora_lr <= 0:
            raise ValueError(f"Plan lora_lr must be > 0, got {self.lora_lr}")

    # -- building ---------------------------------------------------------------------------
    @classmethod
    def parse(cls, spec: "str | Plan") -> "Plan":
        """A plan from ``"preset[:arg][,key=value...]"``: e.g. ``"linear_probe"``,
        ``"finetune_lwd:0.7"``, ``"gradual:4,warmup=10"``, ``"lora:8,bn_affine=false"``.
        Options: ``decay``, ``warmup``, ``at`` (phase starts, ``/``-separated), ``phases``,
        ``bn_stats`` (auto|fixed|batch), ``bn_affine``, ``rank``, ``alpha``, ``lr`` (LoRA rate
        multiplier), ``reset_head``. Raises ``ValueError`` naming what is wrong."""
        if isinstance(spec, Plan):
            return spec
        text = str(spec).strip()
        if not text:
            raise ValueError("an empty transfer plan spec")
        head, *opts = [p.strip() for p in text.split(",")]
        name, _, arg = head.partition(":")
        if name not in PRESETS:
            raise ValueError(
                f"unknown transfer preset {name!r}; expected one of {', '.join(PRESETS)}"
            )
        _, kwargs, arg_field = PRESETS[name]
        kwargs = dict(kwargs)
        try:
            if arg:
                if arg_field is None:
                    raise ValueError(f"preset {name!r} takes no ':' argument")
                kwargs[arg_field] = _parse_option(arg_field, arg)
            for opt in opts:
                key, eq, value = opt.partition("=")
                key = key.strip()
                if not eq or key not in _OPTIONS:
                    raise ValueError(
                        f"option {opt!r}: expected key=value with key one of {', '.join(_OPTIONS)}"
                    )
                kwargs[_OPTIONS[key]] = _parse_option(_OPTIONS[key], value)
            return cls(**kwargs, name=text)
        except (TypeError, ValueError) as e:
            raise ValueError(f"transfer plan {text!r}: {e}") from None

    @property
    def label(self) -> str:
        """The plan's name (its spec when parsed) or a short description."""
        if self.name:
            return self.name
        out = self.backbone
        if self.phases > 1:
            out = f"gradual:{self.phases}"
        if self.layer_decay != 1:
            out += f", decay {self.layer_decay:g}"
        return out

    def lora(self) -> LoRA | None:
        """The plan's :class:`~jaxcnn.transfer.LoRA` (on every kernel but the head's), or None."""
        if self.backbone != "lora":
            return None
        alpha = self.lora_alpha if self.lora_alpha is not None else 2.0 * self.lora_rank
        return LoRA(targets=(".*",), rank=self.lora_rank, alpha=alpha, exclude=self.head)

    def prepare(self, variables: dict, model: nn.Module, input_shape: Sequence[int], seed=0):
        """``variables`` with the head reset (``reset_head``) and LoRA adapters added: the
        starting variables of a run under this plan."""
        if self.reset_head:
            variables = replace_head(variables, model, input_shape, reinit=self.head, seed=seed)
        lora = self.lora()
        if lora is not None:
            params = lora.init(jax.random.fold_in(jax.random.key(seed), 7), variables["params"])
            variables = {**variables, "params": params}
        return variables

    def apply(
        self,
        model: nn.Module,
        variables: dict,
        tx: "optax.GradientTransformation | Callable[[Any], optax.GradientTransformation]",
        learning_rate: Any = None,
        *,
        input_shape: Sequence[int],
        steps: int | None = None,
        seed: int = 0,
        grad_clip: float = 0.0,
        apply_fn: Callable | None = None,
        prepare: bool = True,
        groups: Sequence[str] | None = None,
    ) -> "Applied":
        """The plan on ``model`` and its ``variables`` (pretrained, any head): returns an
        :class:`Applied` holding the starting variables (:meth:`prepare`, unless
        ``prepare=False``: then ``variables`` may be ``jax.ShapeDtypeStruct`` trees), the
        optimizer of each phase and the train step.

        ``tx``: a function ``learning rate (float or schedule) -> optax transformation`` (e.g.
        ``optax.adam``) called with ``learning_rate`` once per phase group (a group unfrozen
        at step ``s`` gets the schedule shifted by ``s``: it continues the run's schedule), or
        one transformation for every group (its own schedule then restarts when a group
        starts). ``steps``: the run's length (needed for phase starts given as fractions).
        ``grad_clip``: clip all gradients to this global norm first (0: off).
        ``groups``: the groups in forward order (default :func:`~jaxcnn.transfer.stages`).
        """
        if prepare:
            variables = self.prepare(variables, model, input_shape, seed)
        names = list(groups) if groups is not None else stages(model, input_shape)
        starts = self._starts(steps)
        return Applied(
            self,
            model,
            variables,
            names,
            starts,
            tx,
            learning_rate,
            steps,
            grad_clip,
            apply_fn or model.apply,
        )

    def table(self, model, variables, input_shape, steps=None, seed: int = 0) -> str:
        """:meth:`Applied.table` of this plan on ``model`` (head reset, adapters added)."""
        return self.apply(
            model, variables, optax.identity(), input_shape=input_shape, steps=steps, seed=seed
        ).table()

    # -- resolution ---------------------------------------------------------------------------
    def _starts(self, steps: int | None) -> list[int]:
        if self.phases == 1:
            return [0]
        at = self.unfreeze_at or tuple(k / self.phases for k in range(1, self.phases))
        if any(a < 1 for a in at) and not steps:
            raise ValueError(
                f"plan {self.label!r}: phase starts {list(at)} are fractions of the run; "
                f"give steps= (the run's length)"
            )
        out = [0] + [int(round(a * steps)) if a < 1 else int(a) for a in at]  # type: ignore[operator]
        if any(b <= a for a, b in zip(out, out[1:])):
            raise ValueError(f"plan {self.label!r}: phase starts {out} do not increase")
        if steps and out[-1] >= steps:
            raise ValueError(
                f"plan {self.label!r}: phase starts {out} reach past the run's {steps} steps"
            )
        return out

    def _unfreeze_patterns(self, backbone_groups: Sequence[str]) -> list[tuple[str, ...]]:
        if self.unfreeze:
            return list(self.unfreeze)
        n = self.phases - 1
        out: list[tuple[str, ...]] = [
            (re.escape(g),) for g in list(reversed(backbone_groups))[: n - 1]
        ]
        return out + [(".*",)]


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


def _shifted(learning_rate, start: int):
    if not callable(learning_rate) or start == 0:
        return learning_rate
    return lambda count: learning_rate(count + start)


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
                inner = tx(_shifted(learning_rate, start))
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
            for k, patterns in enumerate(unfreeze, start=1):
                if mode == "frozen" and any(match(q, path) for q in patterns):
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
            on = r.kind == "train" and r.phase is not None and r.phase <= p
            return TRAINABLE if on else FROZEN

        labels = jax.tree.map(trains, self.base_roles)
        return frozen_bn_modules(labels, batch_stats)

    # -- use ----------------------------------------------------------------------------------
    def step(self, step_fn: Callable | None = None) -> Callable:
        """``(state, batch) -> (state, sums)``: ``step_fn(state, batch, trainable=...)``
        (default :func:`jaxcnn.train.steps.train_step_fn`) under the phase in force at
        ``state.step`` (``lax.switch`` on device: one compiled step for all phases), with the
        phase's optimizer, ``apply_fn`` and trainable partition."""
        if step_fn is None:
            from jaxcnn.train.steps import train_step_fn

            step_fn = train_step_fn

        def branch(ph: Phase):
            def run(state, batch):
                inner = state.replace(apply_fn=ph.apply_fn, tx=ph.tx)
                new, sums = step_fn(inner, batch, trainable=ph.trainable)
                return new.replace(apply_fn=state.apply_fn, tx=state.tx), sums

            return run

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
