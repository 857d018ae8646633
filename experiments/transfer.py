"""Transfer-learning study: pretrain on some classes, transfer to others with few labels.

    python -m experiments.transfer --config experiments/configs/transfer_mnist.py --quick
    python -m experiments.transfer --config experiments/configs/transfer_mnist.py \
        --config.models='("resnet18_cifar",)' --config.budgets='(60, 200, 600)' \
        --workdir runs/transfer_resnet18

Every network here is trained by the one engine: :class:`jaxcnn.train.Trainer` running
:class:`TransferClassification`, the :class:`jaxcnn.tasks.Classification` task on in-memory
splits, whose ``transfer`` config key puts the config's optimizer (Adam, cosine decay) under a
:class:`jaxcnn.transfer.Plan`: the same code path as ``python -m experiments.train
--config.transfer=...``.

The data (:func:`load_task`), from the dataset's published train and test splits:

- source: the source classes of train minus a seeded stratified validation hold-out
  (``source_validation_split``), tested on the source classes of test;
- target: a seeded stratified validation split (``validation_split``) is held out of the target
  classes of train first; the labelled subsets (nested: the first 50 of a seed's 200, ...) are
  drawn from the rest; the target classes of test are the target test set.

For each backbone (``models``): pretrain on the source classes (the state selected on the source
validation split is cached as ``<workdir>/pretrained/<model>.msgpack``; a rerun reuses it), then
for each step budget (``budgets``, or the backbone's own), number of labelled target examples
(``label_counts``), method (``methods``) and seed (``seeds``) train with the same budget and
optimizer, evaluating the target validation split ``evaluations`` times a run. A method is

- ``scratch``: a fresh model, everything trains;
- ``feature_extractor``: frozen backbone; pooled last-stage features
  (``transfer.extract_features``) and a softmax-regression head (``transfer.fit_linear``, a fixed
  number of full-batch steps: not a network training loop, nothing selected);
- any :class:`jaxcnn.transfer.Plan` spec: ``linear_probe``, ``finetune``,
  ``finetune_lwd:0.8``, ``gradual`` (head, + last stage, + everything; fresh moments, layer-wise
  rates and a warm-up per newly unfrozen group; one compiled step), ``lora:8`` (adapters on every
  kernel but the head's, BatchNorm affine and the new head trained), with ``,key=value``
  options (``lora:16,bn_affine=false``; see ``Plan.parse``).

The accuracy reported is the test accuracy of the state selected on the target validation split
(the best validation accuracy of the run's evaluations; ``early_stopping_patience`` may end a run
early); the test split is evaluated once, at the end, and selects nothing. Writes Markdown
tables (accuracy mean ± std over seeds, trainable parameters, wall time per run; validation loss
and accuracy at the end of each unfreezing phase) to stdout and to ``<workdir>/results.md``,
the records (with every run's evaluation curve) to ``results.json``, ``accuracy.png`` and
``curves.png`` (validation loss and accuracy vs step, phase starts marked); every engine run
leaves its ``metrics.json`` and ``train.log`` in
``<workdir>/<model>/<budget>steps/<method>/n<labels>_seed<s>/`` (``<workdir>/<model>/pretrain/``
for pretraining).

A study is long (hours on CPU for ResNet-18): every finished run writes its record to
``record.json`` in its directory, and a rerun of the same command reuses the records whose
settings match (the run, the config and the pretrained backbone) instead of training again. A
SIGTERM/SIGINT ends the running run at its next step (the engine saves it) and the study with
:class:`Interrupted`; ``python -m experiments.transfer`` then exits with status 128 + signal.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import re
import shutil
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from jaxcnn import data as data_lib
from jaxcnn import models, transfer
from jaxcnn.tasks import Classification
from jaxcnn.train.trainer import write_json

_DEFAULT = str(pathlib.Path(__file__).parent / "configs" / "transfer_mnist.py")

# the methods that are no transfer plan (every other method is a jaxcnn.transfer.Plan spec)
METHOD_NAMES = {
    "scratch": "from scratch",
    "feature_extractor": "feature extractor (linear probe on features)",
}


def _define_flags():
    """The command line's flags (defined when run as a script, so that importing this module
    in tests or beside another experiment never defines a flag twice)."""
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", _DEFAULT, "experiment config file")
    flags.DEFINE_string("workdir", None, "output directory (default runs/<config name>)")
    flags.DEFINE_bool("quick", False, "only the config's quick_models (LeNet-5)")


# ----------------------------------------------------------------------------------- data


class Relabelled(data_lib.Subset):
    """The examples ``indices`` of ``source`` with their labels mapped through ``mapping``
    (``mapping[old label]`` is the new one): the digits 5-9 as classes 0-4."""

    def __init__(self, source, indices, mapping, name: str | None = None):
        super().__init__(source, indices, name)
        self.mapping = np.asarray(mapping, np.int64)

    @property
    def labels(self) -> np.ndarray:
        return self.mapping[super().labels]

    def __getitem__(self, i: int) -> dict:
        ex = dict(super().__getitem__(i))
        ex["label"] = int(self.mapping[ex["label"]])
        return ex


def classes_of(source, classes: Sequence[int], name: str) -> Relabelled:
    """The examples of ``source`` whose label is in ``classes``, relabelled ``0..len-1`` in the
    order of ``classes``."""
    labels = np.asarray(source.labels)
    classes = [int(k) for k in classes]
    mapping = np.full(max(int(labels.max()), *classes) + 1, -1, np.int64)
    mapping[classes] = np.arange(len(classes))
    return Relabelled(source, np.flatnonzero(np.isin(labels, classes)), mapping, name)


def _holdout_count(spec, n: int, what: str) -> int:
    """A fraction (< 1) or a count of ``n`` examples, as a count in ``[1, n)``."""
    k = int(round(spec * n)) if spec < 1 else int(spec)
    if not 0 < k < n:
        raise ValueError(f"{what}={spec!r} holds out {k} of {n} examples")
    return k


@dataclasses.dataclass(frozen=True)
class TransferData:
    """The study's splits (see the module docstring); ``mean``/``std`` are the source training
    images' statistics, the normalisation of every run."""

    source: data_lib.Splits
    pool: Any  # target train examples minus the validation split: labelled subsets come from it
    validation: Any  # target validation split: selection only
    test: Any  # target test split: reported at the end, selects nothing
    num_classes: int
    class_names: tuple[str, ...]
    name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: tuple[int, int]
    channels: int
    provenance: dict

    def labelled(self, n: int, seed: int) -> data_lib.Subset:
        """``n`` labelled target examples of seed ``seed``: the first ``n`` of a seeded
        permutation of the pool, so a seed's 50 are among its 200 and its 1,000."""
        if n > len(self.pool):
            raise ValueError(
                f"{n} labelled examples asked for; the target pool has {len(self.pool)} "
                f"(after the {len(self.validation)} validation examples)"
            )
        order = np.random.default_rng(seed).permutation(len(self.pool))[:n]
        return data_lib.Subset(self.pool, order, name=f"{self.name}[target labelled]")

    def target_splits(self, train, steps: int, batch_size: int, seed: int) -> data_lib.Splits:
        """Splits for one transfer run: ``train`` repeated to ``steps`` batches (one epoch of
        the engine: :class:`jaxcnn.data.Repeat`), the target validation and test splits."""
        return data_lib.Splits(
            train=data_lib.Repeat(train, steps * batch_size, seed=seed),
            validation=self.validation,
            test=self.test,
            num_classes=self.num_classes,
            class_names=self.class_names,
            name=self.name,
            provenance={
                "train": f"{len(train):,} labelled target examples (seed {seed}) repeated to "
                f"{steps} batches of {batch_size}",
                "validation": self.provenance["target_validation"],
                "test": self.provenance["target_test"],
            },
        )

    def arrays(self, source) -> tuple[np.ndarray, np.ndarray]:
        """``(images, labels)`` of ``source`` normalised as the runs see them at evaluation."""
        pre = data_lib.Preprocess(self.input_size, self.channels, self.mean, self.std)
        x = np.stack([pre(source[i]["image"]) for i in range(len(source))])
        return x, np.asarray(source.labels, np.int32)


