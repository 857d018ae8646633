"""DenseNet (memory_efficient, transitions, dropout, minimum size) and Xception (Keras padding,
layout, BatchNorm settings): what the registry sweep does not cover. Big models are only traced
(``jax.eval_shape``); behaviour is checked on a tiny DenseNet."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import models
from jaxcnn.models.densenet import DenseNet


def _features(model, shape):
    x = jnp.zeros(shape)
    return jax.eval_shape(lambda: model.apply(model.init(jax.random.key(0), x), x))


def _params(name, shape, **kw):
    return models.abstract_variables(models.create_model(name, **kw), shape)["params"]


def _tiny_densenet(**kw):
    return DenseNet(
        block_config=(2, 2, 2, 2),
        growth_rate=4,
        num_init_features=8,
        bn_size=2,
        num_classes=3,
        **kw,
    )


def _bn_settings(model, shape):
    seen = []

    def spy(next_fun, args, kwargs, context):
        if isinstance(context.module, nn.BatchNorm):
            seen.append((context.module.epsilon, context.module.momentum))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(spy):
        models.abstract_variables(model, shape)
    return seen


# ---------------------------------------------------------------- DenseNet


def test_densenet_memory_efficient_same_params_outputs_and_grads():
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    plain, remat = _tiny_densenet(), _tiny_densenet(memory_efficient=True)
    # jitted: DenseNet's many small ops are slow to dispatch one by one
    v1 = jax.jit(plain.init)(jax.random.key(1), x)
    v2 = jax.jit(remat.init)(jax.random.key(1), x)
    chex.assert_trees_all_equal(v1, v2)  # same names, shapes and values

    def loss(model):
        def f(params):
            out, upd = model.apply(
                {"params": params, "batch_stats": v1["batch_stats"]},
                x,
                train=True,
                mutable=["batch_stats"],
            )
            return jnp.sum(out**2), (out, upd)

        return jax.jit(jax.value_and_grad(f, has_aux=True))

    (l1, (o1, u1)), g1 = loss(plain)(v1["params"])
    (l2, (o2, u2)), g2 = loss(remat)(v1["params"])
    chex.assert_trees_all_close((o1, u1, g1), (o2, u2, g2), rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(jax.jit(plain.apply)(v1, x), jax.jit(remat.apply)(v1, x), rtol=1e-6)

    # remat really is in the computation (and only there)
    def jaxpr(m):
        return str(
            jax.make_jaxpr(  # noqa: E731
                lambda p: jax.grad(
                    lambda q: jnp.sum(m.apply({"params": q, "batch_stats": v1["batch_stats"]}, x))
                )(p)
            )(v1["params"])
        )

    assert "remat" in jaxpr(remat) or "checkpoint" in jaxpr(remat)
    assert "remat" not in jaxpr(plain) and "checkpoint" not in jaxpr(plain)


def test_densenet_layout_transitions_and_growth():
    p = _params("densenet121", (1, 64, 64, 3))
    assert list(p) == ["stem", "stage1", "stage2", "stage3", "stage4", "final_norm", "head"]
    assert [len([k for k in p[f"stage{i}"] if k.startswith("block")]) for i in range(1, 5)] == [
        6,
        12,
        24,
        16,
    ]
    assert "transition" not in p["stage1"]
    # transitions halve the channels: 256 -> 128, 512 -> 256, 1024 -> 512
    assert [p[f"stage{i}"]["transition"]["conv"]["kernel"].shape for i in (2, 3, 4)] == [
        (1, 1, 256, 128),
        (1, 1, 512, 256),
        (1, 1, 1024, 512),
    ]
    # dense layer: 1x1 to bn_size*growth = 128, then 3x3 to growth = 32, on a growing input
    b = p["stage1"]["block5"]
    assert b["conv1"]["kernel"].shape == (1, 1, 64 + 5 * 32, 128)
    assert b["conv2"]["kernel"].shape == (3, 3, 128, 32)
    assert "bias" not in b["conv1"] and p["head"]["kernel"].shape == (1024, 1000)


def test_densenet_features_and_minimum_size():
    feats = _features(models.create_model("densenet169", features_only=True), (1, 224, 224, 3))
    assert [f.shape for f in feats] == [
        (1, 56, 56, 256),
        (1, 28, 28, 512),
        (1, 14, 14, 1280),
        (1, 7, 7, 1664),
    ]
    assert models.model_info("densenet121").min_size == 29
    feats = _features(models.create_model("densenet121", features_only=True), (1, 29, 29, 3))
    assert feats[-1].shape == (1, 1, 1, 1024)
    with pytest.raises(ValueError, match="at least 29x29"):
        models.create_model("densenet121").init(jax.random.key(0), jnp.zeros((1, 28, 28, 3)))


def test_densenet_dropout_only_in_training():
    model = _tiny_densenet(drop_rate=0.5)
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    v = model.init(jax.random.key(1), x)
    train = jax.jit(
        lambda k: model.apply(v, x, train=True, mutable=["batch_stats"], rngs={"dropout": k})[0]
    )
    assert not np.allclose(train(jax.random.key(2)), train(jax.random.key(3)))
    chex.assert_trees_all_equal(model.apply(v, x), model.apply(v, x))


def test_densenet_batchnorm_settings():
    seen = _bn_settings(_tiny_densenet(), (1, 32, 32, 3))
    # stem + 8 layers x 2 + 3 transitions + final norm
    assert len(seen) == 1 + 16 + 3 + 1 and set(seen) == {(1e-5, 0.9)}


# ---------------------------------------------------------------- Xception


def test_xception_keras_padding_gives_10x10x2048_at_299():
    feats = _features(models.create_model("xception", features_only=True), (1, 299, 299, 3))
    # "valid" stem: 299 -> 149 -> 147; then "same" stride 2: 74, 37, 19, 10
    assert [f.shape for f in feats] == [
        (1, 74, 74, 128),
        (1, 37, 37, 256),
        (1, 19, 19, 728),
        (1, 10, 10, 2048),
    ]
    out = _features(models.create_model("xception", num_classes=4), (2, 299, 299, 3))
    assert out.shape == (2, 4)


def test_xception_layout_and_counts():
    p = _params("xception", (1, 71, 71, 3))
    assert list(p) == ["stem", "stage1", "stage2", "stage3", "stage4", "head"]
    assert p["stem"]["conv1"]["kernel"].shape == (3, 3, 3, 32)
    assert len(p["stage3"]) == 9  # Keras block4 + the 8 middle-flow blocks
    assert "downsample" in p["stage3"]["block0"] and "downsample" not in p["stage3"]["block1"]
    assert sorted(p["stage3"]["block1"]) == [
        "bn1",
        "bn2",
        "bn3",
        "sepconv1",
        "sepconv2",
        "sepconv3",
    ]
    sep = p["stage3"]["block1"]["sepconv1"]
    assert sep["depthwise"]["kernel"].shape == (3, 3, 1, 728)
    assert sep["pointwise"]["kernel"].shape == (1, 1, 728, 728) and "bias" not in sep["pointwise"]
    assert p["stage4"]["block1"]["sepconv2"]["pointwise"]["kernel"].shape == (1, 1, 1536, 2048)
    # Keras' count_params() also counts the 54,528 BatchNorm moving means/variances
    info = models.model_info("xception")
    stats = models.abstract_variables(models.create_model("xception"), (1, 71, 71, 3))[
        "batch_stats"
    ]
    n_stats = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(stats))
    assert info.params + n_stats == info.extra["keras_count_params"] == 22_910_480


def test_xception_batchnorm_is_keras_and_minimum_size():
    seen = _bn_settings(models.create_model("xception"), (1, 7, 7, 3))
    assert len(seen) == 40 and set(seen) == {(1e-3, 0.99)}
    feats = _features(models.create_model("xception", features_only=True), (1, 7, 7, 3))
    assert feats[-1].shape == (1, 1, 1, 2048)
    with pytest.raises(ValueError, match="at least 7x7"):
        models.create_model("xception").init(jax.random.key(0), jnp.zeros((1, 6, 6, 3)))
