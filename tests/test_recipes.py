"""The training recipes' ingredients as config keys of the classification task (docs/recipes.md):
Mixup/CutMix in the train step, the weight EMA (updated, evaluated, selected on, resumed), the
optimizer keys, stochastic depth, top-5, throughput, the learning rate and TensorBoard logs, and
the recipe configs of experiments/configs run end to end on small local data."""

from __future__ import annotations

import json
import os
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments.benchmark_recipes import QUICK_MODELS
from jaxcnn import data as data_lib
from jaxcnn.checkpoint import Checkpointer
from jaxcnn.tasks import Classification
from jaxcnn.tasks.classification import EMA_FIELDS, MIXUP_FIELDS
from jaxcnn.train import mesh
from jaxcnn.train.config import OPTIMIZER_FIELDS, ConfigError, schema, validate
from jaxcnn.train.ema import EMA_DEFAULTS
from jaxcnn.train.mixup import MIXUP_DEFAULTS, mix_batch, mixup_from_config, soft_cross_entropy
from jaxcnn.train.optim import (
    learning_rate_at,
    make_optimizer,
    make_schedule,
    optimizer_from_config,
)
from jaxcnn.train.trainer import Context, Trainer

sys.path.insert(0, os.path.dirname(__file__))
from classification_run import small_config, train  # noqa: E402
from tiny_task import TinyTask, base_config  # noqa: E402

FIELDS = schema(Classification.fields)


def metrics(tmp_path, name="run"):
    text = (tmp_path / name / "metrics.json").read_text()
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON: {c}"))


def built(tmp_path, task=None, **kw) -> Classification:
    """The task of ``small_config(**kw)`` after ``build`` (data read, model and optimizer made)."""
    t = Trainer(task or Classification(), small_config(**kw), tmp_path / "built")
    t.task.build(Context(cfg=t.cfg, dp=mesh.setup(t.cfg), workdir=str(tmp_path / "built")))
    return t.task


def first_batch(task) -> dict:
    b = next(task.train_batches(None))
    return {k: jnp.asarray(v) for k, v in b.items() if k != "id"}


# -- the schema ------------------------------------------------------------------------------
def test_recipe_keys_have_the_library_defaults_and_are_listed_by_help_config(capsys):
    assert {k: f.default for k, f in MIXUP_FIELDS.items()} == {
        k: v for k, v in MIXUP_DEFAULTS.items() if k != "label_smoothing"
    }
    assert {k: f.default for k, f in EMA_FIELDS.items() if k != "select_on_ema"} == EMA_DEFAULTS
    from experiments import train as train_script

    assert train_script.main(["--help_config"]) == 0
    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines() if line.strip()}
    new = {*MIXUP_FIELDS, *EMA_FIELDS, *OPTIMIZER_FIELDS, "drop_path_rate", "tensorboard"}
    assert new <= listed and new <= set(FIELDS)


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd", "rmsprop"])
def test_default_keys_build_the_optimizer_runs_had_before(name):
    """With the new keys at their defaults, optimizer_from_config is the optimizer the task
    built before them (make_optimizer with COMMON's keys alone): existing configs, same runs."""
    cfg = validate(
        dict(
            optimizer=name,
            learning_rate=0.05,
            weight_decay=1e-3,
            grad_clip=1.0,
            epochs=2,
            warmup_epochs=0.5,
        ),
        FIELDS,
    )
    tx, sched = optimizer_from_config(cfg, steps_per_epoch=4)
    old_sched = make_schedule("cosine", 0.05, 8, 2)
    old = make_optimizer(name, old_sched, 1e-3, grad_clip=1.0)
    params = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3)}
    s_new, s_old, p_new, p_old = tx.init(params), old.init(params), params, params
    for i in range(5):
        g = jax.tree.map(lambda p, i=i: jnp.sin(p + i), params)
        u_new, s_new = tx.update(g, s_new, p_new)
        u_old, s_old = old.update(g, s_old, p_old)
        p_new, p_old = optax.apply_updates(p_new, u_new), optax.apply_updates(p_old, u_old)
        assert learning_rate_at(sched, i) == learning_rate_at(old_sched, i)
    chex.assert_trees_all_equal(p_new, p_old)