def load_task(c) -> TransferData:
    """The study's splits from the dataset's published train/test splits (the bundled MNIST
    test set: train = its first 8,000 images, test = the last 2,000)."""
    from jaxcnn.data.transforms import compute_mean_std

    full = data_lib.load_splits(
        c.dataset,
        c.data_dir or None,
        validation_split=0,
        split_seed=c.split_seed,
        test_split=c.test_split,
    )
    src, tgt = list(c.source_classes), list(c.target_classes)
    name = full.name
    src_train = classes_of(full.train, src, f"{name}[source train]")
    k = _holdout_count(c.source_validation_split, len(src_train), "source_validation_split")
    rest, held = data_lib.stratified_holdout(src_train.labels, k, [c.split_seed, 3])
    tgt_train = classes_of(full.train, tgt, f"{name}[target train]")
    kv = _holdout_count(c.validation_split, len(tgt_train), "validation_split")
    pool_idx, val_idx = data_lib.stratified_holdout(tgt_train.labels, kv, [c.split_seed, 4])
    how = f"seeded stratified hold-out (split_seed={c.split_seed})"
    prov = {
        "source_train": f"{len(rest):,} examples: classes {src} of train, minus validation",
        "source_validation": f"{k:,} examples: classes {src} of train, {how}",
        "source_test": f"classes {src} of test",
        "target_pool": f"{len(pool_idx):,} examples: classes {tgt} of train, minus "
        f"validation (labelled subsets are drawn from it)",
        "target_validation": f"{kv:,} examples: classes {tgt} of train, {how}; selection only",
        "target_test": f"classes {tgt} of test; reported at the end, selects nothing",
        "dataset": {k: v for k, v in full.provenance.items() if k != "validation"},
    }
    source = data_lib.Splits(
        train=data_lib.Subset(src_train, rest, name=f"{name}[source train]"),
        validation=data_lib.Subset(src_train, held, name=f"{name}[source validation]"),
        test=classes_of(full.test, src, f"{name}[source test]"),
        num_classes=len(src),
        class_names=tuple(str(x) for x in src),
        name=name,
        provenance={
            "train": prov["source_train"],
            "validation": prov["source_validation"],
            "test": prov["source_test"],
        },
    )
    size, channels = tuple(int(s) for s in c.input_size), int(c.channels)
    mean, std = compute_mean_std(source.train, data_lib.Preprocess(size, channels))
    test = classes_of(full.test, tgt, f"{name}[target test]")
    prov["source_test"] = f"{len(source.test):,} examples: " + prov["source_test"]
    prov["target_test"] = f"{len(test):,} examples: " + prov["target_test"]
    return TransferData(
        source=source,
        pool=data_lib.Subset(tgt_train, pool_idx, name=f"{name}[target pool]"),
        validation=data_lib.Subset(tgt_train, val_idx, name=f"{name}[target validation]"),
        test=test,
        num_classes=len(tgt),
        class_names=tuple(str(x) for x in tgt),
        name=name,
        mean=mean,
        std=std,
        input_size=size,
        channels=channels,
        provenance=prov,
    )


