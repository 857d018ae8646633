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


# ---------------------------------------------------------------- the plan


def test_plan_parse_presets_options_and_errors():
    P = transfer.Plan.parse
    assert P("linear_probe").backbone == "frozen" and P("finetune").layer_decay == 1.0
    assert P("finetune_lwd").layer_decay == 0.7 and P("finetune_lwd:0.5").layer_decay == 0.5
    g = P("gradual:4,warmup=10,at=0.2/0.5/0.7,bn_stats=fixed")
    assert (g.phases, g.warmup, g.unfreeze_at, g.bn_stats) == (4, 10, (0.2, 0.5, 0.7), "fixed")
    lo = P("lora:16,alpha=8,lr=3,bn_affine=false,reset_head=false")
    assert (lo.backbone, lo.lora_rank, lo.lora_alpha, lo.lora_lr) == ("lora", 16, 8, 3)
    assert lo.bn_affine is False and lo.reset_head is False and lo.label == lo.name
    assert P("lora").lora().scale == 2.0  # alpha = 2 x rank by default
    assert P(g) is g
    for bad, msg in [
        ("nope", "unknown transfer preset 'nope'"),
        ("linear_probe:3", "takes no ':' argument"),
        ("lora:0", "lora_rank must be >= 1"),
        ("lora:2.5", "whole number"),
        ("finetune_lwd:1.5", r"layer_decay must be in \(0, 1\]"),
        ("gradual,at=0.5", r"gives 1 start\(s\) for 2 phase"),
        ("gradual,bn_stats=sometimes", "bn_stats must be one of"),
        ("finetune,phases=2", "needs something frozen"),
        ("lora,bn_affine=maybe", "true or false"),
        ("lora,rank", "expected key=value"),
    ]:
        with pytest.raises(ValueError, match=msg):
            P(bad)
    model = TinyResNet()
    with pytest.raises(ValueError, match="give steps="):
        P("gradual").apply(model, _init(model), optax.adam(1e-3), input_shape=SHAPE)
    with pytest.raises(ValueError, match="reach past"):
        P("gradual,at=5/10").apply(
            model, _init(model), optax.adam(1e-3), input_shape=SHAPE, steps=8
        )


@pytest.mark.parametrize("name,shape", [("resnet50", (1, 224, 224, 3))])
def test_frozen_backbone_holds_no_optimizer_state(name, shape):
    """Frozen means free: a linear probe on ResNet-50 holds Adam moments for the new head only
    (jax.eval_shape: nothing allocated); full fine-tuning holds them for all 23.5M params."""
    model = models.create_model(name, num_classes=10)
    v = models.abstract_variables(model, shape)
    head = 2048 * 10 + 10
    n_all = transfer.count_params(v["params"])
    sched = optax.cosine_decay_schedule(1e-3, 100)
    kw = dict(input_shape=shape, prepare=False, steps=100)
    probe = transfer.Plan.parse("linear_probe").apply(model, v, optax.adam, sched, **kw)
    bytes_probe = probe.optimizer_state_bytes()
    # mu and nu of the head (float32) + Adam's and the schedule's step counters (int32)
    assert bytes_probe == 2 * 4 * head + 4 + 4
    full = transfer.Plan.parse("finetune").apply(model, v, optax.adam, sched, **kw)
    assert full.optimizer_state_bytes() == 2 * 4 * n_all + 8
    assert probe.trainable_params() == head and full.trainable_params() == n_all
    # gradual unfreezing: one compiled step for all phases means one state layout, so groups
    # waiting for their phase hold their (zero) moments from the start: the measured cost
    grad = transfer.Plan.parse("gradual").apply(model, v, optax.adam, sched, **kw)
    assert grad.trainable_params(0) == head
    assert grad.optimizer_state_bytes(0) == 2 * 4 * n_all + 3 * 8  # 3 phase groups' counters
    assert "optimizer state 0.16 MiB" in probe.table()