# -- Mixup / CutMix ----------------------------------------------------------------------------
def test_mixup_cutmix_mix_the_batch_and_the_loss_takes_the_soft_targets(tmp_path):
    # classic LeNet-5: no BatchNorm, no dropout, so the step's forward pass can be replayed
    task = built(tmp_path, model="lenet5", mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1)
    state, batch = task.init_state(), first_batch(task)
    new, sums = jax.jit(task.step_fn)(state, batch)
    cfg = mixup_from_config(task.ctx.cfg)

    @jax.jit  # the step replayed by hand (jitted: eager dispatch compiles every op alone)
    def replay(state, batch):
        key = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), 2)
        images, targets, lam = mix_batch(key, batch["image"], batch["label"], 10, cfg)

        def loss(params):
            logits = state.apply_fn({"params": params}, images, train=True)
            return soft_cross_entropy(logits, targets)

        logits = state.apply_fn(state.variables, images, train=True)
        want = state.apply_gradients(jax.grad(loss)(state.params)).params
        return images, targets, lam, logits, loss(state.params), want

    images, targets, lam, logits, loss, want = replay(state, batch)
    assert 0 < float(lam) < 1 and not np.array_equal(images, batch["image"])  # mixed
    # label smoothing folded in once: s / K off the two mixed labels, rows summing to 1
    assert float(targets.min()) == pytest.approx(0.1 / 10)
    np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(sums["loss_sum"], loss * 32, rtol=1e-5)
    # train accuracy: the prediction against the mixed target's dominant label
    dominant = np.argmax(np.asarray(targets), -1)
    assert float(sums["correct"]) == float(np.sum(np.argmax(logits, -1) == dominant))
    # the update is that soft-target loss's gradient (label smoothing folded in once)
    chex.assert_trees_all_close(new.params, want, rtol=1e-5, atol=1e-6)


def test_mixup_off_keeps_the_integer_label_loss(tmp_path):
    task = built(tmp_path, model="lenet5", label_smoothing=0.1, mixup_prob=1.0)
    assert not task.mix.enabled
    state, batch = task.init_state(), first_batch(task)
    new, sums = jax.jit(task.step_fn)(state, batch)
    x, y = batch["image"], batch["label"]

    def loss(params):  # the cross-entropy with smoothed one-hot labels, as before the keys
        logits = state.apply_fn({"params": params}, x, train=True)
        return optax.softmax_cross_entropy(
            logits, optax.smooth_labels(jax.nn.one_hot(y, 10), 0.1)
        ).mean()

    want = state.apply_gradients(jax.grad(loss)(state.params)).params
    chex.assert_trees_all_close(new.params, want, rtol=1e-5, atol=1e-6)
    logits = state.apply_fn(state.variables, x, train=True)  # reported: the plain loss
    plain = optax.softmax_cross_entropy_with_integer_labels(logits, y).sum()
    np.testing.assert_allclose(sums["loss_sum"], plain, rtol=1e-5)


# -- weight EMA --------------------------------------------------------------------------------
# a narrow CIFAR-stem ResNet-18 on the digits: a small model with BatchNorm statistics
SMALL_BN = dict(model="resnet18_cifar", model_kwargs={"num_filters": 4, "in_channels": 1})