# ----------------------------------------------------------------------------------- methods


def method_name(method: str) -> str:
    """How tables name a method: the two that are no plan, or the plan's spec."""
    return METHOD_NAMES.get(method, method)


def run_dir_name(method: str) -> str:
    """A directory name for a method (a plan spec's ``:,=`` become ``_``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", method)


class TransferClassification(Classification):
    """:class:`jaxcnn.tasks.Classification` for the study's many short runs: ``splits`` and
    ``variables`` as the task takes them, the transfer plan from the config's ``transfer`` key
    (or ``plan``); ``pictures=False`` skips the curves and confusion-matrix pictures."""

    def __init__(self, splits, variables: dict | None = None, plan=None, pictures: bool = False):
        super().__init__(splits=splits, variables=variables, plan=plan)
        self.pictures = pictures

    def trainable(self, params) -> int:
        """Parameters the run trains (in its last phase)."""
        if self.transfer is not None:
            return self.transfer.trainable_params()
        return transfer.count_params(params)

    def finish(self, state, result, workdir):
        if self.pictures:
            return super().finish(state, result, workdir)
        return None


# ----------------------------------------------------------------------------------- training


def engine_config(c, data: TransferData, name: str, opts, **kw) -> dict:
    """The engine config of one run: the study's data keys and normalisation, Adam with cosine
    decay, validation-only selection (``keep_best``), no progress bar; ``kw`` sets the rest
    (epochs, batch_size, learning_rate, seed, eval_every_steps, validation_split)."""
    cfg = dict(
        model=name,
        model_kwargs=dict(opts.kwargs),
        dataset=c.dataset,
        data_dir=c.data_dir,
        test_split=c.test_split,
        split_seed=c.split_seed,
        input_size=tuple(data.input_size),
        channels=data.channels,
        augment_shift=int(c.augment_shift),
        augment_flip=False,
        mean=tuple(data.mean),
        std=tuple(data.std),
        optimizer="adam",
        schedule="cosine",
        eval_batch_size=int(c.eval_batch_size),
        early_stopping_patience=int(c.early_stopping_patience),
        keep_checkpoints=1,
        keep_best=1,
        progress=False,
    )
    cfg.update(kw)
    return cfg


def train_run(task, cfg: dict, run_dir, *, log: bool = True, keep_checkpoints: bool = False):
    """``Trainer(task, cfg, run_dir).run()`` in a fresh ``run_dir`` (a study rerun replaces its
    runs); the engine's lines go to ``run_dir/train.log`` when ``log``, and its checkpoints are
    removed afterwards unless ``keep_checkpoints`` (``metrics.json`` stays)."""
    from jaxcnn.train import Trainer

    run_dir = pathlib.Path(run_dir)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    with contextlib.ExitStack() as stack:
        if log:
            f = stack.enter_context(open(run_dir / "train.log", "w"))
            stack.enter_context(contextlib.redirect_stdout(f))
        result = Trainer(task, cfg, run_dir).run()
    if not keep_checkpoints:
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    return result


def selected_variables(run_dir, result: dict, cfg: dict) -> dict:
    """Host variables of the state the run selected on validation (restored from its
    checkpoint when it is not the last state)."""
    step = result["selected"]["step"]
    if step == result["steps"]:
        return jax.device_get(result["state"].variables)
    from jaxcnn.checkpoint import Checkpointer

    ckpt = Checkpointer(
        pathlib.Path(run_dir) / "checkpoints",
        keep=cfg["keep_checkpoints"],
        keep_best=cfg["keep_best"],
    )
    try:
        saved = ckpt.restore(None, step=step).state
    finally:
        ckpt.close()
    v = {"params": saved["params"]}
    if saved.get("batch_stats"):
        v["batch_stats"] = saved["batch_stats"]
    return jax.device_get(v)


def pretrain(c, name, opts, data: TransferData, workdir):
    """``(model, variables, source test accuracy)``: the backbone trained on the source classes
    by the engine, the state selected on the source validation split; cached in
    ``workdir/pretrained`` (reused when the settings match)."""
    from flax import serialization

    k = data.source.num_classes
    model = models.create_model(name, num_classes=k, **opts.kwargs)
    shape = (1, *data.input_size, data.channels)
    meta = {
        "model": name,
        "kwargs": dict(opts.kwargs),
        "classes": list(c.source_classes),
        "dataset": c.dataset,
        "splits": dict(data.source.provenance),
        "epochs": opts.pretrain_epochs,
        "batch_size": opts.pretrain_batch_size,
        "lr": opts.pretrain_lr,
        "seed": c.seed,
        "input_size": list(data.input_size),
        "augment_shift": int(c.augment_shift),
        "selection": "best source validation accuracy (jaxcnn.train.Trainer)",
    }
    path = pathlib.Path(workdir) / "pretrained" / f"{name}.msgpack"
    template = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape)))
    if path.exists() and path.with_suffix(".json").exists():
        saved = json.loads(path.with_suffix(".json").read_text())
        if saved.get("meta") == meta:
            variables = serialization.from_bytes(template, path.read_bytes())
            print(
                f"{name}: pretrained backbone loaded from {path} (source test accuracy "
                f"{saved['source_accuracy']:.4f})",
                flush=True,
            )
            return model, variables, saved["source_accuracy"]
    steps_per_epoch = len(data.source.train) // opts.pretrain_batch_size
    cfg = engine_config(
        c,
        data,
        name,
        opts,
        epochs=opts.pretrain_epochs,
        batch_size=opts.pretrain_batch_size,
        learning_rate=opts.pretrain_lr,
        seed=c.seed,
        validation_split=c.source_validation_split,
        description=f"transfer study: pretraining on classes {list(c.source_classes)}",
    )
    run_dir = pathlib.Path(workdir) / name / "pretrain"
    t0 = time.perf_counter()
    task = TransferClassification(data.source, pictures=True)
    result = _finished(
        train_run(task, cfg, run_dir, log=False, keep_checkpoints=True), f"pretraining {name}"
    )
    sel = result["selected"]
    variables = selected_variables(run_dir, result, cfg)
    if not c.keep_run_checkpoints:
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    secs = time.perf_counter() - t0
    print(
        f"{name}: pretrained on classes {list(c.source_classes)} ({len(data.source.train)} "
        f"images, {steps_per_epoch * opts.pretrain_epochs} steps, {secs:.0f}s): selected step "
        f"{sel['step']} (source validation accuracy {sel['val_accuracy']:.4f}), source test "
        f"accuracy {sel['test_accuracy']:.4f}",
        flush=True,
    )
    acc = float(sel["test_accuracy"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(serialization.to_bytes(variables))
    path.with_suffix(".json").write_text(
        json.dumps(
            {
                "meta": meta,
                "source_accuracy": acc,
                "source_validation_accuracy": sel["val_accuracy"],
                "selected_step": sel["step"],
                "pretrain_time_s": secs,
            },
            indent=1,
        )
    )
    return model, variables, acc


def budgets(c, opts) -> list[int]:
    """The step budgets a backbone runs: the config's ``budgets`` or the backbone's own."""
    return [int(b) for b in (c.budgets or opts.budgets)]


class Interrupted(RuntimeError):
    """A transfer run was stopped by a signal (SIGTERM/SIGINT); the finished runs' records are
    kept for the next run of the study."""

    def __init__(self, message: str, signum: int | None):
        super().__init__(message)
        self.signum = signum


def _finished(result: dict, what: str) -> dict:
    """``result`` of an engine run, or :class:`Interrupted` when a signal stopped it."""
    if result.get("preempted"):
        raise Interrupted(
            f"{what} stopped by signal {result.get('signal')} at step {result['step']}: rerun "
            f"the same command to go on (finished runs are reused)",
            result.get("signal"),
        )
    return result


# the config keys that choose which runs a study makes, not how a run trains
_LISTING_KEYS = (
    "models",
    "quick_models",
    "methods",
    "seeds",
    "label_counts",
    "budgets",
    "compilation_cache",
    "keep_run_checkpoints",
)


def run_key(c, name, steps, method, n, seed, source_accuracy) -> dict:
    """What a run's record depends on: the run, every training setting of the config and the
    pretrained backbone (by its source test accuracy); a record is reused only when its key is
    equal."""
    settings = {k: v for k, v in c.to_dict().items() if k not in _LISTING_KEYS}
    key = {
        "model": name,
        "budget": steps,
        "method": method,
        "labels": n,
        "seed": seed,
        "source_accuracy": source_accuracy,
        "settings": settings,
    }
    return json.loads(json.dumps(key, default=list))  # as read back from record.json


def reused_record(run_dir, key: dict) -> dict | None:
    """The record in ``run_dir/record.json`` when it was written for ``key``."""
    path = pathlib.Path(run_dir) / "record.json"
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return saved["record"] if saved.get("key") == key else None


def run_method(method, c, name, opts, pretrained, data: TransferData, n, seed, steps, run_dir=None):
    """One transfer run of ``steps`` steps; returns a dict: ``accuracy`` (test accuracy of the
    state selected on the target validation split), ``last_accuracy`` (of the last state),
    ``val_accuracy`` (of the selected one), ``selected_step``, ``steps``, ``trainable_params``,
    ``phase_starts`` and ``curve`` (the run's evaluations: step, train and validation loss and
    accuracy); and ``state``, the last state of an engine run (None for the feature
    extractor).

    ``method``: ``scratch`` (a fresh model), ``feature_extractor`` (a softmax regression on the
    pooled features) or a :class:`jaxcnn.transfer.Plan` spec (``finetune_lwd:0.8``,
    ``gradual``, ``lora:8``...) applied to the pretrained variables by the classification
    task (its ``transfer`` config key)."""
    k = data.num_classes
    model = models.create_model(name, num_classes=k, **opts.kwargs)
    shape = (1, *data.input_size, data.channels)
    train = data.labelled(n, seed)
    if method == "feature_extractor":
        variables = transfer.replace_head(pretrained, model, shape, seed=seed)
        feats = {}
        for split, src in (("train", train), ("validation", data.validation), ("test", data.test)):
            x, y = data.arrays(src)
            (f,) = transfer.extract_features(model, variables, x, stages=[-1])
            feats[split] = (f, y)
        head = transfer.fit_linear(*feats["train"], k, steps=c.probe_steps, seed=seed)
        acc = transfer.linear_accuracy(head, *feats["test"])
        return {
            "accuracy": acc,
            "last_accuracy": acc,
            "val_accuracy": transfer.linear_accuracy(head, *feats["validation"]),
            "selected_step": None,
            "steps": c.probe_steps,
            "trainable_params": transfer.count_params(head),
            "phase_starts": [0],
            "curve": [],
            "state": None,
        }
    scratch = method == "scratch"
    if not scratch:
        transfer.Plan.parse(method)  # a clear error before any training
    bs = min(opts.batch_size, n)
    splits = data.target_splits(train, steps, bs, seed)
    cfg = engine_config(
        c,
        data,
        name,
        opts,
        epochs=1,
        batch_size=bs,
        learning_rate=opts.lr,
        seed=seed,
        eval_every_steps=max(steps // max(int(c.evaluations), 1), 1),
        validation_split=c.validation_split,
        transfer="" if scratch else method,
        description=f"transfer study: {method}, {n} labels, {steps} steps, seed {seed}",
    )
    task = TransferClassification(splits, None if scratch else pretrained)
    with contextlib.ExitStack() as stack:
        if run_dir is None:
            import tempfile

            run_dir = pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory())) / "run"
            result = train_run(task, cfg, run_dir)
        else:
            result = train_run(task, cfg, run_dir, keep_checkpoints=c.keep_run_checkpoints)
        history = json.loads((pathlib.Path(run_dir) / "metrics.json").read_text())["history"]
    _finished(result, f"{method} ({n} labels, {steps} steps, seed {seed})")
    keys = ("step", "train_loss", "train_accuracy", "val_loss", "val_accuracy")
    sel = result["selected"]
    state = result["state"]
    return {
        "accuracy": float(sel["test_accuracy"]),
        "last_accuracy": float(result["test_accuracy"]),
        "val_accuracy": float(sel["val_accuracy"]),
        "selected_step": int(sel["step"]),
        "steps": int(result["steps"]),
        "trainable_params": task.trainable(state.params),
        "phase_starts": list(task.transfer.starts) if task.transfer else [0],
        "curve": [{k: h.get(k) for k in keys} for h in history],
        "state": state,
    }


# ----------------------------------------------------------------------------------- report


def _mean(records, key):
    v = np.array([r[key] for r in records], float)
    return float(v.mean()), float(v.std()) if len(v) > 1 else None


def _mean_std(rs, key, digits=3) -> str:
    if not rs:
        return "-"
    mean, std = _mean(rs, key)
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def _settings(records):
    """``(model, budget)`` pairs of ``records`` in the order they ran."""
    return list(dict.fromkeys((r["model"], r["budget"]) for r in records))


def table(records, counts) -> str:
    """One Markdown table per backbone and step budget; accuracy is the test accuracy of the
    state selected on the target validation split, mean ± std over seeds, time the mean wall
    time of one run (compilation included)."""
    lines = []
    for name, budget in _settings(records):
        rows = [r for r in records if r["model"] == name and r["budget"] == budget]
        seeds = sorted({r["seed"] for r in rows})
        lines += [
            f"**{name}**, {budget} steps per run, seeds {seeds} (pretrained on the source "
            f"classes: test accuracy {rows[0]['source_accuracy']:.4f})",
            "",
            "| method | trainable params | "
            + " | ".join(f"acc @{n}" for n in counts)
            + " | "
            + " | ".join(f"time @{n} (s)" for n in counts)
            + " |",
            "|---|---:|" + "---:|" * (2 * len(counts)),
        ]
        for m in dict.fromkeys(r["method"] for r in rows):
            runs = {n: [r for r in rows if r["method"] == m and r["labels"] == n] for n in counts}
            tp = sorted({r["trainable_params"] for rs in runs.values() for r in rs})
            lines.append(
                f"| {method_name(m)} | {', '.join(f'{t:,}' for t in tp)} | "
                + " | ".join(_mean_std(runs[n], "accuracy") for n in counts)
                + " | "
                + " | ".join(
                    f"{_mean(runs[n], 'time_s')[0]:.1f}" if runs[n] else "-" for n in counts
                )
                + " |"
            )
        lines.append("")
    return "\n".join(lines)


def _at_phase_ends(rec) -> list[dict | None]:
    """The last evaluation of each phase of a run (None where a phase had none)."""
    # an evaluation at step s sees the state after s updates: the end of the phase that
    # ends at s
    starts = list(rec["phase_starts"]) + [rec["steps"]]
    out = []
    for a, b in zip(starts, starts[1:]):
        inside = [h for h in rec["curve"] if a < h["step"] <= b]
        out.append(inside[-1] if inside else None)
    return out


def phase_table(records, counts) -> str:
    """For every method with unfreezing phases: validation loss and accuracy at the last
    evaluation of each phase, mean ± std over seeds (evaluations every ``steps /
    evaluations``: set ``evaluations`` to a multiple of the phases to hit their ends)."""
    lines = []
    for name, budget in _settings(records):
        rows = [
            r
            for r in records
            if r["model"] == name and r["budget"] == budget and len(r["phase_starts"]) > 1
        ]
        for m in dict.fromkeys(r["method"] for r in rows):
            mine = [r for r in rows if r["method"] == m]
            starts = mine[0]["phase_starts"]
            lines += [
                f"**{name}**, {budget} steps, `{m}`: phases start at steps {starts}; validation "
                "loss / accuracy at the last evaluation of each phase",
                "",
                "| labels | " + " | ".join(f"phase {k} (step)" for k in range(len(starts))) + " |",
                "|---:|" + "---|" * len(starts),
            ]
            for n in counts:
                rs = [r for r in mine if r["labels"] == n]
                if not rs:
                    continue
                cells = []
                for k in range(len(starts)):
                    ends = [
                        e
                        for e in (_at_phase_ends(r)[k] for r in rs)
                        if e is not None and e.get("val_loss") is not None
                    ]
                    if not ends:
                        cells.append("-")
                        continue
                    loss = _mean_std(ends, "val_loss")
                    acc = _mean_std(ends, "val_accuracy")
                    cells.append(f"{loss} / {acc} ({ends[0]['step']})")
                lines.append(f"| {n} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


def _figure(panels: int, height: float = 4.0):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    fig = Figure(figsize=(5.5 * panels, height))
    return fig, fig.subplots(1, panels, squeeze=False)[0]


def plot(records, path) -> bool:
    """Accuracy vs labelled examples, one panel per backbone and budget
    (``matplotlib.figure.Figure``, no pyplot); False when matplotlib is not installed."""
    settings = _settings(records)
    made = _figure(len(settings))
    if made is None:
        return False
    fig, axes = made
    for ax, (name, budget) in zip(axes, settings):
        rows = [r for r in records if r["model"] == name and r["budget"] == budget]
        for m in dict.fromkeys(r["method"] for r in rows):
            ns = sorted({r["labels"] for r in rows if r["method"] == m})
            means = [
                _mean([r for r in rows if r["method"] == m and r["labels"] == n], "accuracy")[0]
                for n in ns
            ]
            ax.plot(ns, means, marker="o", label=method_name(m))
        ax.set_xscale("log")
        ax.set_xlabel("labelled target examples")
        ax.set_ylabel("test accuracy (selected on validation)")
        ax.set_title(f"{name}, {budget} steps")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def plot_curves(records, counts, path) -> bool:
    """Validation loss and accuracy vs step of every engine method (mean over seeds), one
    column per backbone, budget and label count; dotted lines at the phase starts of methods
    with unfreezing phases. False when matplotlib is not installed."""
    panels = [
        (name, budget, n)
        for name, budget in _settings(records)
        for n in counts
        if any(
            r["model"] == name and r["budget"] == budget and r["labels"] == n and r["curve"]
            for r in records
        )
    ]
    if not panels:
        return False
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return False
    fig = Figure(figsize=(4.5 * len(panels), 7))
    axes = fig.subplots(2, len(panels), squeeze=False)
    for col, (name, budget, n) in enumerate(panels):
        rows = [
            r
            for r in records
            if r["model"] == name and r["budget"] == budget and r["labels"] == n and r["curve"]
        ]
        for m in dict.fromkeys(r["method"] for r in rows):
            rs = [r for r in rows if r["method"] == m]
            steps = [h["step"] for h in rs[0]["curve"]]
            for row, key in enumerate(("val_loss", "val_accuracy")):
                v = np.array([[h.get(key) or np.nan for h in r["curve"]] for r in rs], float)
                (line,) = axes[row, col].plot(
                    steps, np.nanmean(v, 0), marker=".", label=method_name(m)
                )
                for s in rs[0]["phase_starts"][1:]:
                    axes[row, col].axvline(s, color=line.get_color(), ls=":", lw=1)
        axes[0, col].set_title(f"{name}, {budget} steps, {n} labels", fontsize=9)
        axes[0, col].set_ylabel("validation loss")
        axes[1, col].set_ylabel("validation accuracy")
        axes[1, col].set_xlabel("step")
        for ax in axes[:, col]:
            ax.grid(alpha=0.3)
        axes[1, col].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def study(c, workdir, models_run: Sequence[str]) -> dict:
    """Run the study of config ``c`` for ``models_run`` in ``workdir``; writes results.md,
    results.json, accuracy.png and curves.png there and returns what results.json holds."""
    os.makedirs(workdir, exist_ok=True)
    if c.compilation_cache:  # runs differing only in data/seed reuse compiled steps
        jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, c.compilation_cache))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    for m in c.methods:  # every plan spec checked before anything runs
        if m not in METHOD_NAMES:
            transfer.Plan.parse(m)
    t_all = time.perf_counter()
    data = load_task(c)
    print(
        f"source: {len(data.source.train)} train / {len(data.source.validation)} validation / "
        f"{len(data.source.test)} test; target pool {len(data.pool)}, target validation "
        f"{len(data.validation)}, target test {len(data.test)}",
        flush=True,
    )
    records = []
    for mname in models_run:
        opts = c.model_options[mname]
        _, pretrained, src_acc = pretrain(c, mname, opts, data, workdir)
        for steps in budgets(c, opts):
            for n in c.label_counts:
                for method in c.methods:
                    for seed in opts.get("seeds") or c.seeds:  # a labelled subset + init each
                        t0 = time.perf_counter()
                        run_dir = (
                            pathlib.Path(workdir)
                            / mname
                            / f"{steps}steps"
                            / run_dir_name(method)
                            / f"n{n}_seed{seed}"
                        )
                        key = run_key(c, mname, steps, method, n, seed, src_acc)
                        rec = reused_record(run_dir, key)
                        if rec is not None:
                            records.append(rec)
                            print(
                                f"{mname:>16} {steps:>4} steps {n:>5} labels  "
                                f"{method_name(method):<28} seed {seed} acc "
                                f"{rec['accuracy']:.4f} (reused: {run_dir}/record.json)",
                                flush=True,
                            )
                            continue
                        out = run_method(
                            method, c, mname, opts, pretrained, data, n, seed, steps, run_dir
                        )
                        out.pop("state")
                        rec = {
                            "model": mname,
                            "budget": steps,
                            "method": method,
                            "labels": n,
                            "seed": seed,
                            **out,
                            "trainable_params": int(out["trainable_params"]),
                            "time_s": time.perf_counter() - t0,
                            "source_accuracy": src_acc,
                            "run_dir": None if method == "feature_extractor" else str(run_dir),
                        }
                        records.append(rec)
                        run_dir.mkdir(parents=True, exist_ok=True)
                        write_json(run_dir / "record.json", {"key": key, "record": rec})
                        print(
                            f"{mname:>16} {steps:>4} steps {n:>5} labels  "
                            f"{method_name(method):<28} seed {seed} acc {rec['accuracy']:.4f} "
                            f"(val {rec['val_accuracy']:.4f})  trainable "
                            f"{rec['trainable_params']:>10,}  {rec['time_s']:.1f}s",
                            flush=True,
                        )
    total = time.perf_counter() - t_all
    counts = list(c.label_counts)
    md = table(records, counts)
    md += (
        f"\nAccuracy: target test split, state selected on the {len(data.validation)}-example "
        f"target validation split (held out of the target train examples; the feature "
        f"extractor's linear head selects nothing); mean ± std over seeds. Total wall time "
        f"{total:.0f}s (data loading, pretraining unless cached, {len(records)} transfer "
        f"runs).\n"
    )
    phases = phase_table(records, counts)
    if phases:
        md += "\n## Per phase\n\n" + phases
    print("\n" + md)
    (pathlib.Path(workdir) / "results.md").write_text(md)
    out = {
        "config": c.to_dict(),
        "splits": data.provenance,
        "records": records,
        "total_time_s": total,
    }
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(out, f, indent=1, default=list)
    drew = plot(records, os.path.join(workdir, "accuracy.png"))
    drew = plot_curves(records, counts, os.path.join(workdir, "curves.png")) and drew
    print(
        f"wrote {workdir}/results.md, results.json"
        + (", accuracy.png, curves.png" if drew else " (no pictures: matplotlib is missing)")
    )
    return out


def main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    c = flags.FLAGS.config
    name = pathlib.Path(flags.FLAGS["config"].config_filename).stem
    workdir = flags.FLAGS.workdir or os.path.join("runs", name)
    try:
        study(c, workdir, list(c.quick_models if flags.FLAGS.quick else c.models))
    except Interrupted as e:
        print(f"interrupted: {e}", flush=True)
        raise SystemExit(128 + (e.signum or 15)) from None


if __name__ == "__main__":
    _define_flags()
    app.run(main)
