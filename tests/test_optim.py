"""Optimizers (jaxcnn.train.optim): decay masks from parameter paths, Nesterov switch, LAMB,
LARS, schedules and their per-step values."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcnn import models
from jaxcnn.train.optim import (
    OPTIMIZERS,
    learning_rate_at,
    make_optimizer,
    make_schedule,
    weight_decay_mask,
)


def _flat(tree):
    return {"/".join(k.key for k in p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.parametrize(
    "name,shape,decayed,exempt",
    [
        (
            "resnet18",
            (1, 32, 32, 3),
            ["stage1/block0/conv1/kernel", "head/kernel"],
            ["stage1/block0/bn1/scale", "stage1/block0/bn1/bias", "head/bias"],
        ),
        (
            "vit_ti_16",
            (1, 224, 224, 3),
            ["block0/attn/proj/kernel", "stem/kernel"],
            ["cls_token", "pos_embed", "block0/norm1/scale", "block0/attn/proj/bias"],
        ),
        (
            "convnext_tiny",
            (1, 64, 64, 3),
            ["stage1/block0/dwconv/kernel"],
            ["stage1/block0/layer_scale", "norm/scale"],
        ),
        (
            "swin_t",
            (1, 224, 224, 3),
            ["head/kernel"],
            ["stage1/block0/attn/relative_position_bias_table"],
        ),
    ],
)
def test_weight_decay_mask_from_paths(name, shape, decayed, exempt):
    params = models.abstract_variables(models.create_model(name, num_classes=10), shape)["params"]
    mask = _flat(weight_decay_mask(params))
    for p in decayed:
        assert mask[p] is True, p
    for p in exempt:
        assert mask[p] is False, p
    # every leaf of 2+ dims not named in the rule decays; every 1-D leaf is exempt
    flat = _flat(params)
    for p, leaf in flat.items():
        if len(leaf.shape) <= 1:
            assert mask[p] is False, p


def test_weight_decay_mask_extra_regex():
    params = {"stem": {"kernel": jnp.ones((3, 3, 1, 4))}, "head": {"kernel": jnp.ones((4, 2))}}
    mask = weight_decay_mask(params, exclude=[r"^stem/"])
    assert mask == {"stem": {"kernel": False}, "head": {"kernel": True}}


def _one_step(tx, params, grads):
    state = tx.init(params)
    updates, _ = tx.update(grads, state, params)
    return optax.apply_updates(params, updates)


PARAMS = {"dense": {"kernel": jnp.full((2, 2), 2.0), "bias": jnp.full((2,), 2.0)}}
ZERO = jax.tree.map(jnp.zeros_like, PARAMS)


@pytest.mark.parametrize("name", ["sgd", "adamw", "lamb", "lars"])
def test_decay_mask_spares_bias(name):
    # zero gradients: only weight decay moves parameters
    tx = make_optimizer(name, 0.1, weight_decay=0.5, decay_mask=True)
    out = _one_step(tx, PARAMS, ZERO)
    assert float(out["dense"]["kernel"][0, 0]) < 2.0
    np.testing.assert_array_equal(out["dense"]["bias"], PARAMS["dense"]["bias"])
    tx = make_optimizer(name, 0.1, weight_decay=0.5)  # no mask: everything decays
    out = _one_step(tx, PARAMS, ZERO)
    assert float(out["dense"]["bias"][0]) < 2.0


def test_sgd_nesterov_switch_and_current_behaviour():
    grads = jax.tree.map(jnp.ones_like, PARAMS)
    default = make_optimizer("sgd", 0.1, weight_decay=1e-2)
    nesterov = optax.chain(optax.add_decayed_weights(1e-2), optax.sgd(0.1, 0.9, nesterov=True))
    plain = optax.chain(optax.add_decayed_weights(1e-2), optax.sgd(0.1, 0.9, nesterov=False))
    chex.assert_trees_all_close(
        _one_step(default, PARAMS, grads), _one_step(nesterov, PARAMS, grads)
    )
    off = make_optimizer("sgd", 0.1, weight_decay=1e-2, nesterov=False)
    chex.assert_trees_all_close(_one_step(off, PARAMS, grads), _one_step(plain, PARAMS, grads))
    assert not np.allclose(
        _one_step(off, PARAMS, grads)["dense"]["kernel"],
        _one_step(default, PARAMS, grads)["dense"]["kernel"],
    )


def test_lamb_and_lars_are_optax():
    grads = jax.tree.map(lambda a: a * 0.3, PARAMS)
    for name, ref in [
        ("lamb", optax.lamb(0.1, weight_decay=0.01)),
        ("lars", optax.lars(0.1, weight_decay=0.01, momentum=0.9)),
    ]:
        got = _one_step(make_optimizer(name, 0.1, weight_decay=0.01), PARAMS, grads)
        chex.assert_trees_all_close(got, _one_step(ref, PARAMS, grads))
    with pytest.raises(ValueError, match="expected one of"):
        make_optimizer("adagrad", 0.1)
    assert set(OPTIMIZERS) >= {"adam", "adamw", "sgd", "rmsprop", "lamb", "lars"}


def test_schedules_and_logged_values():
    s = make_schedule("cosine", 1.0, 110, warmup_steps=10, min_lr=0.1, warmup_init_lr=0.01)
    np.testing.assert_allclose(learning_rate_at(s, 0), 0.01, rtol=1e-6)
    np.testing.assert_allclose(learning_rate_at(s, 10), 1.0, rtol=1e-6)
    np.testing.assert_allclose(learning_rate_at(s, 60), 0.55, rtol=1e-5)
    np.testing.assert_allclose(learning_rate_at(s, 110), 0.1, rtol=1e-5)
    v = learning_rate_at(s, np.arange(120))
    assert v.shape == (120,) and np.all(np.diff(v[10:]) <= 1e-7)
    assert learning_rate_at(0.3, 5) == 0.3
    # defaults unchanged: warm-up from 0, cosine to 0
    s0 = make_schedule("cosine", 1.0, 100, warmup_steps=10)
    assert learning_rate_at(s0, 0) == 0.0 and abs(learning_rate_at(s0, 100)) < 1e-7
    with pytest.raises(ValueError, match="min_lr"):
        make_schedule("step", 1.0, 100, min_lr=0.1)