def _convs(fn, *args) -> int:
    return str(jax.make_jaxpr(fn)(*args)).count("conv_general_dilated")


def test_frozen_parameters_are_not_differentiated():
    """The train step differentiates only the trainable partition: a linear probe's step has
    the forward convolutions only; each differentiated conv adds its kernel gradient, and its
    input gradient where something upstream trains (counted in the jaxpr, before XLA's
    simplifications; the image is never differentiated, so the stem has no input gradient)."""
    kwargs = {"num_filters": 4, "in_channels": 1}
    model = models.create_model("resnet18_cifar", num_classes=5, **kwargs)
    shape = (8, 12, 12, 1)
    v = model.init(jax.random.key(1), jnp.zeros(shape))
    batch = _batch(shape=shape, classes=5)
    forward = _convs(lambda v, x: model.apply(v, x), v, batch["image"])
    assert forward == 20  # stem, 8 blocks x 2, 3 downsamples
    counts = {}
    for spec in ("linear_probe", "finetune", "lora:2"):
        a = transfer.Plan.parse(spec).apply(model, v, optax.adam(1e-3), input_shape=shape)
        counts[spec] = _convs(a.step(), a.init_state(), batch)
    assert counts["linear_probe"] == forward
    everything = 3 * forward - 1  # every conv: forward, kernel and input gradient; stem: no dx
    assert counts["finetune"] == everything
    assert counts["lora:2"] == everything  # adapters in every conv: all differentiated
    # gradual: each phase's branch differentiates what trains in it: phase 0 the head only,
    # phase 1 + stage4 (its 5 convs: 5 kernel gradients, 3 input gradients: block0's conv1 and
    # the downsample read frozen stage3's output), phase 2 everything
    g = transfer.Plan.parse("gradual").apply(model, v, optax.adam(1e-3), input_shape=shape, steps=9)
    per_phase = [_convs(g.step(phase=k), g.init_state(), batch) for k in range(3)]
    assert per_phase == [forward, forward + 5 + 3, everything]
    assert _convs(g.step(), g.init_state(), batch) == sum(per_phase)  # lax.switch: all phases


def test_plan_linear_probe_frozen_bit_identical_head_trains():
    model = TinyResNet()
    v = _init(model, seed=3)
    a = transfer.Plan.parse("linear_probe").apply(model, v, optax.adam(1e-2), input_shape=SHAPE)
    state = a.init_state()
    step = jax.jit(a.step(), donate_argnums=0)
    p0, s0 = _snap(v["params"]), _snap(v["batch_stats"])
    h0 = _snap(a.variables["params"])
    assert not _same_bits(h0["head/kernel"], p0["head/kernel"])  # the head was reset
    for i in range(3):
        state, _ = step(state, _batch(seed=i))
    p1, s1 = _snap(state.params), _snap(state.batch_stats)
    for k in p0:
        assert _same_bits(h0[k], p1[k]) == (not k.startswith("head/")), k
    for k in s0:
        assert _same_bits(s0[k], s1[k]), k
    assert step._cache_size() == 1


