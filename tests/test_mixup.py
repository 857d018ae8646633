"""Mixup / CutMix on device (jaxcnn.train.mixup): timm's per-batch semantics, soft targets."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcnn.train import losses, mixup

B, H, W, C, K = 8, 12, 10, 3, 5


def _batch(seed=0):
    x = jax.random.uniform(jax.random.key(seed), (B, H, W, C)) + jnp.arange(B)[:, None, None, None]
    y = jnp.arange(B) % K
    return x, y


def _mix(cfg):
    return jax.jit(lambda k, x, y: mixup.mix_batch(k, x, y, K, cfg))


def test_mixup_blends_images_and_targets_with_one_lambda():
    cfg = mixup.MixupConfig(mixup_alpha=0.8)
    x, y = _batch()
    out, t, lam = _mix(cfg)(jax.random.key(3), x, y)
    lam = float(lam)
    assert 0.0 < lam < 1.0
    chex.assert_trees_all_close(out, lam * x + (1 - lam) * x[::-1], atol=1e-6)
    onehot = jax.nn.one_hot(y, K)
    chex.assert_trees_all_close(t, lam * onehot + (1 - lam) * onehot[::-1], atol=1e-6)
    chex.assert_trees_all_close(t.sum(-1), jnp.ones(B), atol=1e-6)


def test_cutmix_pastes_one_box_and_corrects_lambda():
    cfg = mixup.MixupConfig(cutmix_alpha=1.0)
    x, y = _batch()
    seen_box = False
    mix = _mix(cfg)  # one compilation for the ten draws
    for seed in range(10):
        out, t, lam = mix(jax.random.key(seed), x, y)
        from_rev = np.all(np.asarray(out) == np.asarray(x[::-1]), axis=-1)
        from_self = np.all(np.asarray(out) == np.asarray(x), axis=-1)
        assert np.all(from_rev | from_self), "CutMix blended pixels"
        box = from_rev[0]
        if box.any():
            seen_box = True
            ys, xs = np.nonzero(box)
            assert box.sum() == (np.ptp(ys) + 1) * (np.ptp(xs) + 1), "pasted region is not a box"
        assert np.all(from_rev == from_rev[:1]), "the box differs between examples"
        np.testing.assert_allclose(float(lam), 1 - box.sum() / (H * W), atol=1e-6)
        onehot = jax.nn.one_hot(y, K)
        chex.assert_trees_all_close(t, lam * onehot + (1 - lam) * onehot[::-1], atol=1e-6)
    assert seen_box


def test_switch_prob_and_prob():
    x, y = _batch()
    both = _mix(mixup.MixupConfig(mixup_alpha=1.0, cutmix_alpha=1.0, switch_prob=0.3))
    n_cut = n_mix = 0
    for seed in range(200):
        out, _, lam = both(jax.random.key(seed), x, y)
        exact = np.all(
            (np.asarray(out) == np.asarray(x)) | (np.asarray(out) == np.asarray(x[::-1]))
        )
        n_cut += bool(exact and float(lam) < 1)
        n_mix += not exact
    assert 40 <= n_cut <= 80 and n_cut + n_mix >= 190, (n_cut, n_mix)

    half = _mix(mixup.MixupConfig(mixup_alpha=1.0, prob=0.5))
    unmixed = sum(float(half(jax.random.key(s), x, y)[2]) == 1.0 for s in range(200))
    assert 75 <= unmixed <= 125, unmixed


def test_label_smoothing_folded_into_targets():
    x, y = _batch()
    cfg = mixup.MixupConfig(mixup_alpha=1.0, prob=0.0, label_smoothing=0.1)
    out, t, lam = _mix(cfg)(jax.random.key(0), x, y)
    assert float(lam) == 1.0
    chex.assert_trees_all_equal(out, x)
    chex.assert_trees_all_close(t, optax.smooth_labels(jax.nn.one_hot(y, K), 0.1), atol=1e-7)
    # mixing off entirely: label smoothing alone, images untouched
    out, t, lam = mixup.mix_batch(
        jax.random.key(0), x, y, K, mixup.MixupConfig(label_smoothing=0.2)
    )
    chex.assert_trees_all_equal(out, x)
    np.testing.assert_allclose(np.asarray(t).max(-1), 1 - 0.2 + 0.2 / K, rtol=1e-6)


def test_lambda_distribution_follows_beta():
    x, y = _batch()
    f = _mix(mixup.MixupConfig(mixup_alpha=0.2))
    lams = np.array([float(f(jax.random.key(s), x, y)[2]) for s in range(300)])
    # Beta(0.2, 0.2) is U-shaped: most mass near 0 and 1, mean 0.5
    assert abs(lams.mean() - 0.5) < 0.08
    assert np.mean((lams < 0.1) | (lams > 0.9)) > 0.5


def test_one_compilation_for_every_key():
    cfg = mixup.MixupConfig(mixup_alpha=0.8, cutmix_alpha=1.0)
    x, y = _batch()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(key):
        return mixup.mix_batch(key, x, y, K, cfg)

    for s in range(4):
        f(jax.random.key(s))


def test_soft_cross_entropy_and_train_accuracy():
    logits = jax.random.normal(jax.random.key(1), (B, K))
    y = jnp.arange(B) % K
    onehot = jax.nn.one_hot(y, K)
    w = jnp.array([1, 1, 1, 1, 1, 1, 0, 0], jnp.float32)
    chex.assert_trees_all_close(
        mixup.soft_cross_entropy(logits, onehot, w), losses.cross_entropy(logits, y, w), atol=1e-6
    )
    # dominant label: 0.7 of class 1 and 0.3 of class 3 -> predicting 1 is correct
    t = 0.7 * jax.nn.one_hot(jnp.ones(B, int), K) + 0.3 * jax.nn.one_hot(3 * jnp.ones(B, int), K)
    pred1 = jnp.zeros((B, K)).at[:, 1].set(5.0)
    pred3 = jnp.zeros((B, K)).at[:, 3].set(5.0)
    assert float(mixup.soft_target_metrics(pred1, t, w)["correct"]) == 6.0
    assert float(mixup.soft_target_metrics(pred3, t, w)["correct"]) == 0.0
    m = mixup.soft_target_metrics(logits, onehot)
    ref = losses.classification_metrics(logits, y)
    chex.assert_trees_all_close(m, ref, atol=1e-5)


def test_config_keys_and_validation():
    cfg = mixup.mixup_from_config(
        {"mixup_alpha": 0.8, "cutmix_alpha": 1.0, "mixup_switch_prob": 0.5, "label_smoothing": 0.1}
    )
    assert cfg == mixup.MixupConfig(0.8, 1.0, 1.0, 0.5, 0.1)
    assert not mixup.mixup_from_config({}).enabled
    with pytest.raises(ValueError, match="mixup prob"):
        mixup.MixupConfig(mixup_alpha=1.0, prob=1.5)