def test_ema_follows_every_optimizer_update_in_the_step(tmp_path):
    task = built(tmp_path, ema_decay=0.75, **SMALL_BN)
    state, batch = task.init_state(), first_batch(task)
    assert set(state.ema) == {"params", "batch_stats"}
    step = jax.jit(task.step_fn)
    s1, _ = step(state, batch)
    chex.assert_trees_all_equal(s1.ema, s1.variables)  # the first update copies the weights
    s2, _ = step(s1, batch)
    want = jax.tree.map(lambda e, n: 0.75 * e + 0.25 * n, s1.ema, s2.variables)
    chex.assert_trees_all_close(s2.ema, want, rtol=1e-6, atol=1e-7)
    assert not np.allclose(s2.ema["params"]["head"]["kernel"], s2.params["head"]["kernel"])
    stats = jax.tree.leaves(s2.ema["batch_stats"]), jax.tree.leaves(s2.batch_stats)
    assert not all(np.allclose(a, b) for a, b in zip(*stats))


def test_ema_evaluated_beside_the_raw_weights_and_selected_on(tmp_path):
    res, tr = train(tmp_path, ema_decay=0.9)
    m = metrics(tmp_path)
    for h in m["history"]:
        for k in ("val_accuracy", "val_ema_accuracy", "val_ema_loss", "val_ema_top5_accuracy"):
            assert 0 <= h[k] <= (1 if "accuracy" in k else 100), k
    final = m["final"]
    assert 0 <= final["test_accuracy"] <= 1 and 0 <= final["test_ema_accuracy"] <= 1
    assert final["test_ema_accuracy"] != final["test_accuracy"] or (
        final["test_ema_loss"] != final["test_loss"]
    )
    sel = final["selected"]
    assert sel["by"] == "val_ema_accuracy"
    best = max(h["val_ema_accuracy"] for h in m["history"])
    assert sel["step"] == next(h["step"] for h in m["history"] if h["val_ema_accuracy"] == best)
    # the selected model's test figure is its checkpoint's EMA weights on the test split
    ck = Checkpointer(tmp_path / "run" / "checkpoints")
    try:
        chosen = ck.restore(res["state"], step=sel["step"]).state
    finally:
        ck.close()
    as_raw = chosen.replace(params=chosen.ema["params"])  # LeNet-5: no batch statistics
    assert tr.task.evaluate(as_raw, "test")["accuracy"] == sel["test_ema_accuracy"]


def test_resume_keeps_the_ema_bit_identical(tmp_path):
    full, _ = train(tmp_path, "full", ema_decay=0.9, ema_warmup=True)
    part, _ = train(tmp_path, "part", stop_at_step=13, ema_decay=0.9, ema_warmup=True)
    assert part["preempted"]
    resumed, _ = train(tmp_path, "part", resume=True, ema_decay=0.9, ema_warmup=True)
    chex.assert_trees_all_equal(resumed["state"].ema, full["state"].ema)
    chex.assert_trees_all_equal(resumed["state"].params, full["state"].params)
    assert resumed["test_ema_accuracy"] == full["test_ema_accuracy"]


def test_select_on_ema_key():
    def sel(**kw):
        return Classification().selection_for(validate(kw, FIELDS))

    assert sel() == ("accuracy", "max")
    assert sel(ema_decay=0.99) == ("ema_accuracy", "max")  # timm's recipes select on the EMA
    assert sel(ema_decay=0.99, select_on_ema=False) == ("accuracy", "max")
    with pytest.raises(ConfigError, match="select_on_ema.*needs one"):
        Trainer(Classification(), {"select_on_ema": True}, "unused")


class _EmaTiny(TinyTask):
    """The tiny task with forced validation figures: the EMA's rise when the raw ones fall."""

    def __init__(self, ema_by_epoch):
        super().__init__()
        self.ema_by_epoch = ema_by_epoch

    def selection_for(self, cfg):
        return ("ema_accuracy", "max")

    def evaluate(self, state, split):
        out = super().evaluate(state, split)
        if split == "validation":
            epoch = int(state.step) // self.steps_per_epoch
            out["ema_accuracy"] = self.ema_by_epoch[epoch]
            out["accuracy"] = 1.0 - self.ema_by_epoch[epoch]
        return out