def test_gradual_plan_fresh_moments_on_the_run_schedule_with_warmup_and_bn_per_phase():
    model = TinyResNet()
    v = _init(model)
    sched = optax.linear_schedule(1e-2, 1e-3, 8)
    plan = transfer.Plan.parse(
        "gradual,at=2/4,warmup=2,decay=0.5,reset_head=false,phase_lr=continue"
    )
    a = plan.apply(model, v, optax.adam, sched, input_shape=SHAPE, steps=8)
    assert a.starts == [0, 2, 4]
    rows = {r["group"]: r for r in a.rows()}
    assert rows["stage2"]["phase"] == 1 and rows["stage1"]["phase"] == 2
    assert rows["stage2"]["bn_stats"] == ["fixed", "batch", "batch"]
    assert rows["stem"]["bn_stats"] == ["fixed", "fixed", "batch"]
    assert rows["stage2"]["lr_scale"] == [0.5] and rows["stem"]["lr_scale"] == [0.125]
    state = a.init_state()
    step = jax.jit(a.step(), donate_argnums=0)
    snaps = [(_snap(state.params), _snap(state.batch_stats))]
    for t in range(6):
        state, _ = step(state, _batch(seed=t))
        snaps.append((_snap(state.params), _snap(state.batch_stats)))
    assert step._cache_size() == 1  # every phase in one compiled step
    # the per-phase steps picked on the host (the engine's way): no conditional in any of
    # them, and the same updates as the one step with lax.switch
    steps = [jax.jit(a.step(phase=k), donate_argnums=0) for k in range(3)]
    assert [a.phase_at(t) for t in range(8)] == [0, 0, 1, 1, 2, 2, 2, 2]
    for k in range(3):
        jaxpr = str(jax.make_jaxpr(a.step(phase=k))(a.init_state(), _batch(seed=0)))
        assert " cond[" not in jaxpr and "switch" not in jaxpr, k
    host = a.init_state()
    for t in range(6):
        host, _ = steps[a.phase_at(t)](host, _batch(seed=t))
    for k, x in _snap(host.params).items():
        np.testing.assert_allclose(x, snaps[6][0][k], rtol=1e-5, atol=1e-7, err_msg=k)
    k2, k1 = "stage2/block0/conv1/conv/kernel", "stem/conv/kernel"
    for t in range(7):  # params and BN statistics move from their phase on, not before
        p, s = snaps[t]
        assert _same_bits(p[k2], snaps[0][0][k2]) == (t <= 2), t
        assert _same_bits(p[k1], snaps[0][0][k1]) == (t <= 4), t
        assert _same_bits(s["stem/bn/mean"], snaps[0][1]["stem/bn/mean"]) == (t <= 4), t
    # stage2's first update (step 2): Adam's first step (lr * sign(g)) at the run's rate for
    # step 2 (not a restarted schedule), its layer-wise scale 0.5, warm-up 1/2
    first = np.abs(snaps[3][0][k2] - snaps[2][0][k2]).max()
    np.testing.assert_allclose(first, sched(2) * 0.5 * 0.5, rtol=2e-3)
    second = np.abs(snaps[4][0][k2] - snaps[3][0][k2]).max()
    assert second > 1.2 * first  # warm-up over: full rate (Adam's second step is smaller)
    assert {g: int(x.count) for g, x in _adam(state.opt_state).items()} == {
        "phase0": 6,
        "phase1": 4,
        "phase2": 2,
    }


@pytest.mark.parametrize(
    "how,rates", [("continue", (5, 6, 7)), ("restart", (0, 1, 2)), ("rescale", (0, 2, 4))]
)
def test_phase_lr_gives_a_late_group_the_run_schedule_continued_restarted_or_rescaled(how, rates):
    """A group unfrozen at step 5 of 10 (SGD, lr(t) = 1 - t/10): its first three updates use
    the run's rate at steps 5, 6, 7 (continue), 0, 1, 2 (restart) or 0, 2, 4 (rescale: the
    whole schedule squeezed into the 5 steps left)."""
    params = {"stem": {"w": jnp.ones(2)}, "head": {"w": jnp.ones(2)}}
    sched = optax.linear_schedule(1.0, 0.0, 10)
    plan = transfer.Plan(backbone="frozen", phases=2, unfreeze_at=(5,), phase_lr=how)
    a = plan.apply(
        None,
        {"params": params},
        optax.sgd,
        sched,
        input_shape=(),
        steps=10,
        prepare=False,
        groups=["stem", "head"],
        apply_fn=lambda variables, x: x,
    )
    grads = jax.tree.map(jnp.ones_like, params)
    state = a.tx.init(params)
    seen = []
    for t in range(8):
        tx = a.phases[0 if t < 5 else 1].tx
        updates, state = tx.update(grads, state, params)
        seen.append(-float(updates["stem"]["w"][0]))
    np.testing.assert_allclose(seen[:5], 0.0)
    np.testing.assert_allclose(seen[5:], [float(sched(r)) for r in rates], rtol=1e-6)


