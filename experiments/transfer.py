"""Transfer-learning study: pretrain on some classes, transfer to others with few labels.

    python -m experiments.transfer --config experiments/configs/transfer_mnist.py --quick
    python -m experiments.transfer --config experiments/configs/transfer_mnist.py \
        --config.models='("resnet18_cifar",)' --workdir runs/transfer_resnet18

Every network here is trained by the one engine: :class:`jaxcnn.train.Trainer` running
:class:`TransferClassification`, the :class:`jaxcnn.tasks.Classification` task on in-memory
splits whose optimizer (the config's Adam with cosine decay) is put under a fine-tuning regime
of :mod:`jaxcnn.transfer` (:class:`Regime`: frozen parts, per-layer rates, unfreezing phases,
LoRA adapters).

The data (:func:`load_task`), from the dataset's published train and test splits:

- source: the source classes of train minus a seeded stratified validation hold-out
  (``source_validation_split``), tested on the source classes of test;
- target: a seeded stratified validation split (``validation_split``) is held out of the target
  classes of train first; the labelled subsets (nested: the first 50 of a seed's 200, ...) are
  drawn from the rest; the target classes of test are the target test set.

For each backbone: pretrain on the source classes (the state selected on the source validation
split is cached as ``<workdir>/pretrained/<model>.msgpack``; a rerun reuses it), then for each
number of labelled target examples compare, with the same step budget and optimizer (Adam,
cosine decay), the state evaluated on the target validation split ``evaluations`` times a run:

- ``scratch``: a fresh model, everything trains;
- ``feature_extractor``: frozen backbone; pooled last-stage features
  (``transfer.extract_features``) and a softmax-regression head (``transfer.fit_linear``, a fixed
  number of full-batch steps: not a network training loop, nothing selected);
- ``finetune``: new head, everything trains, learning rate ``lr * decay^(stages from head)``;
- ``gradual_unfreezing``: head only, then also the last backbone stage, then everything (one
  compiled step; the phase in force is picked on device from the step count);
- ``lora``: rank-r LoRA on every conv/dense kernel but the head, base weights frozen (and their
  BatchNorm statistics), new head trained.

The accuracy reported is the test accuracy of the state selected on the target validation split
(the best validation accuracy of the run's evaluations; ``early_stopping_patience`` may end a run
early); the test split is evaluated once, at the end, and selects nothing. Writes a Markdown
table (accuracy, trainable parameters, wall time per run) to stdout and to
``<workdir>/results.md``, the records to ``results.json`` and ``accuracy.png``; every engine run
leaves its ``metrics.json`` and ``train.log`` in ``<workdir>/<model>/<method>/n<labels>_seed<s>/``
(``<workdir>/<model>/pretrain/`` for pretraining).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags, logging

from jaxcnn import data as data_lib
from jaxcnn import models, transfer
from jaxcnn.tasks import Classification

_DEFAULT = str(pathlib.Path(__file__).parent / "configs" / "transfer_mnist.py")

METHOD_NAMES = {
    "scratch": "from scratch",
    "feature_extractor": "feature extractor (frozen)",
    "finetune": "fine-tune, layer-wise LR",
    "gradual_unfreezing": "gradual unfreezing",
    "lora": "LoRA",
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


# ----------------------------------------------------------------------------------- regimes


@dataclasses.dataclass(frozen=True)
class Regime:
    """What trains, and how fast, in a :class:`TransferClassification` run.

    - ``labels``: a label tree over the parameters (:func:`jaxcnn.transfer.label_params`);
      ``transfer.FROZEN`` parts get no update, hold no optimizer state and keep their BatchNorm
      statistics; ``lr_scales`` multiplies each label's update (``transfer.finetune``).
      ``None``: everything trains with the config's optimizer.
    - ``phases``: gradual unfreezing, ``((start step, patterns), ...)`` as
      :class:`jaxcnn.transfer.GradualUnfreezing` takes them (cumulative, the first at step 0);
      excludes ``labels``.
    - ``wrap``: ``apply_fn -> apply_fn`` under the model's (LoRA's ``lora.wrap``).
    """

    labels: Any = None
    lr_scales: Mapping[str, float] | None = None
    phases: Sequence[tuple[int, Sequence[str]]] = ()
    wrap: Callable | None = None

    def __post_init__(self):
        if self.phases and (self.labels is not None or self.lr_scales):
            raise ValueError("a Regime has either phases or labels (and lr_scales), not both")
        if self.lr_scales and self.labels is None:
            raise ValueError("lr_scales need labels")


def phased_optimizer(tx: optax.GradientTransformation, unfreeze) -> optax.GradientTransformation:
    """All phases of ``unfreeze`` (a :class:`jaxcnn.transfer.GradualUnfreezing`) as one
    optimizer with one state layout, for one compiled step: group ``phase{k}`` (the parameters
    that start training in phase ``k``) runs ``tx`` from the step its phase begins, with the
    fresh state it had at initialisation then (``optax.transforms.conditionally_mask`` gives
    zero updates and passes the inner state through unchanged before): the groups already
    training keep their moments, a newly unfrozen one starts its Adam moments and schedule
    afresh, as :class:`~jaxcnn.transfer.GradualUnfreezing` does. Parameters no phase names
    never train."""
    n = len(unfreeze.phases)
    labels = jax.tree.map(lambda k: f"phase{k}" if k < n else transfer.FROZEN, unfreeze.first)
    present = set(jax.tree.leaves(labels))
    groups = {}
    if transfer.FROZEN in present:
        groups[transfer.FROZEN] = optax.set_to_zero()
    for k, start in enumerate(unfreeze.starts):
        if f"phase{k}" not in present:
            continue
        groups[f"phase{k}"] = (
            tx
            if start == 0
            else optax.transforms.conditionally_mask(tx, lambda count, s=start: count >= s)
        )
    return optax.partition(groups, labels)


class TransferClassification(Classification):
    """:class:`jaxcnn.tasks.Classification` under a transfer :class:`Regime`: the task builds
    its optimizer from the config (optimizer, schedule, weight decay, clipping) and the regime
    puts it under ``jaxcnn.transfer``'s labels (``optax.partition``); the state's ``apply_fn``
    keeps the frozen parts' BatchNorm statistics fixed. With ``phases`` the train step picks the
    phase in force from ``state.step`` on device (``lax.switch`` over one ``apply_fn`` per
    phase), so a run compiles its step once.

    ``splits`` and ``variables`` as :class:`~jaxcnn.tasks.Classification` takes them (LoRA's
    adapters included in ``variables["params"]``); ``pictures=False`` skips the curves and
    confusion-matrix pictures of the many short runs.
    """

    def __init__(
        self,
        splits,
        variables: dict | None = None,
        regime: Regime | None = None,
        pictures: bool = False,
    ):
        super().__init__(splits=splits, variables=variables)
        self.regime = regime or Regime()
        self.pictures = pictures
        if (self.regime.phases or self.regime.labels is not None) and variables is None:
            raise ValueError("a transfer regime needs the starting variables")

    def _apply(self) -> Callable:
        r = self.regime
        return r.wrap(self.model.apply) if r.wrap is not None else self.model.apply

    def build(self, ctx) -> None:
        super().build(ctx)
        r = self.regime
        self.unfreeze = None
        if r.phases:
            self.unfreeze = transfer.GradualUnfreezing(
                r.phases, self.tx, self._apply(), self._given_variables
            )
            self.tx = phased_optimizer(self.tx, self.unfreeze)
        elif r.labels is not None:
            self.tx = transfer.finetune(self.tx, r.labels, r.lr_scales)

    def init_state(self):
        state = super().init_state()
        r = self.regime
        if self.unfreeze is not None:
            return state.replace(apply_fn=self.unfreeze.apply_fns[0])
        if r.labels is not None:
            fn = transfer.frozen_batchnorm(self._apply(), r.labels, state.batch_stats)
            return state.replace(apply_fn=fn)
        return state.replace(apply_fn=self._apply())

    def step_fn(self, state, batch):
        if self.unfreeze is None:
            return super().step_fn(state, batch)
        plain = super().step_fn

        def phase_step(apply_fn):
            def step(state, batch):
                new, sums = plain(state.replace(apply_fn=apply_fn), batch)
                return new.replace(apply_fn=state.apply_fn), sums

            return step

        starts = jnp.asarray(self.unfreeze.starts, jnp.int32)
        k = jnp.sum(state.step >= starts) - 1  # the phase in force at this step
        branches = [phase_step(fn) for fn in self.unfreeze.apply_fns]
        return jax.lax.switch(k, branches, state, batch)

    def trainable(self, params) -> int:
        """Parameters of ``params`` that the regime trains."""
        r = self.regime
        if self.unfreeze is not None:
            n = len(self.unfreeze.phases)
            trains = jax.tree.leaves(jax.tree.map(lambda k: k < n, self.unfreeze.first))
            return sum(int(np.size(p)) for p, t in zip(jax.tree.leaves(params), trains) if t)
        if r.labels is not None:
            return transfer.count_trainable(params, r.labels)
        return transfer.count_params(params)

    def finish(self, state, result, workdir):
        if self.pictures:
            return super().finish(state, result, workdir)
        return None


def make_regime(method: str, c, model, variables: dict, shape, steps: int, seed: int):
    """``(variables, Regime)`` of a transfer ``method`` from the pretrained ``variables`` (with
    the new head): LoRA adds its adapters to the parameters."""
    params = variables["params"]
    names = transfer.stages(model, shape)
    if method == "finetune":
        labels = transfer.label_params(params, transfer.stage_rules(names))
        return variables, Regime(labels, transfer.layerwise_decay(names, c.layer_decay))
    if method == "gradual_unfreezing":
        starts = [int(round(f * steps)) for f in c.unfreeze_at]
        return variables, Regime(phases=tuple(zip(starts, [["head"], [names[-2]], [".*"]])))
    if method == "lora":
        lora = transfer.LoRA(rank=c.lora_rank, alpha=c.lora_alpha, exclude=("head",))
        params = lora.init(jax.random.key(seed), params)
        labels = transfer.label_params(
            params, [(".*/lora_[ab]", "lora"), ("head", "head"), (".*", None)]
        )
        regime = Regime(labels, {"lora": c.lora_lr_multiplier}, wrap=lora.wrap)
        return {**variables, "params": params}, regime
    raise ValueError(f"no engine regime for method {method!r}")


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
    result = train_run(task, cfg, run_dir, log=False, keep_checkpoints=True)
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


def run_method(method, c, name, opts, pretrained, data: TransferData, n, seed, run_dir=None):
    """One transfer run; returns a dict: ``accuracy`` (test accuracy of the state selected on
    the target validation split), ``last_accuracy`` (of the last state), ``val_accuracy`` (of
    the selected one), ``selected_step``, ``steps``, ``trainable_params``; and ``state``, the
    last state of an engine run (None for the feature extractor)."""
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
            "state": None,
        }
    if method not in METHOD_NAMES:
        raise ValueError(f"unknown method {method!r}; expected one of {list(METHOD_NAMES)}")
    bs = min(opts.batch_size, n)
    splits = data.target_splits(train, opts.steps, bs, seed)
    if method == "scratch":
        variables, regime = None, Regime()
    else:
        start = transfer.replace_head(pretrained, model, shape, seed=seed)
        variables, regime = make_regime(method, c, model, start, shape, opts.steps, seed)
    cfg = engine_config(
        c,
        data,
        name,
        opts,
        epochs=1,
        batch_size=bs,
        learning_rate=opts.lr,
        seed=seed,
        eval_every_steps=max(opts.steps // max(int(c.evaluations), 1), 1),
        validation_split=c.validation_split,
        description=f"transfer study: {method}, {n} labels, seed {seed}",
    )
    task = TransferClassification(splits, variables, regime)
    if run_dir is None:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            result = train_run(task, cfg, pathlib.Path(tmp) / "run")
    else:
        result = train_run(task, cfg, run_dir, keep_checkpoints=c.keep_run_checkpoints)
    sel = result["selected"]
    state = result["state"]
    return {
        "accuracy": float(sel["test_accuracy"]),
        "last_accuracy": float(result["test_accuracy"]),
        "val_accuracy": float(sel["val_accuracy"]),
        "selected_step": int(sel["step"]),
        "steps": int(result["steps"]),
        "trainable_params": task.trainable(state.params),
        "state": state,
    }


# ----------------------------------------------------------------------------------- report


def _mean(records, key):
    v = np.array([r[key] for r in records], float)
    return float(v.mean()), float(v.std()) if len(v) > 1 else None


def table(records, models_run, counts) -> str:
    """One Markdown table per model; accuracy is the test accuracy of the state selected on the
    target validation split, mean over seeds (± std when several), time the mean wall time of
    one run (compilation included)."""
    lines = []
    for name in models_run:
        rows = [r for r in records if r["model"] == name]
        if not rows:
            continue
        lines += [
            f"**{name}** (pretrained on source classes: test accuracy "
            f"{rows[0]['source_accuracy']:.4f})",
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

            def acc(rs):
                if not rs:
                    return "-"
                mean, std = _mean(rs, "accuracy")
                return f"{mean:.3f}" + (f" ± {std:.3f}" if std is not None else "")

            lines.append(
                f"| {METHOD_NAMES.get(m, m)} | {', '.join(f'{t:,}' for t in tp)} | "
                + " | ".join(acc(runs[n]) for n in counts)
                + " | "
                + " | ".join(
                    f"{_mean(runs[n], 'time_s')[0]:.1f}" if runs[n] else "-" for n in counts
                )
                + " |"
            )
        lines.append("")
    return "\n".join(lines)


def plot(records, models_run, path) -> bool:
    """Accuracy vs labelled examples, one panel per model (``matplotlib.figure.Figure``, no
    pyplot); False when matplotlib is not installed (the ``plots`` extra)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return False
    fig = Figure(figsize=(5.5 * len(models_run), 4))
    axes = fig.subplots(1, len(models_run), squeeze=False)
    for ax, name in zip(axes[0], models_run):
        rows = [r for r in records if r["model"] == name]
        for m in dict.fromkeys(r["method"] for r in rows):
            ns = sorted({r["labels"] for r in rows if r["method"] == m})
            means = [
                _mean([r for r in rows if r["method"] == m and r["labels"] == n], "accuracy")[0]
                for n in ns
            ]
            ax.plot(ns, means, marker="o", label=METHOD_NAMES.get(m, m))
        ax.set_xscale("log")
        ax.set_xlabel("labelled target examples")
        ax.set_ylabel("test accuracy (selected on validation)")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def study(c, workdir, models_run: Sequence[str]) -> dict:
    """Run the study of config ``c`` for ``models_run`` in ``workdir``; writes results.md,
    results.json and accuracy.png there and returns what results.json holds."""
    os.makedirs(workdir, exist_ok=True)
    if c.compilation_cache:  # runs differing only in data/seed reuse compiled steps
        jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, c.compilation_cache))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
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
        for n in c.label_counts:
            for method in c.methods:
                for seed in opts.get("seeds") or c.seeds:  # a labelled subset + init each
                    t0 = time.perf_counter()
                    run_dir = pathlib.Path(workdir) / mname / method / f"n{n}_seed{seed}"
                    out = run_method(method, c, mname, opts, pretrained, data, n, seed, run_dir)
                    out.pop("state")
                    rec = {
                        "model": mname,
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
                    print(
                        f"{mname:>16} {n:>5} labels  {METHOD_NAMES[method]:<28} seed {seed} "
                        f"acc {rec['accuracy']:.4f} (val {rec['val_accuracy']:.4f})  trainable "
                        f"{rec['trainable_params']:>10,}  {rec['time_s']:.1f}s",
                        flush=True,
                    )
    total = time.perf_counter() - t_all
    md = table(records, models_run, list(c.label_counts))
    md += (
        f"\nAccuracy: target test split, state selected on the {len(data.validation)}-example "
        f"target validation split (held out of the target train examples; the feature "
        f"extractor's linear head selects nothing). Total wall time {total:.0f}s (data loading, "
        f"pretraining unless cached, {len(records)} transfer runs).\n"
    )
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
    drew = plot(records, models_run, os.path.join(workdir, "accuracy.png"))
    print(
        f"wrote {workdir}/results.md, results.json"
        + (", accuracy.png" if drew else " (no accuracy.png: matplotlib is not installed)")
    )
    return out


def main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    c = flags.FLAGS.config
    name = pathlib.Path(flags.FLAGS["config"].config_filename).stem
    workdir = flags.FLAGS.workdir or os.path.join("runs", name)
    study(c, workdir, list(c.quick_models if flags.FLAGS.quick else c.models))


if __name__ == "__main__":
    _define_flags()
    app.run(main)