def test_the_engine_selects_and_stops_on_the_task_chosen_metric(tmp_path):
    task = _EmaTiny({1: 0.5, 2: 0.9, 3: 0.4})
    res = Trainer(task, base_config(keep_best=1), tmp_path / "a").run()
    assert res["selected"]["by"] == "val_ema_accuracy" and res["selected"]["step"] == 24
    assert res["selected"]["val_ema_accuracy"] == 0.9
    # early stopping on the EMA's figure although the raw accuracy keeps rising
    task = _EmaTiny({i: 0.5 - 0.01 * i for i in range(1, 40)})
    res = Trainer(task, base_config(epochs=30, early_stopping_patience=2), tmp_path / "b").run()
    assert res["stopped_early"] and res["epochs_run"] == 3


# -- optimizer keys ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["adam", "adamw", "sgd", "rmsprop", "lamb", "lars"])
def test_every_optimizer_trains_through_the_task(tmp_path, name):
    task = built(tmp_path, model="lenet5", optimizer=name, weight_decay=1e-4, learning_rate=1e-2)
    state, batch = task.init_state(), first_batch(task)
    new, sums = jax.jit(task.step_fn)(state, batch)
    assert np.isfinite(float(sums["loss_sum"]))
    moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), new.params, state.params)
    assert all(jax.tree.leaves(moved))


def _decayed(task, params) -> dict:
    """``{leaf name: whether a zero-gradient update moves it}`` over all leaves (only weight
    decay moves a parameter when the gradient is zero)."""

    @jax.jit  # one program, not every optimizer op dispatched (and compiled) alone
    def update(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return task.tx.update(zeros, task.tx.init(params), params)[0]

    updates = update(params)
    out: dict = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(updates)[0]:
        out.setdefault(path[-1].key, set()).add(bool(np.any(np.asarray(leaf) != 0)))
    return out


@pytest.mark.parametrize("name", ["adamw", "sgd", "lamb", "lars"])
def test_decay_mask_keeps_weight_decay_off_biases_and_norm_scales(tmp_path, name):
    kw = dict(optimizer=name, weight_decay=0.5, learning_rate=0.1, momentum=0.0, **SMALL_BN)
    on = built(tmp_path, decay_mask=True, **kw)
    shapes = jax.eval_shape(on.init_state).params  # the tree only: nothing initialised
    params = jax.tree.map(lambda a: jnp.ones(a.shape, a.dtype), shapes)  # biases non-zero too
    assert _decayed(on, params) == {"kernel": {True}, "bias": {False}, "scale": {False}}
    off = built(tmp_path, decay_mask=False, **kw)  # default: every parameter decays
    assert _decayed(off, params) == {"kernel": {True}, "bias": {True}, "scale": {True}}


@pytest.mark.parametrize("nesterov", [True, False])
def test_momentum_and_nesterov_reach_sgd(tmp_path, nesterov):
    task = built(
        tmp_path,
        optimizer="sgd",
        momentum=0.5,
        nesterov=nesterov,
        schedule="constant",
        learning_rate=0.1,
    )
    ref = optax.sgd(0.1, 0.5, nesterov=nesterov)
    params = {"w": jnp.ones(3)}
    s, r = task.tx.init(params), ref.init(params)
    for g in (jnp.array([1.0, 2.0, 3.0]), jnp.array([-1.0, 0.5, 2.0])):
        u, s = task.tx.update({"w": g}, s, params)
        want, r = ref.update({"w": g}, r, params)
    np.testing.assert_allclose(u["w"], want["w"], rtol=1e-6)


def test_optimizer_keys_that_cannot_apply_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="'nesterov': only sgd and lars"):
        built(tmp_path, optimizer="adam", nesterov=True)
    with pytest.raises(ConfigError, match="'min_lr': applies to the cosine schedule only"):
        built(tmp_path, schedule="step", min_lr=1e-5)
    with pytest.raises(ConfigError, match="'optimizer': expected one of"):
        built(tmp_path, optimizer="lbfgs")