def test_lora_plan_trains_adapters_bn_affine_and_head():
    """LoRA by default trains the adapters, the BatchNorm affine and the head, and its
    BatchNorm layers follow the adapted convolutions (batch statistics, running averages
    updated); the base weights stay bit-identical."""
    model = TinyResNet()
    v = _init(model)
    for spec, affine_trains, stats_move in [
        ("lora:2", True, True),
        ("lora:2,bn_affine=false", False, True),
        ("lora:2,bn_stats=fixed", True, False),
    ]:
        a = transfer.Plan.parse(spec).apply(model, v, optax.adam(1e-2), input_shape=SHAPE)
        state = a.init_state()
        step = jax.jit(a.step(), donate_argnums=0)
        start = _snap(a.variables["params"])
        for i in range(2):
            state, _ = step(state, _batch(seed=i))
        after, stats = _snap(state.params), _snap(state.batch_stats)
        for k in start:
            leaf = k.rsplit("/", 1)[-1]
            bn = "/bn/" in k and leaf in ("scale", "bias")
            trains = leaf in ("lora_a", "lora_b") or k.startswith("head/") or (bn and affine_trains)
            assert _same_bits(start[k], after[k]) != trains, (spec, k)
        moved = [not _same_bits(x, stats[k]) for k, x in _snap(v["batch_stats"]).items()]
        assert all(moved) if stats_move else not any(moved), spec
    table = a.table()  # the last one: bn_stats=fixed
    assert "lora r=2 + bn affine" in table and "fixed" in table and "LoRA adapters" in table


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


def _adam(opt_state) -> dict:
    """``{optimizer group: its Adam state}`` of a plan's optimizer state."""
    found = jax.tree_util.tree_flatten_with_path(
        opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState)
    )[0]
    out = {}
    for kp, x in found:
        if isinstance(x, optax.ScaleByAdamState):
            group = [p for p in transfer.path_str(kp).split("/") if p.startswith("phase")][0]
            out[group] = x
    return out


def test_frozen_backbone_on_engine_keeps_params_and_bn_stats_bit_identical(tmp_path):
    kwargs = {"num_filters": 4, "in_channels": 1}
    model = models.create_model("resnet18_cifar", num_classes=5, **kwargs)
    v = model.init(jax.random.key(1), jnp.zeros((1, 12, 12, 1)))
    plan = transfer.Plan(backbone="frozen", rules=(("stage4", "train"),), reset_head=False)
    task = study.TransferClassification(_arrays_splits(3, 8), v, plan)
    p0, s0 = _snap(v["params"]), _snap(v["batch_stats"])
    res = _engine(task, tmp_path, model="resnet18_cifar", model_kwargs=kwargs)
    state = res["state"]
    assert res["steps"] == 3 and res["compilations"] == {"train_step": 1}
    p1, s1 = _snap(state.params), _snap(state.batch_stats)
    for k in p0:  # the frozen backbone bit-identical, stage4 and the head moved
        assert _same_bits(p0[k], p1[k]) == (not k.startswith(("stage4/", "head/"))), k
    for k in s0:  # the frozen BatchNorm statistics too; stage4's (trained) changed
        assert _same_bits(s0[k], s1[k]) == (not k.startswith("stage4/")), k
    n_trainable = transfer.count_params({k: v["params"][k] for k in ("stage4", "head")})
    assert task.trainable(state.params) == n_trainable < transfer.count_params(v["params"])
    # no optimizer state for frozen parameters (Adam: mu and nu of the trainable ones)
    assert sum(x.size for x in jax.tree.leaves(state.opt_state) if x.ndim) == 2 * n_trainable
    m = json.loads((tmp_path / "metrics.json").read_text())
    rows = {r["group"]: r for r in m["transfer"]["groups"]}
    assert rows["stage4"]["mode"] == "train" and rows["stage3"]["mode"] == "frozen"
    assert rows["stage3"]["bn_stats"] == ["fixed"] and rows["stage4"]["bn_stats"] == ["batch"]
    assert m["transfer"]["trainable_params"] == n_trainable


