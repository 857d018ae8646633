"""jaxcnn.transfer: labels, freezing with fixed BatchNorm statistics, per-layer rates, gradual
unfreezing, head replacement, features + linear probes, LoRA; and the transfer study
(experiments/transfer.py) on the engine: its splits, its regimes as Classification tasks on the
Trainer, and its tiny configuration end to end."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcnn import models, transfer
from jaxcnn.train import make_train_step

SHAPE = (1, 8, 8, 3)


class ConvBN(nn.Module):
    features: int
    stride: int = 1
    bn_kwarg: bool = False  # pass use_running_average at call time instead of as a field

    @nn.compact
    def __call__(self, x, train):
        x = nn.Conv(self.features, (3, 3), self.stride, use_bias=False, name="conv")(x)
        if self.bn_kwarg:
            return nn.BatchNorm(momentum=0.9, name="bn")(x, use_running_average=not train)
        return nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(x)


class Block(nn.Module):
    features: int
    stride: int = 1

    @nn.compact
    def __call__(self, x, train):
        y = nn.relu(ConvBN(self.features, self.stride, name="conv1")(x, train))
        y = ConvBN(self.features, name="conv2")(y, train)
        if self.stride != 1 or x.shape[-1] != self.features:
            x = nn.Conv(self.features, (1, 1), self.stride, name="downsample")(x)
        return nn.relu(x + y)


class TinyResNet(nn.Module):
    """A ResNet-like test model: stem, stage1, stage2 (BatchNorm everywhere), head."""

    num_classes: int = 10
    width: int = 4
    features_only: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(ConvBN(self.width, bn_kwarg=True, name="stem")(x, train))
        f1 = Stage(self.width, 1, name="stage1")(x, train)
        f2 = Stage(2 * self.width, 2, name="stage2")(f1, train)
        if self.features_only:
            return [f1, f2]
        return nn.Dense(self.num_classes, name="head")(f2.mean(axis=(1, 2)))


class Stage(nn.Module):
    features: int
    stride: int

    @nn.compact
    def __call__(self, x, train):
        x = Block(self.features, self.stride, name="block0")(x, train)
        return Block(self.features, 1, name="block1")(x, train)


def _init(model, seed=0, shape=SHAPE):
    return model.init(jax.random.key(seed), jnp.zeros(shape), train=False)


def _batch(n=8, shape=SHAPE, classes=10, seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return {
        "image": jax.random.normal(k1, (n, *shape[1:])),
        "label": jax.random.randint(k2, (n,), 0, classes),
    }


def _flat(tree):
    return dict(zip(transfer.tree_paths(tree), jax.tree.leaves(tree)))


def _snap(tree):  # host copies (the train step donates, i.e. deletes, its input state)
    return {k: np.array(x) for k, x in _flat(tree).items()}


def _same_bits(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.tobytes() == b.tobytes()


# ---------------------------------------------------------------- labels, stages, counts


def test_stages_in_creation_order():
    lenet = models.create_model("lenet5_modern")
    v = _init(lenet, shape=(1, 28, 28, 1))
    assert transfer.stages(v["params"]) == ["c1", "c3", "c5", "f6", "head"]
    assert transfer.stages(lenet, (1, 28, 28, 1)) == ["c1", "c3", "c5", "f6", "head"]
    assert transfer.stages("lenet5") == ["c1", "c3", "c5", "f6", "head"]
    tiny = TinyResNet()
    assert transfer.stages(tiny, SHAPE) == ["stem", "stage1", "stage2", "head"]
    traced = jax.eval_shape(lambda: _init(tiny))["params"]  # JAX sorts dict keys in outputs
    with pytest.raises(ValueError, match="creation order"):
        transfer.stages(traced)
    order = transfer.param_order(tiny, SHAPE)
    assert order[0].startswith("stem/") and order[-1].startswith("head/")


def test_label_rules_first_match_prefix_and_errors():
    params = _init(TinyResNet())["params"]
    labels = transfer.label_params(
        params, [("head", "head"), (".*/bn", "bn"), ("stage2", "s2"), (".*", None)]
    )
    flat = _flat(labels)
    assert flat["head/kernel"] == "head"
    assert flat["stage2/block0/conv1/bn/scale"] == "bn"  # first match wins over "stage2"
    assert flat["stage2/block0/conv1/conv/kernel"] == "s2"
    assert flat["stem/conv/kernel"] == transfer.FROZEN  # None means frozen
    # A stage name matches whole components only; dict rules work like lists.
    assert not transfer.match("stage", "stage1/block0/conv1/conv/kernel")
    assert transfer.match("stage1", "stage1/block0/conv1/conv/kernel")
    assert _flat(transfer.label_params(params, {"head": "h", ".*": "x"}))["head/bias"] == "h"
    with pytest.raises(ValueError, match=r"match no rule: .*stem/conv/kernel"):
        transfer.label_params(params, [("head", "head"), ("stage.", "s")])


def test_count_trainable_lenet_new_head():
    lenet = models.create_model("lenet5_modern")
    v = _init(lenet, shape=(1, 28, 28, 1))
    for n in (3, 7):
        new = transfer.replace_head(v, lenet, (1, 28, 28, 1), num_classes=n)
        labels = transfer.label_params(new["params"], [("head", "head"), (".*", None)])
        assert transfer.count_trainable(new["params"], labels) == 84 * n + n
        assert "trainable" in transfer.describe(new["params"], labels)


@pytest.mark.parametrize(
    "name,shape", [("resnet18", (1, 224, 224, 3)), ("resnet18_cifar", (1, 32, 32, 3))]
)
def test_resnet18_frozen_backbone_new_10_class_head_has_5130_trainable(name, shape):
    if name not in models.list_models():
        pytest.skip(f"{name} is not registered yet")
    params = models.abstract_variables(models.create_model(name, num_classes=10), shape)["params"]
    labels = transfer.label_params(params, [("head", "head"), (".*", None)])
    assert transfer.count_trainable(params, labels) == 512 * 10 + 10 == 5130


# ---------------------------------------------------------------- freezing + frozen BN


def test_frozen_params_and_batchnorm_stats_are_bit_identical():
    model = TinyResNet()
    v = _init(model)
    rules = [("stage2", "stage2"), ("head", "head"), (".*", None)]
    state = transfer.create_state(model, v, optax.adam(1e-2), rules)
    step = make_train_step()
    p0, s0 = _snap(v["params"]), _snap(v["batch_stats"])
    for i in range(3):
        state, _ = step(state, _batch(seed=i))
    p1, s1 = _snap(state.params), _snap(state.batch_stats)
    for k in p0:
        frozen = k.startswith(("stem", "stage1"))
        assert _same_bits(p0[k], p1[k]) == frozen, k
    for k in s0:
        frozen = k.startswith(("stem", "stage1"))  # stem passes use_running_average as kwarg
        assert _same_bits(s0[k], s1[k]) == frozen, k
    # No optimizer state is held for frozen parameters (Adam: mu and nu of trainable ones).
    n_trainable = transfer.count_trainable(v["params"], transfer.as_labels(v["params"], rules))
    n_state = sum(x.size for x in jax.tree.leaves(state.opt_state) if x.ndim)
    assert n_state == 2 * n_trainable
    # Control: without the wrapper, the frozen parts' BatchNorm statistics would drift.
    _, drift = model.apply(v, _batch()["image"], train=True, mutable=["batch_stats"])
    assert not _same_bits(s0["stem/bn/mean"], _flat(drift["batch_stats"])["stem/bn/mean"])
    assert not _same_bits(
        s0["stage1/block0/conv1/bn/mean"],
        _flat(drift["batch_stats"])["stage1/block0/conv1/bn/mean"],
    )


def test_frozen_bn_modules_follow_param_labels():
    v = _init(TinyResNet())
    labels = transfer.label_params(
        v["params"], [("stage2/block1", "t"), ("head", "t"), (".*", None)]
    )
    frozen = transfer.frozen_bn_modules(labels, v["batch_stats"])
    assert ("stem", "bn") in frozen and ("stage2", "block0", "conv2", "bn") in frozen
    assert ("stage2", "block1", "conv1", "bn") not in frozen


# ---------------------------------------------------------------- per-layer rates


def _toy():
    params = {"stem": {"w": jnp.ones(3)}, "stage1": {"w": jnp.ones(2)}, "head": {"w": jnp.ones(4)}}
    grads = jax.tree.map(lambda p: 0.5 + jnp.arange(p.size, dtype=jnp.float32), params)
    return params, grads, transfer.label_params(params, transfer.stage_rules(list(params)))


def test_explicit_per_stage_rates_give_updates_in_ratio():
    params, grads, labels = _toy()
    rates = {"stem": 1e-5, "stage1": 1e-4, "head": 1e-3}
    tx = transfer.finetune(optax.sgd(1e-3), labels, transfer.scales_from_rates(rates, 1e-3))
    updates, _ = tx.update(grads, tx.init(params), params)
    for k, r in rates.items():  # SGD: update = -rate * grad, per stage
        np.testing.assert_allclose(updates[k]["w"], -r * grads[k]["w"], rtol=1e-6)
    # Layer-wise decay with SGD: ratios decay^(distance from head) for the same gradient.
    tx = transfer.finetune(optax.sgd(0.1), labels, transfer.layerwise_decay(list(params), 0.3))
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["head"]["w"], -0.1 * grads["head"]["w"], rtol=1e-6)
    np.testing.assert_allclose(updates["stage1"]["w"] / updates["head"]["w"][:2], 0.3, rtol=1e-6)
    np.testing.assert_allclose(updates["stem"]["w"] / updates["head"]["w"][:3], 0.09, rtol=1e-6)


def test_layerwise_decay_with_adam_and_a_schedule():
    params, grads, labels = _toy()
    names = ["stem", "stage1", "head"]
    scales = transfer.layerwise_decay(names, 0.5)
    assert scales == {"stem": 0.25, "stage1": 0.5, "head": 1.0}
    sched = optax.linear_schedule(1e-2, 1e-3, 10)
    tx = transfer.finetune(optax.adam(sched), labels, scales)
    state = tx.init(params)
    for i in range(4):
        updates, state = tx.update(grads, state, params)
        head = np.asarray(updates["head"]["w"])
        np.testing.assert_allclose(head, -sched(i), rtol=1e-4)  # Adam with constant grads
        np.testing.assert_allclose(updates["stage1"]["w"], 0.5 * head[:2], rtol=1e-6)
        np.testing.assert_allclose(updates["stem"]["w"], 0.25 * head[:3], rtol=1e-6)
    with pytest.raises(ValueError, match="no parameter has"):
        transfer.scale_by_label({"stage9": 0.1}, labels)


# ---------------------------------------------------------------- gradual unfreezing


def test_gradual_unfreezing_compiles_once_per_phase_and_starts_fresh():
    model = TinyResNet()
    v = _init(model)
    unfreeze = transfer.GradualUnfreezing(
        [(0, ["head"]), (2, ["stage2"]), (4, [".*"])], optax.adam(1e-2), model.apply, v
    )
    state = unfreeze.init_state(model, v)
    step = make_train_step()
    p0, s0 = _snap(v["params"]), _snap(v["batch_stats"])
    history = []
    for t in range(7):
        before = state.opt_state
        state = unfreeze.update(state, t)
        if t == 2:  # phase 1 begins: head's group kept, stage2's group fresh
            inner = state.opt_state.inner_states
            assert int(inner["phase0"].inner_state[0].count) == 2
            assert int(inner["phase1"].inner_state[0].count) == 0
            assert not np.any(
                np.asarray(
                    inner["phase1"].inner_state[0].mu["stage2"]["block0"]["conv1"]["conv"]["kernel"]
                )
            )
            assert _same_bits(
                inner["phase0"].inner_state[0].mu["head"]["kernel"],
                before.inner_states["phase0"].inner_state[0].mu["head"]["kernel"],
            )
        state, _ = step(state, _batch(seed=t))
        history.append((_snap(state.params), _snap(state.batch_stats)))
    assert step._cache_size() == 3  # one compilation per phase
    for t, (p, s) in enumerate(history):
        assert _same_bits(p["stem/conv/kernel"], p0["stem/conv/kernel"]) == (t < 4)
        assert _same_bits(
            p["stage2/block0/conv1/conv/kernel"], p0["stage2/block0/conv1/conv/kernel"]
        ) == (t < 2)
        assert _same_bits(s["stage1/block0/conv1/bn/mean"], s0["stage1/block0/conv1/bn/mean"]) == (
            t < 4
        )
    with pytest.raises(ValueError, match="begin at 0"):
        transfer.GradualUnfreezing([(1, ["head"])], optax.adam(1e-2), model.apply, v)


# ---------------------------------------------------------------- heads and features


def test_replace_head_keeps_every_other_leaf():
    v = _init(TinyResNet(num_classes=10), seed=1)
    new = transfer.replace_head(v, TinyResNet(num_classes=3), SHAPE, seed=5)
    old_p, new_p = _flat(v["params"]), _flat(new["params"])
    assert set(old_p) == set(new_p)
    for k in old_p:
        if k.startswith("head/"):
            assert new_p[k].shape[-1] == 3
        else:
            assert new_p[k] is old_p[k], k
    assert all(
        a is b
        for a, b in zip(jax.tree.leaves(new["batch_stats"]), jax.tree.leaves(v["batch_stats"]))
    )
    assert transfer.stages(new["params"]) == ["stem", "stage1", "stage2", "head"]
    out = TinyResNet(num_classes=3).apply(new, jnp.ones(SHAPE))
    assert out.shape == (1, 3)
    with pytest.raises(ValueError, match="shape"):
        transfer.replace_head(v, TinyResNet(num_classes=3, width=6), SHAPE)


def test_extract_features_and_linear_head():
    model = TinyResNet(num_classes=4)
    v = _init(model)
    x = np.asarray(jax.random.normal(jax.random.key(3), (10, 8, 8, 3)))
    f1, f2 = transfer.extract_features(model, v, x, batch_size=4)
    maps = model.clone(features_only=True).apply(v, x)
    assert f1.shape == (10, 4) and f2.shape == (10, 8)
    np.testing.assert_allclose(f2, np.asarray(maps[1]).mean(axis=(1, 2)), atol=1e-5)
    (last,) = transfer.extract_features(model, v, x, stages=[-1])
    np.testing.assert_allclose(last, f2, atol=1e-6)
    # A linear classifier on the pooled last stage is a drop-in head.
    teacher = np.asarray(jax.random.normal(jax.random.key(4), (8, 4)))
    y = (f2 @ teacher).argmax(-1)
    head = transfer.fit_linear(f2, y, 4, steps=300, learning_rate=0.05, weight_decay=0.0)
    assert transfer.linear_accuracy(head, f2, y) >= 0.9
    params = {**v["params"], "head": head}
    logits = model.apply({**v, "params": params}, x)
    np.testing.assert_allclose(
        logits, f2 @ np.asarray(head["kernel"]) + np.asarray(head["bias"]), atol=1e-4
    )


# ---------------------------------------------------------------- LoRA


def test_lora_conv_and_dense_merge_gives_equal_outputs():
    for model, shape, targets in [
        (TinyResNet(), SHAPE, ("stage2", "stem")),
        (models.create_model("lenet5_modern"), (2, 28, 28, 1), ("c3", "f6")),
    ]:
        v = _init(model, shape=shape)
        lora = transfer.LoRA(targets=targets, rank=2, alpha=4.0)
        params = lora.init(jax.random.key(0), v["params"])
        x = jax.random.normal(jax.random.key(1), shape)
        apply = lora.wrap(model.apply)
        # b = 0 at initialisation: the adapted model starts as the base model.
        np.testing.assert_array_equal(apply({**v, "params": params}, x), model.apply(v, x))
        params = jax.tree_util.tree_map_with_path(
            lambda kp, a: (
                jax.random.normal(jax.random.key(len(kp)), a.shape) * 0.1
                if transfer.path_str(kp).endswith("lora_b")
                else a
            ),
            params,
        )
        merged = lora.merge(params)
        assert jax.tree.structure(merged) == jax.tree.structure(v["params"])
        out_lora = apply({**v, "params": params}, x)
        out_merged = model.apply({**v, "params": merged}, x)
        assert float(jnp.abs(out_lora - out_merged).max()) <= 1e-5
        assert not np.allclose(out_merged, model.apply(v, x), atol=1e-3)
    # The update of a Dense kernel is exactly scale * a @ b (rank 2).
    f6 = params["f6"]
    delta = merged["f6"]["kernel"] - f6["kernel"]
    np.testing.assert_allclose(delta, 2.0 * f6["lora_a"] @ f6["lora_b"], atol=1e-6)
    assert np.linalg.matrix_rank(np.asarray(delta), tol=1e-4) == 2
    c3 = params["c3"]
    assert c3["lora_a"].shape == (5 * 5 * 6, 2) and c3["lora_b"].shape == (2, 16)


def test_lora_trains_only_adapters_and_head():
    model = TinyResNet()
    v = _init(model)
    lora = transfer.LoRA(targets=(".*conv",), rank=2)
    params = lora.init(jax.random.key(0), v["params"])
    labels = transfer.label_params(params, lora.rules(train=["head"]))
    n_head = 8 * 10 + 10
    assert transfer.count_trainable(params, labels) == lora.count(params) + n_head
    state = transfer.create_state(
        model, {**v, "params": params}, optax.adam(1e-2), labels, apply_fn=lora.wrap(model.apply)
    )
    step = make_train_step()
    for i in range(2):
        state, _ = step(state, _batch(seed=i))
    before, after = _snap(params), _snap(state.params)
    for k in before:
        trains = k.endswith("lora_b") or k.endswith("lora_a") or k.startswith("head")
        assert _same_bits(before[k], after[k]) != trains, k
    assert all(
        _same_bits(a, b)
        for a, b in zip(jax.tree.leaves(v["batch_stats"]), jax.tree.leaves(state.batch_stats))
    )
    with pytest.raises(ValueError, match="no kernel matches"):
        transfer.LoRA(targets=("nothing",)).init(jax.random.key(0), v["params"])


# ---------------------------------------------------------------- the study on the engine

from experiments import transfer as study  # noqa: E402
from experiments.configs import transfer_tiny  # noqa: E402
from jaxcnn import data as data_lib  # noqa: E402
from jaxcnn.train import Trainer  # noqa: E402


@pytest.fixture(scope="module")
def tiny_data():
    return study.load_task(transfer_tiny.get_config())


def test_study_splits_hold_validation_out_of_train_never_test(tiny_data):
    d = tiny_data
    ids = lambda src: set(np.asarray(src.ids).tolist())  # noqa: E731
    # target: validation held out of the train examples, disjoint from the pool and the test
    assert len(d.validation) == 100
    assert not ids(d.validation) & ids(d.pool) and not ids(d.validation) & ids(d.test)
    assert not ids(d.pool) & ids(d.test)
    # source: validation held out of the source train examples
    s = d.source
    assert len(s.validation) == 200
    assert not ids(s.validation) & ids(s.train) and not ids(s.validation) & ids(s.test)
    # classes relabelled 0..4 (digits 5..9 for the target), labels and examples agree
    for src, digits in ((d.pool, (5, 6, 7, 8, 9)), (s.train, (0, 1, 2, 3, 4))):
        assert set(np.unique(src.labels)) == set(range(5))
        for i in (0, 7, len(src) - 1):
            assert src[i]["label"] == src.labels[i]
    raw = data_lib.load_splits("mnist", validation_split=0)
    raw_label = dict(zip(np.asarray(raw.train.ids).tolist(), np.asarray(raw.train.labels)))
    assert all(raw_label[i] == 5 + y for i, y in zip(d.validation.ids, d.validation.labels))
    # stratified: every class in proportion to its share of the target train examples
    pool_and_val = np.concatenate([d.pool.labels, d.validation.labels])
    expected = 100 * np.bincount(pool_and_val) / len(pool_and_val)
    assert np.all(np.abs(np.bincount(d.validation.labels) - expected) <= 1)
    # seeded: the same split_seed gives the same split, another one another
    again = study.load_task(transfer_tiny.get_config())
    assert ids(again.validation) == ids(d.validation)
    c = transfer_tiny.get_config()
    c.split_seed = 1
    assert ids(study.load_task(c).validation) != ids(d.validation)
    # labelled subsets come from the pool, nested across counts, one per seed
    a, b = d.labelled(10, seed=0), d.labelled(20, seed=0)
    assert list(b.ids[:10]) == list(a.ids) and ids(b) <= ids(d.pool)
    assert ids(d.labelled(20, seed=1)) != ids(b)


def _arrays_splits(steps, batch_size, size=(12, 12), classes=5, n=48, seed=0):
    rng = np.random.default_rng(seed)
    src = data_lib.ArraySource(
        rng.integers(0, 256, (n, *size, 1), dtype=np.uint8), np.arange(n) % classes
    )
    third = n // 3
    return data_lib.Splits(
        train=data_lib.Repeat(data_lib.Subset(src, np.arange(third)), steps * batch_size),
        validation=data_lib.Subset(src, np.arange(third, 2 * third)),
        test=data_lib.Subset(src, np.arange(2 * third, n)),
        num_classes=classes,
        class_names=tuple(map(str, range(classes))),
        name="arrays",
        provenance={"train": "random", "validation": "random", "test": "random"},
    )


def _engine(task, tmp_path, **kw):
    cfg = dict(
        input_size=(12, 12),
        channels=1,
        mean=(0.5,),
        std=(0.25,),
        transform="none",
        batch_size=8,
        epochs=1,
        optimizer="adam",
        schedule="constant",
        learning_rate=1e-2,
        progress=False,
        keep_checkpoints=1,
    )
    cfg.update(kw)
    return Trainer(task, cfg, tmp_path).run()


def test_frozen_backbone_on_engine_keeps_params_and_bn_stats_bit_identical(tmp_path):
    kwargs = {"num_filters": 4, "in_channels": 1}
    model = models.create_model("resnet18_cifar", num_classes=5, **kwargs)
    v = model.init(jax.random.key(1), jnp.zeros((1, 12, 12, 1)))
    rules = [("stage4", "stage4"), ("head", "head"), (".*", None)]
    labels = transfer.label_params(v["params"], rules)
    task = study.TransferClassification(_arrays_splits(3, 8), v, study.Regime(labels))
    p0, s0 = _snap(v["params"]), _snap(v["batch_stats"])
    res = _engine(task, tmp_path, model="resnet18_cifar", model_kwargs=kwargs)
    state = res["state"]
    assert res["steps"] == 3 and res["compilations"] == {"train_step": 1}
    p1, s1 = _snap(state.params), _snap(state.batch_stats)
    for k in p0:  # the frozen backbone bit-identical, stage4 and the head moved
        assert _same_bits(p0[k], p1[k]) == (not k.startswith(("stage4/", "head/"))), k
    for k in s0:  # the frozen BatchNorm statistics too; stage4's (trained) changed
        assert _same_bits(s0[k], s1[k]) == (not k.startswith("stage4/")), k
    n_trainable = transfer.count_trainable(v["params"], labels)
    assert task.trainable(state.params) == n_trainable < transfer.count_params(v["params"])
    # no optimizer state for frozen parameters (Adam: mu and nu of the trainable ones)
    assert sum(x.size for x in jax.tree.leaves(state.opt_state) if x.ndim) == 2 * n_trainable


def _lenet(seed=0, classes=5):
    model = models.create_model("lenet5_modern", num_classes=classes)
    return model, model.init(jax.random.key(seed), jnp.zeros((1, 28, 28, 1)))


LENET = dict(model="lenet5_modern", input_size=(28, 28))


def test_layerwise_rates_on_engine_scale_the_first_update(tmp_path):
    model, v = _lenet()
    names = transfer.stages(model, (1, 28, 28, 1))
    labels = transfer.label_params(v["params"], transfer.stage_rules(names))
    scales = transfer.layerwise_decay(names, 0.5)  # head 1, f6 1/2, ..., c1 1/16
    splits = _arrays_splits(1, 8, size=(28, 28))
    task = study.TransferClassification(splits, v, study.Regime(labels, scales))
    lr = 1e-3
    res = _engine(task, tmp_path, learning_rate=lr, **LENET)
    assert res["steps"] == 1
    p0, p1 = _snap(v["params"]), _snap(res["state"].params)
    for name in names:  # Adam's first update is lr * g / (|g| + eps): at most lr per element
        step = max(np.abs(p1[k] - p0[k]).max() for k in p0 if k.startswith(name + "/"))
        np.testing.assert_allclose(step, lr * scales[name], rtol=2e-3, err_msg=name)


def test_gradual_unfreezing_on_engine_one_compilation_fresh_groups(tmp_path):
    model, v = _lenet()
    phases = ((0, ["head"]), (2, ["f6"]), (100, [".*"]))  # the last phase never begins
    splits = _arrays_splits(4, 8, size=(28, 28))
    task = study.TransferClassification(splits, v, study.Regime(phases=phases))
    res = _engine(task, tmp_path, **LENET)
    assert res["steps"] == 4 and res["compilations"] == {"train_step": 1}
    state = res["state"]
    p0, p1 = _snap(v["params"]), _snap(state.params)
    for k in p0:
        assert _same_bits(p0[k], p1[k]) == k.startswith(("c1", "c3", "c5")), k
    assert task.trainable(state.params) == transfer.count_params(v["params"])
    inner = state.opt_state.inner_states
    assert int(inner["phase0"].inner_state[0].count) == 4  # the head: every step
    f6 = inner["phase1"].inner_state  # conditionally_mask: outer count, inner Adam state
    assert int(f6.step) == 4 and int(f6.inner_state[0].count) == 2  # fresh at step 2
    late = inner["phase2"].inner_state
    assert int(late.inner_state[0].count) == 0
    assert not np.any(np.asarray(late.inner_state[0].mu["c1"]["kernel"]))


def test_tiny_study_runs_every_method_through_the_engine(tmp_path, capsys):
    c = transfer_tiny.get_config()
    out = study.study(c, str(tmp_path), ["lenet5_modern"])
    for f in ("results.md", "results.json", "accuracy.png"):
        assert (tmp_path / f).stat().st_size > 0
    saved = json.loads((tmp_path / "results.json").read_text())
    recs = {r["method"]: r for r in saved["records"]}
    assert set(recs) == set(c.methods) and len(saved["records"]) == len(c.methods)
    assert "hold-out" in saved["splits"]["target_validation"]
    n_all = 61_281  # LeNet-5 (modern) with a 5-class head
    assert recs["scratch"]["trainable_params"] == n_all
    assert recs["finetune"]["trainable_params"] == n_all
    assert recs["gradual_unfreezing"]["trainable_params"] == n_all
    assert recs["feature_extractor"]["trainable_params"] == 84 * 5 + 5
    assert 84 * 5 + 5 < recs["lora"]["trainable_params"] < n_all // 5
    for m, r in recs.items():
        assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["val_accuracy"] <= 1.0, m
        if m == "feature_extractor":
            continue
        # every engine run: selected on validation among its evaluations (steps 10 and 20)
        assert r["steps"] == 20 and r["selected_step"] in (10, 20), m
        run_dir = tmp_path / "lenet5_modern" / m / "n20_seed0"
        run = json.loads((run_dir / "metrics.json").read_text())
        assert [h["step"] for h in run["history"]] == [10, 20]
        assert all(not any(k.startswith("test") for k in h) for h in run["history"])
        assert run["final"]["selected"]["by"] == "val_accuracy"
        assert run["final"]["selected"]["test_accuracy"] == pytest.approx(r["accuracy"])
        assert run["facts"]["num_validation"] == 100 and run["facts"]["num_train"] == 20 * 16
        assert not (run_dir / "checkpoints").exists() and (run_dir / "train.log").exists()
    md = (tmp_path / "results.md").read_text()
    assert all(study.METHOD_NAMES[m] in md for m in c.methods)
    assert out["records"] == saved["records"]
    # the backbone: selected on the source validation split, cached and reused
    data = study.load_task(c)
    meta = json.loads((tmp_path / "pretrained" / "lenet5_modern.json").read_text())
    assert meta["selected_step"] == len(data.source.train) // 128  # one epoch, one evaluation
    assert 0.5 < meta["source_accuracy"] <= 1.0
    capsys.readouterr()
    study.pretrain(c, "lenet5_modern", c.model_options["lenet5_modern"], data, str(tmp_path))
    assert "pretrained backbone loaded" in capsys.readouterr().out
