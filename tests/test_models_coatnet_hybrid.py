"""CoAtNet and the hybrid R50+ViT-B/16 (timm forms) beyond the registry sweep: parameters per
stage equal timm's, feature and attention shapes on small images, the attention tools
(collection, rollout, attention map), stochastic depth, input-size errors, weight
standardisation, and which BatchNorms fold. Numerical agreement with timm:
experiments/verify_timm.py."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcnn.inspect as ji
from jaxcnn import models
from jaxcnn.inspect._common import random_variables
from jaxcnn.inspect.attention import attention_rollout, collect_attention
from jaxcnn.models.vit import resample_pos_embed
from jaxcnn.models.vit_hybrid import StdConv

# timm 1.0.31, num_classes=1000: parameters of the timm modules forming each part here
# (coatnet: stem | stages.0..3 | head.norm + head.pre_logits + head.fc; hybrid:
# patch_embed.backbone.stem | .stages.0..2 | patch_embed.proj | blocks | head).
TIMM_PARTS = {
    "coatnet_0": {
        "stem": 38_720,
        "stage1": 189_584,
        "stage2": 1_084_752,
        "stage3": 8_768_604,
        "stage4": 13_594_032,
        "head": 1_361_128,
    },
    "coatnet_2": {  # stem width = stage1 width: the first shortcut has no 1x1 conv
        "stem": 151_168,
        "stage1": 342_848,
        "stage2": 3_924_864,
        "stage3": 44_034_528,
        "stage4": 24_154_688,
        "head": 2_076_648,
    },
    "vit_hybrid_r50_b16": {
        "stem": 9_536,
        "stage1": 215_808,
        "stage2": 1_219_584,
        "stage3": 10_449_920,
        "patch_embed": 787_200,
        "blocks": 85_054_464,
        "head": 769_000,
    },
}
HEAD_PARTS = {"norm", "pre_logits", "head"}  # timm's NormMlpClassifierHead, split here


def n_params(tree):
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def _parts(name, params):
    out = {}
    for k, v in params.items():
        part = "blocks" if k.startswith("block") else k
        part = "head" if name.startswith("coatnet") and k in HEAD_PARTS else part
        part = "blocks" if k in ("cls_token", "pos_embed", "norm") and "vit" in name else part
        out[part] = out.get(part, 0) + n_params(v)
    return out


@pytest.mark.parametrize("name", sorted(TIMM_PARTS))
def test_parameters_per_stage_equal_timm(name):
    params = models.abstract_variables(models.create_model(name), (1, 224, 224, 3))["params"]
    want = dict(TIMM_PARTS[name])
    if "vit" in name:  # timm counts cls_token, pos_embed, norm outside blocks: same total
        want["blocks"] += 768 + 197 * 768 + 2 * 768
    assert _parts(name, params) == want
    if name == "coatnet_2":
        assert "shortcut" not in params["stage1"]["block0"]  # 128 -> 128: pool only
        assert "expand" in params["stage2"]["block0"]["shortcut"]


# ---------------------------------------------------------------------------------- CoAtNet
@pytest.fixture(scope="module")
def coatnet64():
    """coatnet_0 built for 64x64 (4x4 and 2x2 attention maps), random variables, one jit."""
    model = models.create_model("coatnet_0", img_size=64, num_classes=5, drop_path_rate=0.3)
    x = jax.random.normal(jax.random.key(0), (2, 64, 64, 3))
    v = random_variables(models.abstract_variables(model, x.shape), seed=1)
    feats_model = model.clone(features_only=True)

    @jax.jit
    def run(v, x):
        logits, state = model.apply(v, x, mutable=["intermediates"])
        train = [
            model.apply(
                v, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(k)}
            )
            for k in (1, 2)
        ]
        return logits, state["intermediates"], train, feats_model.apply(v, x)

    return model, v, x, run(v, x)


def test_coatnet_forward_features_and_attention(coatnet64):
    model, v, x, (logits, inter, _, feats) = coatnet64
    chex.assert_shape(logits, (2, 5))
    chex.assert_tree_all_finite(logits)
    assert [f.shape for f in feats] == [
        (2, 32, 32, 64),
        (2, 16, 16, 96),
        (2, 8, 8, 192),
        (2, 4, 4, 384),
        (2, 2, 2, 768),
    ]
    # one map per transformer block: stage3 5 x (12 heads, 16 tokens), stage4 2 x (24, 4)
    maps = {
        (s, b): inter[s][b]["attn"]["attention"][0] for s in ("stage3", "stage4") for b in inter[s]
    }
    assert sorted(maps) == [("stage3", f"block{i}") for i in range(5)] + [
        ("stage4", "block0"),
        ("stage4", "block1"),
    ]
    for (s, _), a in maps.items():
        chex.assert_shape(a, (2, 12, 16, 16) if s == "stage3" else (2, 24, 4, 4))
        np.testing.assert_allclose(np.asarray(a).sum(-1), 1.0, rtol=1e-5)
    assert "stage1" not in inter and "stage2" not in inter  # MBConv stages sow nothing


def test_coatnet_attention_tools(coatnet64):
    model, v, x, _ = coatnet64
    maps = collect_attention(model, v, x)
    assert [m.shape for m in maps] == [(2, 12, 16, 16)] * 5 + [(2, 24, 4, 4)] * 2
    amap, what = ji.attention_map(model, v, np.asarray(x[0]))
    assert amap.shape == (4, 4) and amap.max() == pytest.approx(1.0)
    assert "4x4" in what


def test_coatnet_relative_bias_and_head_first_qkv():
    """The bias of query i and key j is the table row of their offset (timm's index), and
    ``qkv`` is head-major: zeroing head 0's block of ``qkv`` columns makes its attention
    uniform apart from the bias."""
    from jaxcnn.models.coatnet import RelPosAttention

    att = RelPosAttention(64)  # 2 heads of 32
    x = jax.random.normal(jax.random.key(0), (1, 3, 3, 16))
    v = random_variables(jax.eval_shape(lambda: att.init(jax.random.key(1), x)))
    table = v["params"]["rel_pos"]["relative_position_bias_table"]
    chex.assert_shape(table, (25, 2))
    p = jax.tree.map(np.array, v["params"])
    p["qkv"]["kernel"][:, :96] = 0.0  # head 0: q, k, v columns (head-major)
    p["qkv"]["bias"][:96] = 0.0
    _, state = att.apply({"params": p}, x, mutable=["intermediates"])
    a = np.asarray(state["intermediates"]["attention"][0])[0]  # (heads, 9, 9)
    # head 0 logits are the bias alone: softmax over each query's row of the table
    from jaxcnn.layers.attention import relative_position_index

    bias = np.asarray(table)[relative_position_index((3, 3)).reshape(-1), 0].reshape(9, 9)
    want = np.exp(bias) / np.exp(bias).sum(-1, keepdims=True)
    np.testing.assert_allclose(a[0], want, rtol=1e-5)
    assert not np.allclose(a[1], want)


def test_coatnet_drop_path_and_batch_stats(coatnet64):
    model, v, x, (_, _, train, _) = coatnet64
    (out1, upd1), (out2, _) = train
    chex.assert_tree_all_finite((out1, out2))
    assert not np.allclose(out1, out2)  # different dropout keys drop different blocks
    changed = jax.tree.map(
        lambda a, b: bool(jnp.any(a != b)), v["batch_stats"], upd1["batch_stats"]
    )
    assert all(jax.tree.leaves(changed))


def test_coatnet_input_checks():
    model = models.create_model("coatnet_0")
    init = lambda m, side: jax.eval_shape(  # noqa: E731
        lambda: m.init(jax.random.key(0), jnp.zeros((1, side, side, 3)))
    )
    with pytest.raises(ValueError, match=r"coatnet_0: built for 224x224.*img_size=\(96, 96\)"):
        init(model, 96)
    with pytest.raises(ValueError, match="multiples of 32, got 100x100"):
        init(model, 100)
    with pytest.raises(ValueError, match="at least 32x32"):
        init(model, 31)
    with pytest.raises(ValueError, match="img_size must be a multiple of 32, got 80x80"):
        init(model.clone(img_size=80), 96)
    # built for 96: the stage3 table covers a 6x6 map ((2*6-1)^2 rows), stage4 3x3 (25)
    v = init(model.clone(img_size=96), 96)["params"]
    chex.assert_shape(
        v["stage3"]["block1"]["attn"]["rel_pos"]["relative_position_bias_table"], (121, 12)
    )
    chex.assert_shape(
        v["stage4"]["block1"]["attn"]["rel_pos"]["relative_position_bias_table"], (25, 24)
    )


def test_coatnet_batchnorm_pairs():
    """The convs followed by a BatchNorm: stem conv1 and each MBConv's 1x1 and depthwise
    convs. The pre-norms follow a residual sum or the stem output (no conv of their own)."""
    pairs = ji.find_conv_bn_pairs(models.create_model("coatnet_0", img_size=64), (1, 64, 64, 3))
    bns = {p.bn_path[-1] for p in pairs if p.conv_path[0] != "stem"}
    assert bns == {"norm1", "norm2"}
    per_block = [p for p in pairs if p.conv_path[:2] == ("stage2", "block1")]
    assert [p.conv_path[-1] for p in per_block] == ["conv1_1x1", "conv2_kxk"]


# ----------------------------------------------------------------------------------- hybrid
@pytest.fixture(scope="module")
def hybrid64():
    model = models.create_model("vit_hybrid_r50_b16", img_size=64, num_classes=3)
    x = jax.random.normal(jax.random.key(0), (2, 64, 64, 3))
    v = random_variables(models.abstract_variables(model, x.shape), seed=2)
    feats_model = model.clone(features_only=True)

    @jax.jit
    def run(v, x):
        logits, state = model.apply(v, x, mutable=["intermediates"])
        return logits, state["intermediates"], feats_model.apply(v, x)

    return model, v, x, run(v, x)


def test_hybrid_forward_features_and_rollout(hybrid64):
    model, v, x, (logits, inter, feats) = hybrid64
    chex.assert_shape(logits, (2, 3))
    chex.assert_tree_all_finite(logits)
    assert [f.shape for f in feats] == [
        (2, 16, 16, 256),
        (2, 8, 8, 512),
        (2, 4, 4, 1024),
        (2, 4, 4, 768),
    ]
    maps = [inter[f"block{i}"]["attn"]["attention"][0] for i in range(12)]
    assert all(m.shape == (2, 12, 17, 17) for m in maps)  # class token + 4x4 tokens
    roll = attention_rollout(maps)
    assert roll.shape == (2, 4, 4) and np.allclose(roll.max(axis=(1, 2)), 1.0)
    amap, what = ji.attention_map(model, v, np.asarray(x[0]))
    assert amap.shape == (4, 4) and "rollout over 12 layers" in what


def test_hybrid_input_checks_and_resample():
    model = models.create_model("vit_hybrid_r50_b16", img_size=64)
    init = lambda m, side: jax.eval_shape(  # noqa: E731
        lambda: m.init(jax.random.key(0), jnp.zeros((1, side, side, 3)))
    )
    with pytest.raises(ValueError, match=r"built for 64x64.*new_grid=\(6, 6\)"):
        init(model, 96)
    with pytest.raises(ValueError, match="at least 16x16"):
        init(model, 15)
    v64 = random_variables(init(model, 64))
    v96 = resample_pos_embed(v64, new_grid=6)
    chex.assert_trees_all_equal_shapes(v96, init(model.clone(img_size=96), 96))
    # SAME padding: a side that is not a multiple of 16 gives ceil(side / 16) tokens per side
    chex.assert_shape(init(model.clone(img_size=72), 72)["params"]["pos_embed"], (1, 26, 768))


def test_std_conv_standardises_each_filter():
    """Weight standardisation: the output does not change when a filter is shifted and
    scaled, and equals a plain SAME convolution with the standardised kernel."""
    conv = StdConv(4, 3, 2)
    x = jax.random.normal(jax.random.key(0), (1, 7, 7, 3))
    k = jax.random.normal(jax.random.key(1), (3, 3, 3, 4))
    y = conv.apply({"params": {"kernel": k}}, x)
    y2 = conv.apply({"params": {"kernel": 3.0 * k + 0.5}}, x)
    chex.assert_trees_all_close(y, y2, atol=1e-5)
    m, s = k.mean(axis=(0, 1, 2)), k.std(axis=(0, 1, 2))
    ref = jax.lax.conv_general_dilated(
        x, (k - m) / s, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    chex.assert_trees_all_close(y, ref, atol=1e-5)
    chex.assert_shape(y, (1, 4, 4, 4))  # SAME: ceil(7 / 2)
