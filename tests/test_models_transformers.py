"""ViT and Swin beyond the registry sweep: position-embedding resampling, input-size errors,
sown attention weights, attention rollout and its PNG, Swin's shifted-window mask and relative
position index, stochastic depth. Small configs keep the default run short."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import models
from jaxcnn.inspect.attention import attention_rollout, collect_attention, save_attention_overlay
from jaxcnn.layers.attention import (
    relative_position_index,
    shifted_window_mask,
    window_partition,
    window_reverse,
)
from jaxcnn.models.vit import resample_pos_embed

KEY = jax.random.key(0)


def n_params(tree):
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def tiny_vit(**kw):
    """vit_ti_16 shrunk: 32x32 images, 8x8 patches (4x4 grid), 2 blocks."""
    cfg = dict(img_size=32, patch_size=8, depth=2, num_classes=5)
    cfg.update(kw)
    return models.create_model("vit_ti_16", **cfg)


def init(model, shape, seed=0):
    """Variables with the shapes of ``model.init`` (found abstractly) filled with N(0, 0.1)
    from NumPy: compiling the real initialisers costs more than these tests themselves; the
    registry sweep covers ``init``."""
    abstract = jax.eval_shape(lambda: model.init(KEY, jnp.zeros(shape)))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: jnp.asarray(rng.normal(0, 0.1, a.shape), a.dtype), abstract)


@pytest.fixture(scope="module")
def vit_and_vars():
    model = tiny_vit()
    return model, init(model, (2, 32, 32, 3)), jax.random.normal(KEY, (2, 32, 32, 3))


@pytest.fixture(scope="module")
def vit_apply(vit_and_vars):
    """Jitted ``apply`` returning ``(logits, intermediates)`` of the tiny ViT."""
    model, v, x = vit_and_vars
    return jax.jit(lambda v, x: model.apply(v, x, mutable=["intermediates"]))(v, x)


# ---------------------------------------------------------------- position embeddings
def test_resample_224_to_384_runs_with_same_param_count():
    m224 = models.create_model("vit_ti_16", depth=1, num_classes=3)
    v224 = init(m224, (1, 224, 224, 3))
    v384 = resample_pos_embed(v224, new_grid=24)
    m384 = m224.clone(img_size=384)
    # exactly the parameters a model built for 384 has (same count, same shapes) ...
    abstract384 = jax.eval_shape(lambda: m384.init(KEY, jnp.zeros((1, 384, 384, 3))))["params"]
    chex.assert_trees_all_equal_shapes(v384["params"], abstract384)
    assert n_params(v384["params"]) == n_params(abstract384)
    # ... and the 224 weights everywhere but pos_embed, which gains (577 - 197) * 192 entries
    assert n_params(v384["params"]) - n_params(v224["params"]) == (577 - 197) * 192
    rest = lambda p: {k: w for k, w in p.items() if k != "pos_embed"}  # noqa: E731
    chex.assert_trees_all_equal(rest(v384["params"]), rest(v224["params"]))
    chex.assert_shape(v384["params"]["pos_embed"], (1, 1 + 24 * 24, 192))
    # class token embedding kept as is
    chex.assert_trees_all_equal(
        v384["params"]["pos_embed"][:, 0], v224["params"]["pos_embed"][:, 0]
    )
    y = jax.jit(m384.apply)(v384, jax.random.normal(KEY, (1, 384, 384, 3)))
    chex.assert_shape(y, (1, 3))
    chex.assert_tree_all_finite(y)


def test_resample_same_grid_is_identity(vit_and_vars):
    _, v, _ = vit_and_vars
    for method in ("bicubic", "bilinear"):
        same = resample_pos_embed(v["params"], new_grid=(4, 4), method=method)
        chex.assert_trees_all_close(same, v["params"], atol=1e-6)


def test_resample_smooth_field_stays_smooth():
    # a linear ramp over the grid is reproduced by bilinear resampling away from the borders
    ramp = np.arange(8, dtype=np.float32)[:, None] + np.zeros((8, 8), np.float32)
    pe = np.concatenate([np.full((1, 1), 7.0), ramp.reshape(1, 64)], axis=1)[..., None]
    out = resample_pos_embed({"pos_embed": jnp.asarray(pe)}, (16, 16), method="bilinear")
    grid = np.asarray(out["pos_embed"][0, 1:, 0]).reshape(16, 16)
    assert out["pos_embed"][0, 0, 0] == 7.0
    np.testing.assert_allclose(np.diff(grid[2:-2, 5]), 0.5, atol=1e-5)


def test_patch_multiple_and_img_size_errors(vit_and_vars):
    model, v, _ = vit_and_vars
    with pytest.raises(ValueError, match=r"multiples of the patch size 8, got 36x36"):
        model.apply(v, jnp.zeros((1, 36, 36, 3)))
    with pytest.raises(ValueError, match=r"built for 32x32.*got 48x48.*resample_pos_embed"):
        model.apply(v, jnp.zeros((1, 48, 48, 3)))
    with pytest.raises(ValueError, match="at least 8x8"):
        model.apply(v, jnp.zeros((1, 7, 7, 3)))
    with pytest.raises(ValueError, match="not a multiple of the patch size"):
        tiny_vit(img_size=30).init(KEY, jnp.zeros((1, 32, 32, 3)))


# ---------------------------------------------------------------- attention weights
def test_vit_attention_weights_are_sown(vit_and_vars, vit_apply):
    model, v, x = vit_and_vars
    abstract = jax.eval_shape(lambda: model.init(KEY, x))
    assert set(abstract) == {"params"}  # init stores no attention weights
    logits, state = vit_apply
    chex.assert_shape(logits, (2, 5))
    inter = state["intermediates"]
    assert sorted(inter) == ["block0", "block1"]
    for name in ("block0", "block1"):
        (w,) = inter[name]["attn"]["attention"]
        chex.assert_shape(w, (2, 3, 17, 17))  # (batch, heads, 1 + 4*4, 1 + 4*4)
        np.testing.assert_allclose(np.asarray(w).sum(-1), 1.0, atol=1e-5)
        assert np.all(np.asarray(w) >= 0)


def test_collect_attention_and_rollout_png(vit_and_vars, tmp_path):
    model, v, x = vit_and_vars
    atts = collect_attention(model, v, x[:1])
    assert len(atts) == 2 and atts[0].shape == (1, 3, 17, 17)
    roll = attention_rollout([a[0] for a in atts])
    assert roll.shape == (4, 4) and np.isclose(roll.max(), 1.0) and np.all(roll >= 0)
    np.testing.assert_allclose(attention_rollout(atts)[0], roll)  # batched form agrees
    filtered = attention_rollout(atts, discard_ratio=0.5, head_fusion="max")
    assert filtered.shape == (1, 4, 4) and np.all(np.isfinite(filtered))
    path = save_attention_overlay(np.asarray(x[0]), roll, tmp_path / "rollout.png", title="t")
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_rollout_follows_the_class_token():
    # one layer, every head: the class token looks only at patch 5, patches look at themselves
    t = 17
    w = np.eye(t)
    w[0] = 0.0
    w[0, 5] = 1.0
    roll = attention_rollout([np.broadcast_to(w, (3, t, t))])
    expected = np.zeros(16)
    expected[4] = 1.0  # patch 5 is grid cell 4 = (1, 0)
    np.testing.assert_allclose(roll.reshape(-1), expected)
    # two layers: token 5 attended to token 6 in the first, so attention flows on to it:
    # class row = 0.5 e0 + 0.25 e5 + 0.25 e6
    w1 = np.eye(t)
    w1[5] = 0.0
    w1[5, 6] = 1.0
    roll2 = attention_rollout([w1[None], w[None]])
    expected[5] = 1.0
    np.testing.assert_allclose(roll2.reshape(-1), expected)
    with pytest.raises(ValueError, match="head_fusion"):
        attention_rollout([w[None]], head_fusion="median")


# ---------------------------------------------------------------- ViT options
def test_vit_features_only_and_dropout_stream(vit_and_vars):
    model, v, x = vit_and_vars
    feats = jax.eval_shape(model.clone(features_only=True).apply, v, x)
    assert isinstance(feats, list) and len(feats) == 1
    chex.assert_shape(feats[0], (2, 4, 4, 192))
    m = tiny_vit(dropout=0.1, drop_path_rate=0.2)
    train, evals = run_train_and_eval(m, v, x)
    assert not np.allclose(train[0], train[1])  # a new dropout key, a new output
    assert not np.allclose(train[0], evals[0])
    chex.assert_trees_all_equal(evals[0], evals[1])  # eval ignores the key


def run_train_and_eval(model, v, x):
    """Outputs in train and eval mode for two dropout keys (one compilation)."""
    keys = jax.random.split(jax.random.key(1), 2)

    def one(k):
        return (
            model.apply(v, x, train=True, rngs={"dropout": k}),  # noqa: E731
            model.apply(v, x, train=False, rngs={"dropout": k}),
        )

    return jax.jit(jax.vmap(one))(keys)


# ---------------------------------------------------------------- Swin
def _wrapped(r, size, shift):
    return r >= size - shift  # rolled coordinate came from the other side of the image


@pytest.mark.parametrize(
    "size,window,shift",
    [((8, 8), (4, 4), (2, 2)), ((6, 9), (3, 3), (1, 1)), ((4, 8), (4, 4), (0, 2))],
)
def test_shifted_window_mask_matches_brute_force(size, window, shift):
    h, w = size
    mask = shifted_window_mask(size, window, shift)
    nw, n = (h // window[0]) * (w // window[1]), window[0] * window[1]
    assert mask.shape == (nw, n, n)
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    # tag every rolled position with (wrapped in h, wrapped in w); same tag <=> may attend
    tag = _wrapped(rows, h, shift[0]) * 2 + _wrapped(cols, w, shift[1])
    tags = window_partition(tag[None, :, :, None].astype(np.float32), window)[..., 0]
    expected = np.where(tags[:, :, None] == tags[:, None, :], 0.0, -100.0)
    np.testing.assert_array_equal(mask, expected)
    assert np.any(mask != 0)  # the last windows really are masked
    np.testing.assert_array_equal(mask[0], 0.0)  # the top-left window is never split


def test_window_partition_roundtrip_and_relative_index():
    x = jnp.arange(2 * 6 * 9 * 5, dtype=jnp.float32).reshape(2, 6, 9, 5)
    win = window_partition(x, (3, 3))
    chex.assert_shape(win, (2 * 2 * 3, 9, 5))
    chex.assert_trees_all_equal(win[1, 0], x[0, 0, 3])  # 2nd window starts at column 3
    chex.assert_trees_all_equal(window_reverse(win, (3, 3), 6, 9), x)
    idx = relative_position_index(7)
    assert idx.shape == (49, 49) and idx.min() == 0 and idx.max() == 13 * 13 - 1
    assert np.all(np.diag(idx) == 6 * 13 + 6)  # zero offset is the table's centre
    assert np.array_equal(idx[0, 48], 0) and idx[48, 0] == 13 * 13 - 1


def tiny_swin(**kw):
    """swin_t shrunk: width 24 (8 channels per head), shallower stages."""
    cfg = dict(embed_dim=24, depths=(2,), num_heads=(3,), num_classes=4)  # stage 1 only
    cfg.update(kw)
    return models.create_model("swin_t", **cfg)


def test_swin_attention_masks_and_features():
    model = tiny_swin()
    x = jax.random.normal(KEY, (1, 64, 64, 3))  # stage sides 16, 8, 4, 2
    v = init(model, x.shape)
    attn = v["params"]["stage1"]["block1"]["attn"]
    assert set(attn) == {"qkv", "proj", "relative_position_bias_table"}  # index is no param
    chex.assert_shape(attn["relative_position_bias_table"], (169, 3))
    _, state = jax.jit(lambda v, x: model.apply(v, x, mutable=["intermediates"]))(v, x)
    w0 = np.asarray(state["intermediates"]["stage1"]["block0"]["attn"]["attention"][0])
    w1 = np.asarray(state["intermediates"]["stage1"]["block1"]["attn"]["attention"][0])
    # 16x16 padded to 21x21: 9 windows of 49 tokens, 3 heads
    assert w0.shape == w1.shape == (9, 3, 49, 49)
    np.testing.assert_allclose(w1.sum(-1), 1.0, atol=1e-5)
    masked = np.broadcast_to(shifted_window_mask((21, 21), (7, 7), (3, 3))[:, None] < 0, w1.shape)
    assert masked.any() and w1[masked].max() < 1e-20  # shifted block ignores masked pairs
    assert w0[masked].min() > 0  # the unshifted block does not
    four = tiny_swin(depths=(2, 1, 1, 1), num_heads=(3, 6, 12, 24), features_only=True)
    feats = jax.eval_shape(lambda: four.apply(four.init(KEY, x), x))
    assert [f.shape for f in feats] == [
        (1, 16, 16, 24),
        (1, 8, 8, 48),
        (1, 4, 4, 96),
        (1, 2, 2, 192),
    ]


def test_swin_drop_path_train_vs_eval():
    # block1 drops its two branches with probability 0.5 per sample: with 8 samples the two
    # keys draw different masks (2^-16 chance of equal ones; fixed seeds make this exact)
    model = tiny_swin(drop_path_rate=0.5)
    x = jax.random.normal(KEY, (8, 32, 32, 3))
    train, evals = run_train_and_eval(model, init(model, x.shape), x)
    assert not np.allclose(train[0], train[1])
    assert not np.allclose(train[0], evals[0])
    chex.assert_trees_all_equal(evals[0], evals[1])
