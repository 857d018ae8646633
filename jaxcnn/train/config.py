"""The training config schema: every key the engine and its tasks read, with its type, default,
allowed range and meaning, checked before any data is read or anything is compiled.

A config is a flat mapping (an ``ml_collections.ConfigDict``, a dict, or keyword overrides) of
schema keys; ``model_kwargs`` is the one nested dict (it goes to ``create_model``). Each task adds
its own keys to the common ones (:data:`COMMON`): :func:`schema` joins them.

- :func:`validate` returns a plain dict with every key (defaults filled in) or raises
  :class:`ConfigError` with a one-line message: an unknown key names the closest known one,
  a value of the wrong type or out of range says what was expected and what was received.
- :func:`default_config` is a ``ConfigDict`` holding every key at its default, the base of the
  config files in ``experiments/configs/``, so any key can be overridden on the command line.
- :func:`parse_overrides` turns ``--config.key=value`` arguments into typed values.
- :func:`fingerprint` is the part of a config that must not change when a run is resumed.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "COMMON",
    "LOOP_KEYS",
    "OPTIMIZER_FIELDS",
    "ConfigError",
    "Field",
    "default_config",
    "describe",
    "diff_fingerprints",
    "fingerprint",
    "parse_overrides",
    "schema",
    "validate",
]


class ConfigError(ValueError):
    """A config that cannot run; the message is one line, meant for the user as it is."""


# -- checks: each returns None when the value is fine, else what was expected -----------------
def _at_least(lo: float) -> Callable[[Any], str | None]:
    return lambda v: None if v >= lo else f">= {lo}"


def _positive_finite(v) -> str | None:
    return None if math.isfinite(v) and v > 0 else "a finite number > 0"


def _finite_at_least(lo: float) -> Callable[[Any], str | None]:
    return lambda v: None if math.isfinite(v) and v >= lo else f"a finite number >= {lo}"


def _in_unit(v) -> str | None:
    return None if 0.0 <= v < 1.0 else "in [0, 1)"


def _fraction_or_count(v) -> str | None:
    """A fraction in (0, 1) or a whole count >= 1 (0 disables)."""
    if v == 0 or 0 < v < 1 or (v >= 1 and float(v).is_integer()):
        return None
    return "0 (none), a fraction in (0, 1) or a whole count >= 1"


def _one_of(*choices: str) -> Callable[[Any], str | None]:
    return lambda v: None if v in choices else "one of " + ", ".join(repr(c) for c in choices)


def _size(v) -> str | None:
    if len(v) == 0 or (len(v) == 2 and all(isinstance(s, int) and s >= 1 for s in v)):
        return None
    return "() (the model's default) or (height, width) with sides >= 1"


@dataclasses.dataclass(frozen=True)
class Field:
    """One config key.

    Attributes:
      default: its value when the config does not set it (also fixes its type).
      help: one line for ``describe``.
      check: ``value -> None | "what was expected"``, after the type check.
      type: the accepted Python type(s); derived from ``default`` when not given.
      resume_ok: may differ on ``--resume`` without ``allow_config_change`` (what changes
        neither the model, the data order nor the optimisation: logging, retention, epochs).
    """

    default: Any
    help: str
    check: Callable[[Any], str | None] | None = None
    type: Any = None
    resume_ok: bool = False

    @property
    def types(self) -> tuple:
        if self.type is not None:
            return self.type if isinstance(self.type, tuple) else (self.type,)
        t = type(self.default)
        if t is float:
            return (float, int)
        if t in (tuple, list):
            return (tuple, list)
        return (t,)


# Keys every task reads. Tasks add their own (data keys for classification, canvas keys for the
# segmentation experiment...).
COMMON: dict[str, Field] = {
    "description": Field("", "free text, shown in metrics.json", resume_ok=True),
    "model": Field("lenet5_modern", "registered model name (jaxcnn.models.list_models())"),
    "model_kwargs": Field({}, "keyword arguments for create_model (in_channels, ...)"),
    "init_from": Field(
        "", "start from these weights: a checkpoint or weight file (jaxcnn.interop.load_variables)"
    ),
    "seed": Field(0, "seed of initialisation, data order, augmentation and dropout"),
    "batch_size": Field(64, "global training batch size", _at_least(1)),
    "eval_batch_size": Field(256, "global evaluation batch size", _at_least(1), resume_ok=True),
    "epochs": Field(10, "training epochs", _at_least(1), resume_ok=True),
    "optimizer": Field(
        "adam",
        "adam, adamw, sgd (Nesterov momentum) or rmsprop",
        _one_of("adam", "adamw", "sgd", "rmsprop"),
    ),
    "learning_rate": Field(1e-3, "peak learning rate", _positive_finite),
    "schedule": Field(
        "cosine", "learning-rate schedule after warm-up", _one_of("constant", "cosine", "step")
    ),
    "warmup_epochs": Field(
        0.0, "linear warm-up, in epochs (fractions allowed)", _finite_at_least(0.0)
    ),
    "weight_decay": Field(0.0, "weight decay", _finite_at_least(0.0)),
    "grad_clip": Field(0.0, "clip gradients to this global norm (0: off)", _finite_at_least(0.0)),
    "eval_every_steps": Field(
        0,
        "evaluate (and checkpoint) every N steps; 0: at the end of every epoch",
        _at_least(0),
        resume_ok=True,
    ),
    "eval_test_every_epoch": Field(
        False,
        "also evaluate the test split at every evaluation (reported, never used for "
        "selection); the test split is always evaluated once at the end",
        resume_ok=True,
    ),
    "early_stopping_patience": Field(
        0,
        "stop after N evaluations without a better validation metric (0: off)",
        _at_least(0),
        resume_ok=True,
    ),
    "checkpoint_every_steps": Field(
        0,
        "also checkpoint every N steps between evaluations (0: only at evaluations)",
        _at_least(0),
        resume_ok=True,
    ),
    "keep_checkpoints": Field(2, "newest checkpoints kept", _at_least(1), resume_ok=True),
    "keep_best": Field(
        1, "best checkpoints (by the validation metric) kept besides", _at_least(0), resume_ok=True
    ),
    "log_every_steps": Field(
        20,
        "progress-bar refresh interval, in steps (also how often the non-finite guard is read)",
        _at_least(1),
        resume_ok=True,
    ),
    "progress": Field(True, "show a progress bar", resume_ok=True),
    "tensorboard": Field(
        False,
        "also write TensorBoard event files to <workdir>/tensorboard (needs the tensorboard "
        "extra: tensorboardX)",
        resume_ok=True,
    ),
    "on_nonfinite": Field(
        "halt",
        "non-finite loss or parameters: halt (stop with an error naming the step) or "
        "skip (drop the update; halt after max_nonfinite_skips in a row)",
        _one_of("halt", "skip"),
        resume_ok=True,
    ),
    "max_nonfinite_skips": Field(
        10,
        "with on_nonfinite='skip': halt after this many non-finite steps in a row",
        _at_least(1),
        resume_ok=True,
    ),
    "allow_config_change": Field(
        False,
        "on --resume, accept a config that differs from the checkpoint's in keys that "
        "change the run (model, data, optimiser...)",
        resume_ok=True,
    ),
    "num_devices": Field(0, "devices of the data axis (0: all)", _at_least(0)),
    "precision": Field(
        "float32",
        "computation dtype: float32, bfloat16 or float16 (loss scaling); parameters stay float32",
        _one_of("float32", "bfloat16", "float16"),
    ),
    "grad_accum_steps": Field(1, "micro-batches per optimizer step", _at_least(1)),
    "remat": Field(
        "",
        "rematerialisation: '' (off), blocks, dots or full",
        _one_of("", "none", "blocks", "dots", "full"),
    ),
}


def _auto_or_bool(v) -> str | None:
    return None if v in (-1, 0, 1) or isinstance(v, bool) else "-1 (auto), true or false"


# The optimizer's finer keys (jaxcnn.train.optim.optimizer_from_config reads them with COMMON's
# optimizer, learning_rate, schedule, warmup_epochs, weight_decay and grad_clip); a task that
# builds its optimizer with that function joins this group. Defaults keep the optimizers as
# COMMON's keys alone make them.
OPTIMIZER_FIELDS: dict[str, Field] = {
    "optimizer": Field(
        "adam",
        "adam, adamw (decoupled decay), sgd (momentum, Nesterov unless nesterov=false), "
        "rmsprop, lamb or lars (optax's)",
        _one_of("adam", "adamw", "sgd", "rmsprop", "lamb", "lars"),
    ),
    "momentum": Field(
        0.9, "momentum of sgd, rmsprop and lars", lambda v: None if 0 <= v < 1 else "in [0, 1)"
    ),
    "nesterov": Field(
        -1,
        "Nesterov momentum: true/false; -1: on for sgd, off for lars (the other optimizers "
        "take no such option)",
        _auto_or_bool,
        type=(bool, int),
    ),
    "decay_mask": Field(
        False,
        "no weight decay (nor LARS trust ratio) on biases, normalisation scales, other 1-D "
        "parameters and transformer embeddings (timm's rule); false: decay every parameter",
    ),
    "min_lr": Field(0.0, "end value of the cosine schedule", _finite_at_least(0.0)),
    "warmup_init_lr": Field(
        0.0, "learning rate at the start of the linear warm-up", _finite_at_least(0.0)
    ),
}


# Keys the Trainer's loop reads for every task (a task may redefine them, never drop them).
LOOP_KEYS = frozenset(
    {
        "model",
        "seed",
        "batch_size",
        "epochs",
        "eval_every_steps",
        "checkpoint_every_steps",
        "keep_checkpoints",
        "log_every_steps",
        "progress",
        "tensorboard",
        "on_nonfinite",
        "max_nonfinite_skips",
        "allow_config_change",
        "num_devices",
        "description",
    }
)


def schema(*groups: Mapping[str, Field | None]) -> dict[str, Field]:
    """:data:`COMMON` joined with task-specific groups: a later group may redefine a key (e.g.
    another default model) or drop it by mapping it to ``None`` (a key the task does not read,
    so that setting it is an error rather than silently ignored)."""
    out = dict(COMMON)
    for g in groups:
        for k, f in g.items():
            if f is None:
                if k in LOOP_KEYS:
                    raise ValueError(
                        f"config key {k!r} is read by the training loop itself; "
                        f"a task cannot drop it"
                    )
                out.pop(k, None)
            else:
                out[k] = f
    return out


def _as_dict(config: Any) -> dict:
    if config is None:
        return {}
    if hasattr(config, "to_dict"):
        return config.to_dict()
    return dict(config)


def _type_name(types: tuple) -> str:
    names = {
        bool: "a bool",
        int: "an int",
        float: "a number",
        str: "a string",
        tuple: "a tuple",
        list: "a tuple",
        dict: "a dict",
    }
    return " or ".join(dict.fromkeys(names.get(t, t.__name__) for t in types))


def _suggest(key: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def validate(config: Any, fields: Mapping[str, Field] | None = None) -> dict:
    """Every key of ``fields`` (default :data:`COMMON`) with ``config``'s values checked and
    the defaults filled in; :class:`ConfigError` (one line) for the first problem found."""
    fields = COMMON if fields is None else fields
    given = _as_dict(config)
    unknown = sorted(set(given) - set(fields))
    if unknown:
        k = unknown[0]
        more = f" (and {len(unknown) - 1} more: {', '.join(unknown[1:])})" if unknown[1:] else ""
        raise ConfigError(f"unknown config key {k!r}{_suggest(k, fields)}{more}")
    out = {}
    for key, f in fields.items():
        v = given.get(key, f.default)
        types = f.types
        # an int is a fine float; a bool is not an int here (epochs=True is a mistake)
        ok = isinstance(v, types) and not (isinstance(v, bool) and bool not in types)
        if not ok:
            raise ConfigError(
                f"config key {key!r}: expected {_type_name(types)}, got {v!r} ({type(v).__name__})"
            )
        if float in types and isinstance(v, int) and not isinstance(v, bool):
            v = float(v) if type(f.default) is float else v
        if isinstance(v, list):
            v = tuple(v)
        if f.check is not None:
            expected = f.check(v)
            if expected is not None:
                raise ConfigError(f"config key {key!r}: expected {expected}, got {v!r}")
        out[key] = v
    return out


def default_config(fields: Mapping[str, Field] | None = None):
    """An ``ml_collections.ConfigDict`` with every key of ``fields`` at its default (the base of
    the experiment config files: set only what differs)."""
    import ml_collections

    fields = COMMON if fields is None else fields
    c = ml_collections.ConfigDict()
    for key, f in fields.items():
        c[key] = f.default
    return c


def describe(fields: Mapping[str, Field] | None = None) -> str:
    """One line per key: name, default, meaning (``python -m experiments.train --help_config``)."""
    fields = COMMON if fields is None else fields
    width = max(map(len, fields))
    return "\n".join(f"{k:<{width}}  {f.default!r:<14} {f.help}" for k, f in fields.items())


def _parse_value(key: str, text: str, f: Field):
    types = f.types
    quoted = len(text) >= 2 and text[0] in "'\"" and text[-1] == text[0]
    if str in types and not quoted:  # also the empty text: --config.remat= is ""
        return text
    if float in types and text.lower().lstrip("+-") in ("nan", "inf", "infinity"):
        return float(text)  # not a literal; the range check then names the value
    if bool in types:
        low = text.lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        if int not in types:  # augment_flip also takes -1 (auto)
            raise ConfigError(f"--config.{key}={text}: expected true or false")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if tuple in types:  # 28,28 without brackets
            try:
                return tuple(ast.literal_eval(f"({text},)"))
            except (ValueError, SyntaxError):
                pass
        raise ConfigError(
            f"--config.{key}={text}: expected {_type_name(types)}, got text that is not a "
            f"Python literal"
        ) from None
    if tuple in types and float not in types and isinstance(value, (int, float)):
        value = (value,)  # mean=0.5 is (0.5,); color_jitter=0.4 stays a number
    return value


def parse_overrides(args: Sequence[str], fields: Mapping[str, Field]) -> dict:
    """``["--config.epochs=3", "--config.model_kwargs.in_channels=1"]`` -> ``{"epochs": 3,
    "model_kwargs": {"in_channels": 1}}``: values typed by the schema (strings stay strings
    unless quoted, ``28,28`` is a tuple); :class:`ConfigError` for an unknown key (with the
    closest known one), a missing ``=`` or a value of the wrong type."""
    out: dict = {}
    for arg in args:
        body = arg[len("--config.") :] if arg.startswith("--config.") else None
        if body is None or "=" not in body:
            raise ConfigError(f"{arg!r}: expected --config.KEY=VALUE")
        key, text = body.split("=", 1)
        top, _, sub = key.partition(".")
        if top not in fields:
            raise ConfigError(f"unknown config key {top!r}{_suggest(top, fields)}")
        if sub:
            if not isinstance(fields[top].default, dict):
                raise ConfigError(f"--config.{key}: {top!r} is not a dict of options")
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                value = text
            out.setdefault(top, {})[sub] = value
        else:
            out[top] = _parse_value(top, text, fields[top])
    return out


def fingerprint(cfg: Mapping[str, Any], fields: Mapping[str, Field], **facts: Any) -> dict:
    """The keys of a validated ``cfg`` that may not change on resume (see ``Field.resume_ok``),
    plus ``facts`` the run derived (num_classes, input shape, dataset sizes, parameter count),
    as a JSON-able dict stored with every checkpoint."""
    out = {k: _jsonable(v) for k, v in cfg.items() if k in fields and not fields[k].resume_ok}
    out.update({k: _jsonable(v) for k, v in facts.items()})
    return out


def diff_fingerprints(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """``["batch_size: 64 -> 32", ...]`` for every key whose value differs."""
    keys = sorted(set(saved) | set(now))
    missing = object()
    return [
        f"{k}: {saved.get(k, '(unset)')!r} -> {now.get(k, '(unset)')!r}"
        for k in keys
        if saved.get(k, missing) != now.get(k, missing)
    ]


def _jsonable(v):
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return v