def test_drop_path_rate_reaches_the_models_that_have_it(tmp_path):
    vit = dict(
        model="vit_ti_16",
        model_kwargs={"img_size": 32, "patch_size": 8, "depth": 2},
        input_size=(32, 32),
        channels=3,
    )
    assert built(tmp_path, drop_path_rate=0.25, **vit).model.drop_path_rate == 0.25
    assert built(tmp_path, **vit).model.drop_path_rate == 0.0  # -1: the model's default
    with pytest.raises(ConfigError, match="model 'lenet5_modern' has no stochastic depth"):
        built(tmp_path, drop_path_rate=0.1)
    with pytest.raises(ConfigError, match="both set"):
        built(tmp_path, drop_path_rate=0.1, **{**vit, "model_kwargs": {"drop_path_rate": 0.2}})


def test_learning_rate_and_throughput_in_the_history(tmp_path):
    train(tmp_path, warmup_epochs=1.0, epochs=3)
    hist = metrics(tmp_path)["history"]
    sched = make_schedule("cosine", 2e-3, 27, 9)  # 300 // 32 = 9 steps per epoch
    assert [h["lr"] for h in hist] == [learning_rate_at(sched, h["step"] - 1) for h in hist]
    assert hist[0]["lr"] == pytest.approx(2e-3 * 8 / 9) and hist[1]["lr"] < hist[0]["lr"]
    assert all(h["train_images_per_s"] > 0 for h in hist)
    assert all(0 <= h["train_data_wait_fraction"] < 1 for h in hist)


# -- metrics and TensorBoard ---------------------------------------------------------------------
def test_top5_in_validation_and_test_against_numpy(tmp_path):
    res, tr = train(tmp_path, epochs=1)
    m = metrics(tmp_path)
    assert m["history"][0]["val_top5_accuracy"] >= m["history"][0]["val_accuracy"]
    task, state = tr.task, res["state"]
    hits = n = 0
    for b in data_lib.eval_iterator(task.data.test, task.pre, 64):
        logits = np.asarray(state.apply_fn(state.variables, b["image"], train=False))
        top5 = np.argsort(-logits, -1)[:, :5]
        hits += np.sum((top5 == b["label"][:, None]).any(-1) * b["mask"])
        n += b["mask"].sum()
    assert m["final"]["test_top5_accuracy"] == pytest.approx(hits / n)
    assert m["final"]["test_top5_accuracy"] > m["final"]["test_accuracy"]


def test_no_top5_with_five_classes_or_fewer(tmp_path):
    rng = np.random.default_rng(0)
    src = data_lib.ArraySource(rng.integers(0, 256, (96, 28, 28, 1), np.uint8), np.arange(96) % 5)
    splits = data_lib.Splits(
        train=data_lib.Subset(src, np.arange(64)),
        validation=data_lib.Subset(src, np.arange(64, 80)),
        test=data_lib.Subset(src, np.arange(80, 96)),
        num_classes=5,
        class_names=tuple("abcde"),
        name="arrays",
        provenance={"train": "random", "validation": "random", "test": "random"},
    )
    train(tmp_path, task=Classification(splits=splits), epochs=1, mean=(0.5,), std=(0.25,))
    m = metrics(tmp_path)
    assert "val_accuracy" in m["history"][0] and "val_top5_accuracy" not in m["history"][0]
    assert "test_top5_accuracy" not in m["final"]