def _lenet(seed=0, classes=5):
    model = models.create_model("lenet5_modern", num_classes=classes)
    return model, model.init(jax.random.key(seed), jnp.zeros((1, 28, 28, 1)))


LENET = dict(model="lenet5_modern", input_size=(28, 28))


def test_layerwise_rates_on_engine_scale_the_first_update(tmp_path):
    model, v = _lenet()
    names = transfer.stages(model, (1, 28, 28, 1))
    scales = transfer.layerwise_decay(names, 0.5)  # head 1, f6 1/2, ..., c1 1/16
    splits = _arrays_splits(1, 8, size=(28, 28))
    plan = transfer.Plan(layer_decay=0.5, reset_head=False)
    task = study.TransferClassification(splits, v, plan)
    lr = 1e-3
    res = _engine(task, tmp_path, learning_rate=lr, **LENET)
    assert res["steps"] == 1
    p0, p1 = _snap(v["params"]), _snap(res["state"].params)
    for name in names:  # Adam's first update is lr * g / (|g| + eps): at most lr per element
        step = max(np.abs(p1[k] - p0[k]).max() for k in p0 if k.startswith(name + "/"))
        np.testing.assert_allclose(step, lr * scales[name], rtol=2e-3, err_msg=name)


def test_gradual_unfreezing_on_engine_one_compilation_per_phase_fresh_groups(tmp_path):
    """The engine compiles one step per phase and picks it on the host: no device-side
    conditional around the convolutions' gradients (XLA:CPU runs them 2-300x slower there)."""
    model, v = _lenet()
    plan = transfer.Plan(
        backbone="frozen",
        phases=3,
        unfreeze_at=(2, 5),
        unfreeze=(("f6",), (".*",)),
        reset_head=False,
    )
    splits = _arrays_splits(6, 8, size=(28, 28))
    task = study.TransferClassification(splits, v, plan)
    res = _engine(task, tmp_path, **LENET)
    assert res["steps"] == 6 and res["compilations"] == {"train_step": 3}
    state = res["state"]
    p0, p1 = _snap(v["params"]), _snap(state.params)
    assert not any(_same_bits(p0[k], p1[k]) for k in p0)  # every phase began
    assert task.trainable(state.params) == transfer.count_params(v["params"])
    adam = _adam(state.opt_state)
    # each group's moments start fresh with its phase: updates counted from its start
    assert {g: int(a.count) for g, a in adam.items()} == {"phase0": 6, "phase1": 4, "phase2": 1}


def test_cli_transfer_key_and_bad_specs(tmp_path):
    model, v = _lenet()
    splits = _arrays_splits(2, 8, size=(28, 28))
    task = study.TransferClassification(splits, v)
    res = _engine(task, tmp_path / "a", transfer="lora:2,alpha=2", **LENET)
    lora = res["state"].params["c3"]
    assert lora["lora_a"].shape == (5 * 5 * 6, 2) and lora["lora_b"].shape == (2, 16)
    assert _same_bits(lora["kernel"], v["params"]["c3"]["kernel"])
    assert not _same_bits(res["state"].params["head"]["kernel"], v["params"]["head"]["kernel"])
    from jaxcnn.train.config import ConfigError

    with pytest.raises(ConfigError, match="unknown transfer preset 'nope'"):
        _engine(study.TransferClassification(splits, v), tmp_path / "b", transfer="nope", **LENET)
    with pytest.raises(ConfigError, match="option 'rnak=4'"):
        _engine(
            study.TransferClassification(splits, v), tmp_path / "c", transfer="lora,rnak=4", **LENET
        )
    with pytest.raises(ConfigError, match="set init_from"):
        _engine(study.TransferClassification(splits), tmp_path / "d", transfer="finetune", **LENET)


