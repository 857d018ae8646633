"""One plan for transfer learning: what trains, how fast, from which step, and how BatchNorm
behaves, as one object usable from Python and from a config string.

A :class:`Plan` speaks of *groups*: a model's stages (its top-level parameter names, ``stem``
first, ``head`` last; :func:`~jaxcnn.transfer.stages`). Per group it fixes

- the **mode**: ``train``, ``frozen`` or ``lora`` (rank-r adapters on its kernels, the base
  weights frozen; :class:`~jaxcnn.transfer.LoRA`). The head always trains and is freshly
  initialised unless ``reset_head=False``;
- the **learning-rate scale**: ``layer_decay ** (groups from the head)`` (layer-wise decay) or
  explicit ``lr_scales``; LoRA adapters get ``lora_lr`` times their group's scale;
- the **phase** it starts training in (gradual unfreezing): phases are counted in steps; a
  group unfrozen in phase ``k`` starts with fresh optimizer moments, at its rate scale, on the
  run's schedule rescaled to the steps left (``phase_lr``: or continued, or restarted), after
  an optional linear warm-up of ``warmup`` steps;
- its **BatchNorm** handling: statistics *fixed* (running averages, also in training; nothing
  updated) or *batch* (batch statistics in training, running averages updated), and whether
  the affine scale/bias train. ``bn_stats="auto"``: a group's statistics are fixed while it is
  frozen (or waiting for its phase) and batch statistics while it trains or is LoRA-adapted
  (its convolutions change, so its statistics must follow them).

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
from typing import Any

import flax.linen as nn
import jax
import optax

from jaxcnn.transfer.applied import Applied
from jaxcnn.transfer.heads import replace_head
from jaxcnn.transfer.labels import stages
from jaxcnn.transfer.lora import LoRA

__all__ = ["BN_STATS", "MODES", "PRESETS", "Plan"]

MODES = ("train", "frozen", "lora")
BN_STATS = ("auto", "fixed", "batch")
PHASE_LR = ("continue", "rescale", "restart")
# gradual unfreezing's default: phases evenly spaced over the first fifth of the run, so that
# everything trains for most of it (the short-budget measurements of docs/transfer.md)
UNFREEZE_BY = 0.2

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
        "last phase (default 3 phases: the backbone unfrozen over the first fifth of the run); "
        "each newly unfrozen group with fresh moments on the run's schedule rescaled to the "
        "steps left; the new head at 10x the rate",
        {"backbone": "frozen", "phases": 3, "head_lr": 10.0},
        "phases",
    ),
    "lora": (
        "rank-r LoRA on every backbone kernel (default rank 8, alpha = 2 x rank, adapters at "
        "5x the rate), BatchNorm affine and new head trained, BatchNorm statistics following "
        "the adapted convolutions",
        {"backbone": "lora", "lora_rank": 8, "lora_lr": 5.0},
        "lora_rank",
    ),
}

# ``,key=value`` option names of a spec -> Plan field
_OPTIONS = {
    "decay": "layer_decay",
    "warmup": "warmup",
    "phase_lr": "phase_lr",
    "at": "unfreeze_at",
    "phases": "phases",
    "bn_stats": "bn_stats",
    "bn_affine": "bn_affine",
    "head_lr": "head_lr",
    "rank": "lora_rank",
    "alpha": "lora_alpha",
    "lr": "lora_lr",
    "reset_head": "reset_head",
}


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
    if field in ("bn_stats", "phase_lr"):
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
      head_lr: the head's rate multiplier (on top of the decay's 1): a new head is far from
        its solution, the pretrained layers near theirs.
      lr_scales: ``((pattern, scale), ...)`` rate scales by parameter pattern (first match
        wins) instead of the decay's.
      phases: gradual unfreezing in this many phases (1: none). Phase 0 trains what
        ``backbone``/``rules`` say (the head); phase ``k`` adds ``unfreeze[k-1]``.
      unfreeze_at: starts of phases 1.. (a value < 1 is a fraction of the run's steps, else a
        step); default evenly spaced up to a fifth of the run (``0.2 * k / (phases - 1)``).
      unfreeze: patterns each phase 1.. adds; default one group per phase back from the head,
        and every group in the last phase.
      warmup: linear warm-up of a group unfrozen in a phase ``k >= 1``: steps, or (< 1) a
        fraction of its phase's length.
      phase_lr: the schedule of a group unfrozen at step ``s`` (when ``apply`` is given a
        schedule): ``continue`` (the run's schedule from ``s``), ``rescale`` (the run's whole
        schedule squeezed into the steps left: it starts at the peak and anneals by the end)
        or ``restart`` (the run's schedule from its beginning, not annealed by the end).
      bn_stats: ``auto`` (fixed while the group is frozen or waiting for its phase, batch
        statistics while it trains or is LoRA-adapted),
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
    head_lr: float = 1.0
    lr_scales: tuple[tuple[str, float], ...] = ()
    phases: int = 1
    unfreeze_at: tuple[float, ...] = ()
    unfreeze: tuple[tuple[str, ...], ...] = ()
    warmup: float = 0.0
    phase_lr: str = "rescale"
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
        if self.phase_lr not in PHASE_LR:
            raise ValueError(f"Plan phase_lr must be one of {PHASE_LR}, got {self.phase_lr!r}")
        if self.warmup < 0:
            raise ValueError(f"Plan warmup must be >= 0, got {self.warmup}")
        if self.lora_rank < 1:
            raise ValueError(f"Plan lora_rank must be >= 1, got {self.lora_rank}")
        if self.head_lr <= 0:
            raise ValueError(f"Plan head_lr must be > 0, got {self.head_lr}")
        if self.lora_lr <= 0:
            raise ValueError(f"Plan lora_lr must be > 0, got {self.lora_lr}")

    # -- building ---------------------------------------------------------------------------
    @classmethod
    def parse(cls, spec: "str | Plan") -> "Plan":
        """A plan from ``"preset[:arg][,key=value...]"``: e.g. ``"linear_probe"``,
        ``"finetune_lwd:0.7"``, ``"gradual:4,warmup=10"``, ``"lora:8,bn_affine=false"``.
        Options: ``decay``, ``warmup``, ``at`` (phase starts, ``/``-separated), ``phases``,
        ``bn_stats`` (auto|fixed|batch), ``bn_affine``, ``head_lr`` (the head's rate
        multiplier), ``rank``, ``alpha``, ``lr`` (LoRA rate multiplier), ``reset_head``.
        Raises ``ValueError`` naming what is wrong."""
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
        n = self.phases - 1  # default: the last phase begins at UNFREEZE_BY of the run
        at = self.unfreeze_at or tuple(UNFREEZE_BY * k / n for k in range(1, n + 1))
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