def test_tensorboard_event_files_hold_the_history(tmp_path):
    pytest.importorskip("tensorboardX")
    from jaxcnn.train.logger import read_scalars

    train(tmp_path, tensorboard=True, log_every_steps=2, ema_decay=0.9)
    hist = metrics(tmp_path)["history"]
    s = read_scalars(str(tmp_path / "run" / "tensorboard"))
    for tag, key in [
        ("val/accuracy", "val_accuracy"),
        ("val/ema_accuracy", "val_ema_accuracy"),
        ("val/top5_accuracy", "val_top5_accuracy"),
        ("train/images_per_s", "train_images_per_s"),
    ]:
        assert s[tag] == [(h["step"], pytest.approx(h[key])) for h in hist], tag
    # every log_every_steps: the learning rate and the running train means
    lr_steps = [step for step, _ in s["lr"]]
    assert {2, 4, 6, 8, 9, 10, 18, 27} <= set(lr_steps)
    assert dict(s["lr"])[9] == pytest.approx(hist[0]["lr"])
    assert {step for step, _ in s["train/loss"]} == set(lr_steps)


def test_tensorboard_without_tensorboardx_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'jaxcnn\[tensorboard\]'") as e:
        train(tmp_path, tensorboard=True)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "run" / "checkpoints").exists()  # before any work


# -- the recipe configs --------------------------------------------------------------------------
# each recipe's model, small enough for 32x32 inputs (the same as benchmark_recipes --quick)
RECIPES = {name: {"model_kwargs": kw} for name, kw in QUICK_MODELS.items()}
# ResNet-50's recipe on ResNet-18 (depth is a size here; ResNet-50 itself compiles for ~20 s on
# CPU): the same ingredients on a BatchNorm ResNet. test_recipe_config_with_its_real_model_at_32px
# (slow) runs it on ResNet-50.
RECIPES["resnet50_imagenet"] = {**RECIPES["resnet50_imagenet"], "model": "resnet18"}


def _recipe(name: str, **sizes) -> dict:
    from experiments.cli import CONFIGS, load_config_file

    c = load_config_file(str(CONFIGS / f"{name}.py"))
    c.update(
        dataset="digits",  # gray 8x8 digits resized to 32x32 and repeated to 3 channels
        num_train=96,
        validation_split=32,
        test_split=64,
        batch_size=16,
        eval_batch_size=64,
        epochs=2,
        input_size=(32, 32),
        channels=3,
        num_workers=0,
        progress=False,
    )
    c.update(sizes)
    return c


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_config_is_valid_and_cites_its_source(name):
    from experiments.cli import CONFIGS, load_config_file

    path = CONFIGS / f"{name}.py"
    t = Trainer(Classification(), load_config_file(str(path)), "unused")  # validates
    assert t.cfg["dataset"] in ("tfds:imagenet2012", "tfds:cifar10")
    doc = path.read_text().split('"""')[1]
    assert "https://" in doc and "python -m experiments.train --config" in doc


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_config_runs_end_to_end_on_small_data(tmp_path, name):
    """Each recipe with only its sizes overridden (data, batch, epochs, input size, model
    width/depth): every ingredient it switches on runs, in one compiled step."""
    cfg = _recipe(name, **RECIPES[name])
    res = Trainer(Classification(), cfg, tmp_path).run()
    assert res["compilations"] == {"train_step": 1}
    assert np.isfinite(res["test_loss"]) and 0 <= res["test_top5_accuracy"] <= 1
    m = metrics(tmp_path, "")
    assert all(h["lr"] > 0 and h["train_images_per_s"] > 0 for h in m["history"])
    if cfg.get("ema_decay"):
        assert "test_ema_accuracy" in res and res["selected"]["by"] == "val_ema_accuracy"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet50_imagenet", "resnet18_cifar10", "convnext_t_imagenet"])
def test_recipe_config_with_its_real_model_at_32px(tmp_path, name):
    cfg = _recipe(name, epochs=1, model_kwargs={"in_channels": 3})
    res = Trainer(Classification(), cfg, tmp_path).run()
    assert res["compilations"] == {"train_step": 1} and np.isfinite(res["test_accuracy"])