def test_plan_with_recipe_keys_ema_mixup_and_optimizer_details(tmp_path):
    """A plan composes with the recipe keys: the EMA follows the adapted parameters (adapters
    included), mixup feeds soft targets through the plan's step, the plan's groups use the
    config's optimizer (SGD with Nesterov, decay masked) and frozen weights stay bit-identical."""
    model, v = _lenet()
    splits = _arrays_splits(3, 8, size=(28, 28))
    task = study.TransferClassification(splits, v)
    res = _engine(
        task,
        tmp_path,
        transfer="lora:2",
        ema_decay=0.5,
        mixup_alpha=0.8,
        optimizer="sgd",
        nesterov=True,
        decay_mask=True,
        weight_decay=1e-4,
        **LENET,
    )
    state = res["state"]
    assert res["steps"] == 3 and res["compilations"] == {"train_step": 1}
    assert jax.tree.structure(state.ema["params"]) == jax.tree.structure(state.params)
    lora = state.params["c3"]
    assert _same_bits(lora["kernel"], v["params"]["c3"]["kernel"])
    assert not _same_bits(state.ema["params"]["c3"]["lora_b"], lora["lora_b"])  # an average
    assert np.abs(np.asarray(state.ema["params"]["c3"]["lora_b"])).max() > 0  # that moved
    traces = [
        x
        for _, x in jax.tree_util.tree_flatten_with_path(
            state.opt_state, is_leaf=lambda x: isinstance(x, optax.TraceState)
        )[0]
        if isinstance(x, optax.TraceState)
    ]
    assert traces  # SGD momentum per group, not Adam
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert {"val_accuracy", "val_ema_accuracy"} <= set(m["history"][-1])


def test_tiny_study_runs_every_method_through_the_engine(tmp_path, capsys):
    c = transfer_tiny.get_config()
    out = study.study(c, str(tmp_path), ["lenet5_modern"])
    for f in ("results.md", "results.json", "accuracy.png"):
        assert (tmp_path / f).stat().st_size > 0
    saved = json.loads((tmp_path / "results.json").read_text())
    recs = {r["method"]: r for r in saved["records"]}
    assert set(recs) == set(c.methods) and len(saved["records"]) == len(c.methods)
    assert c.methods == ("scratch", "feature_extractor", "finetune_lwd:0.8", "gradual", "lora")
    assert "hold-out" in saved["splits"]["target_validation"]
    n_all = 61_281  # LeNet-5 (modern) with a 5-class head
    assert recs["scratch"]["trainable_params"] == n_all
    assert recs["finetune_lwd:0.8"]["trainable_params"] == n_all
    assert recs["gradual"]["trainable_params"] == n_all
    assert recs["feature_extractor"]["trainable_params"] == 84 * 5 + 5
    assert 84 * 5 + 5 < recs["lora"]["trainable_params"] < n_all // 5
    assert recs["gradual"]["phase_starts"] == [0, 2, 4]  # unfrozen over the first fifth
    for m, r in recs.items():
        assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["val_accuracy"] <= 1.0, m
        if m == "feature_extractor":
            continue
        # every engine run: selected on validation among its evaluations (steps 10 and 20)
        assert r["steps"] == 20 and r["selected_step"] in (10, 20), m
        assert [h["step"] for h in r["curve"]] == [10, 20], m
        assert r["curve"][-1]["val_accuracy"] is not None, m
        run_dir = tmp_path / "lenet5_modern" / "20steps" / study.run_dir_name(m) / "n20_seed0"
        run = json.loads((run_dir / "metrics.json").read_text())
        assert [h["step"] for h in run["history"]] == [10, 20]
        assert all(not any(k.startswith("test") for k in h) for h in run["history"])
        assert run["final"]["selected"]["by"] == "val_accuracy"
        assert run["final"]["selected"]["test_accuracy"] == pytest.approx(r["accuracy"])
        assert run["facts"]["num_validation"] == 100 and run["facts"]["num_train"] == 20 * 16
        assert not (run_dir / "checkpoints").exists() and (run_dir / "train.log").exists()
        # a plan prints its table before training; scratch has none
        assert ("transfer plan" in (run_dir / "train.log").read_text()) == (m != "scratch"), m
    md = (tmp_path / "results.md").read_text()
    assert all(study.method_name(m) in md for m in c.methods)
    assert "`gradual`: phases start at steps [0, 2, 4]" in md  # the per-phase table
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert out["records"] == saved["records"]
    # the backbone: selected on the source validation split, cached and reused
    data = study.load_task(c)
    meta = json.loads((tmp_path / "pretrained" / "lenet5_modern.json").read_text())
    assert meta["selected_step"] == len(data.source.train) // 128  # one epoch, one evaluation
    assert 0.5 < meta["source_accuracy"] <= 1.0
    capsys.readouterr()
    study.pretrain(c, "lenet5_modern", c.model_options["lenet5_modern"], data, str(tmp_path))
    assert "pretrained backbone loaded" in capsys.readouterr().out
    # a rerun reuses every finished run's record; one whose record is gone (or whose settings
    # changed) trains again
    gone = tmp_path / "lenet5_modern" / "20steps" / study.run_dir_name("gradual") / "n20_seed0"
    (gone / "record.json").unlink()
    calls = []

    def counting(method, *args, **kw):
        calls.append(method)
        return real_run_method(method, *args, **kw)

    real_run_method = study.run_method
    study.run_method = counting
    try:
        again = study.study(c, str(tmp_path), ["lenet5_modern"])
        assert calls == ["gradual"]
        assert capsys.readouterr().out.count("(reused: ") == len(c.methods) - 1
        keep = ("method", "accuracy", "val_accuracy", "selected_step", "trainable_params")
        assert [{k: r[k] for k in keep} for r in again["records"]] == [
            {k: r[k] for k in keep} for r in saved["records"]
        ]
        c2 = transfer_tiny.get_config()
        c2.probe_steps = c.probe_steps + 1  # a changed setting: nothing is reused
        calls.clear()
        # what is checked is which runs the study starts again, not their training (the gradual
        # rerun above trained for real): each asked-for run returns its earlier record
        by_method = {r["method"]: r for r in saved["records"]}

        def recorded(method, *args, **kw):
            calls.append(method)
            return {**by_method[method], "state": None}

        study.run_method = recorded
        again = study.study(c2, str(tmp_path), ["lenet5_modern"])
        assert sorted(calls) == sorted(c.methods)
        assert [r["accuracy"] for r in again["records"]] == [
            r["accuracy"] for r in saved["records"]
        ]
    finally:
        study.run_method = real_run_method


def test_study_stops_cleanly_when_a_run_is_preempted(tmp_path, monkeypatch):
    """A signal during a run ends the study with Interrupted (the CLI exits 128 + signal)
    saying how to go on, not with an error about missing results."""
    c = transfer_tiny.get_config()
    c.methods = ("scratch",)

    def preempted(task, cfg, run_dir, **kw):
        return {"preempted": True, "step": 3, "signal": 15, "state": None}

    monkeypatch.setattr(study, "train_run", preempted)
    with pytest.raises(study.Interrupted, match="stopped by signal 15 at step 3: rerun") as e:
        study.study(c, str(tmp_path), ["lenet5_modern"])
    assert e.value.signum == 15
