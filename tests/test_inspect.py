"""jaxcnn.inspect: summary, output sizes, receptive fields (analytic and gradient-measured),
BatchNorm folding, pictures, export and the command line."""

import itertools
import os

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import inspect as ji
from jaxcnn import models
from jaxcnn.inspect import random_variables, small_input_shape
from jaxcnn.inspect.__main__ import main as cli_main
from jaxcnn.layers import ConvTranspose2d
from jaxcnn.utils import abstract_init


@pytest.fixture
def fast_compile():
    """XLA without most optimisations: the folding tests compile whole models twice."""
    old = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", old)


# -- summary ---------------------------------------------------------------------------------


def test_lenet5_summary_reproduces_the_lecture_table():
    s = ji.summary("lenet5")
    rows = {r.name: r for r in s.rows}
    expected = {"c1": 156, "c3": 2_416, "c5": 48_120, "f6": 10_164, "head": 850}
    assert {k: rows[k].params for k in expected} == expected
    assert s.total_params == 61_706 == sum(expected.values())
    assert rows["c1"].output_shape.shape == (1, 28, 28, 6)
    assert rows["c3"].output_shape.shape == (1, 10, 10, 16)
    assert rows["c5"].output_shape.shape == (1, 1, 1, 120)
    # FLOPs are XLA's: the total is the cost analysis of the whole forward pass, and a conv
    # counts at least 2 FLOPs per multiply-add (28*28*6 outputs of 5*5 taps for C1)
    m = models.create_model("lenet5")
    v = abstract_init(m, (1, 32, 32, 1))
    x = jax.ShapeDtypeStruct((1, 32, 32, 1), jnp.float32)
    assert s.total_flops == ji.xla_flops(lambda v, x: m.apply(v, x), v, x)
    assert rows["c1"].flops >= 2 * 28 * 28 * 6 * 25
    assert rows["c3"].flops >= 2 * 10 * 10 * 16 * 25 * 6
    text = str(s)
    assert "Total params: 61,706" in text and "c3" in text and "2,416" in text


def test_summary_of_a_module_needs_a_shape_and_counts_children():
    with pytest.raises(ValueError, match="input_shape"):
        ji.summary(models.create_model("lenet5"))
    s = ji.summary("resnet18", (32, 32, 3), flops=False)
    assert s.total_params == models.model_info("resnet18").params
    stage1 = s["stage1"]
    assert stage1.params == sum(
        r.params for r in s.rows if r.path[:1] == ("stage1",) and r.depth == 2
    )
    assert s["stage4"].output_shape.shape == (1, 1, 1, 512)


# -- output sizes ----------------------------------------------------------------------------


def test_output_size_calculator_agrees_with_actual_shapes():
    for n, k, s, p, d in itertools.product((7, 16, 33), (1, 3, 5), (1, 2, 3), (0, 1, 2), (1, 2)):
        if n + 2 * p < k + (k - 1) * (d - 1):
            with pytest.raises(ValueError, match="too small"):
                ji.conv_output_size(n, k, s, p, d)
            continue
        x = jax.ShapeDtypeStruct((1, n, n, 2), jnp.float32)
        w = jax.ShapeDtypeStruct((k, k, 2, 3), jnp.float32)
        y = jax.eval_shape(
            lambda x, w: jax.lax.conv_general_dilated(
                x,
                w,
                (s, s),
                [(p, p)] * 2,
                rhs_dilation=(d, d),
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            ),
            x,
            w,
        )
        assert y.shape[1:3] == (ji.conv_output_size(n, k, s, p, d),) * 2, (n, k, s, p, d)
        # pooling: same rule (floor mode), dilated windows through lax.reduce_window
        if p <= k // 2:
            y = jax.eval_shape(
                lambda x: jax.lax.reduce_window(
                    x,
                    -jnp.inf,
                    jax.lax.max,
                    (1, k, k, 1),
                    (1, s, s, 1),
                    ((0, 0), (p, p), (p, p), (0, 0)),
                    window_dilation=(1, d, d, 1),
                ),
                x,
            )
            assert y.shape[1:3] == (ji.pool_output_size(n, k, s, p, dilation=d),) * 2
        # transposed convolution (PyTorch's rule), output_padding < stride
        op = s - 1
        if p <= d * (k - 1):
            m = ConvTranspose2d(3, k, s, p, op, d)
            y = jax.eval_shape(
                lambda: m.init_with_output(jax.random.key(0), jnp.zeros((1, n, n, 2)))[0]
            )
            assert y.shape[1:3] == (ji.transposed_output_size(n, k, s, p, op, d),) * 2
    assert ji.same_output_size(224, 2) == 112 and ji.same_output_size(7, 2) == 4
    assert ji.pool_output_size(112, 3, 2, 0, ceil_mode=True) == 56


# -- receptive fields ------------------------------------------------------------------------


class _Stack(nn.Module):
    convs: tuple  # (kernel, stride, dilation)

    @nn.compact
    def __call__(self, x, train=False):
        for i, (k, s, d) in enumerate(self.convs):
            x = nn.relu(
                nn.Conv(
                    4, (k, k), (s, s), padding=d * (k // 2), kernel_dilation=d, name=f"conv{i}"
                )(x)
            )
        return x


class _Branches(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        x = nn.Conv(4, (3, 3), padding=1, name="stem")(x)
        a = nn.Conv(4, (1, 1), name="branch1x1")(x)
        b = nn.Conv(4, (5, 5), padding=2, name="branch5x5")(x)
        y = jnp.concatenate([a, b], -1)  # Inception: the largest path wins
        return y + nn.Conv(8, (1, 1), name="shortcut")(x)  # residual


def test_three_stacked_3x3_convs_have_fields_3_5_7():
    rf = ji.receptive_fields(_Stack(((3, 1, 1),) * 3), (16, 16, 3))
    assert [r.rf for r in rf.rows] == [3, 5, 7]
    assert [int(r.jump[0]) for r in rf.rows] == [1, 1, 1]
    # stride multiplies the jump; dilation enlarges the effective kernel K + (K-1)(D-1)
    rf = ji.receptive_fields(_Stack(((3, 2, 1), (3, 1, 2), (3, 1, 1))), (32, 32, 3))
    assert [r.rf for r in rf.rows] == [3, 3 + 4 * 2, 11 + 2 * 2]
    assert [int(r.jump[0]) for r in rf.rows] == [2, 2, 2]


def test_branches_take_the_largest_path():
    rf = ji.receptive_fields(_Branches(), (16, 16, 3))
    assert rf["branch1x1"].rf == 3 and rf["branch5x5"].rf == 7 and rf["shortcut"].rf == 3
    assert rf.output.size == (7, 7)


def test_resnet50_fields_derived_from_the_model():
    rf = ji.receptive_fields("resnet50", (64, 64, 3))
    got = {k: int(rf.modules[k].size[0]) for k in ("stem", "stage1", "stage2", "stage3", "stage4")}
    # stem 7x7/2 -> maxpool 3/2 -> bottlenecks: the published ResNet-50 field is 427
    assert got == {"stem": 7, "stage1": 35, "stage2": 91, "stage3": 267, "stage4": 427}
    assert [int(rf.modules[k].jump[0]) for k in ("stage1", "stage4")] == [4, 32]
    assert "Model output: RF" in str(rf)


def test_vit_field_is_global_after_attention():
    rf = ji.receptive_fields("vit_ti_16", (32, 32, 3), img_size=(32, 32))
    assert rf["stem"].rf == 16 and rf["stem"].jump == (16, 16)
    assert rf.modules["block0"].size == (None, None) and rf.output.size == (None, None)
    assert "Global from block0" in str(rf)


def test_analytic_field_equals_gradient_support_resnet18():
    """The nonzero support of the gradient of a centre unit (random weights) is exactly the
    analytic field clipped to the image, after the stem and after stage1 (43 > 40: clipped)."""
    rf = ji.receptive_fields("resnet18", (40, 40, 3))
    for layer, size in (("stem", 7), ("stage1", 43)):
        e = ji.effective_receptive_field("resnet18", layer, rf=rf, num_samples=4)
        assert int(e.theoretical.size[0]) == size
        assert e.nonzero_box == e.theoretical_box, (layer, e.nonzero_box, e.theoretical_box)
        assert e.side95 <= max(e.theoretical_extent)
    assert e.theoretical_box == ((0, 39), (0, 39))  # clipped to the image


def test_erf_png(tmp_path):
    rf = ji.receptive_fields(_Stack(((3, 1, 1),) * 3), (15, 15, 1))
    e = ji.effective_receptive_field(None, "conv2", rf=rf, num_samples=2)
    assert e.nonzero_extent == (7, 7) and e.theoretical_extent == (7, 7)
    assert "theoretical RF 7" in str(e)
    path = e.save_png(str(tmp_path / "erf.png"))
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,side",
    [
        ("googlenet", 64),
        ("inception_v3", 299),
        ("densenet121", 64),
        ("mobilenet_v2", 64),
        ("unet", 64),
        ("swin_t", 64),
        ("resnext50_32x4d", 64),
    ],
)
def test_receptive_fields_of_registered_models(name, side):
    info = models.model_info(name)
    shape = (side, side, info.input_size[2])
    rf = ji.receptive_fields(name, shape)
    str(rf), rf.module_table(1)
    if name == "swin_t":  # 4x4 patches, then window attention: global
        assert rf.modules["stem"].size == (4, 4) and rf.output.size == (None, None)
        return
    sizes = [r.size[0] for r in rf.rows if r.size[0] is not None]
    assert len(rf.rows) > 5 and sizes and max(sizes) > side / 2
    assert rf.output.size[0] is not None


# -- BatchNorm folding -----------------------------------------------------------------------


def _check_fold(name):
    shape = small_input_shape(name)
    r = ji.fold_report(name, shape, timing=False)
    assert r.pairs > 0
    assert r.params_after < r.params_before and r.stats_after < r.stats_before
    assert r.max_abs_diff <= 1e-5 * max(1.0, r.max_abs_output), r
    return r


@pytest.mark.parametrize("name", ["resnet18", "dcgan_generator_32"])
def test_fold_batchnorm_is_exact(name, fast_compile):
    _check_fold(name)


# one (small) member of every family that uses BatchNorm
@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        "mobilenet_v1_025",
        "resnext50_32x4d",
        "densenet121",
        "googlenet",
        "inception_v3",
        "vgg11_bn",
        "mobilenet_v2",
        "mobilenet_v3_small",
        "efficientnet_b0",
        "xception",
        "unet_bn",
        "dcgan_discriminator_32",
        "resnet18_cifar",
        "wide_resnet50_2",
    ],
)
def test_fold_batchnorm_every_family(name, fast_compile):
    _check_fold(name)


def test_folded_model_details(fast_compile):
    m = models.create_model("dcgan_discriminator_32")
    shape = small_input_shape("dcgan_discriminator_32", batch=2)
    v = random_variables(abstract_init(m, shape), seed=1)
    folded, fv = ji.fold_batchnorm(m, v, shape)
    assert "batch_stats" not in fv and len(folded.bn_paths) == 2
    x = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)
    chex.assert_trees_all_close(folded.apply(fv, x), m.apply(v, x), atol=1e-5)
    with pytest.raises(ValueError, match="inference only"):
        folded.apply(fv, x, train=True)
    t = ji.time_forward(folded, fv, x, repeats=2)
    assert t > 0


# -- pictures --------------------------------------------------------------------------------


def _is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_sample_images_and_user_file(tmp_path):
    for name in ("camera", "astronaut", "coffee"):
        img = ji.sample_image(name, (32, 48))
        assert img.shape == (32, 48, 3) and img.dtype == np.float32
    assert ji.sample_image("camera", (16, 16), channels=1).shape == (16, 16, 1)
    from PIL import Image

    path = tmp_path / "mine.png"
    Image.fromarray(np.full((10, 12, 3), 200, np.uint8)).save(path)
    img = ji.sample_image(str(path), (8, 8), normalize=False)
    np.testing.assert_allclose(img, 200 / 255, atol=1e-5)
    with pytest.raises(ValueError, match="not a bundled sample"):
        ji.sample_image("nope")


def test_feature_maps_and_filters(tmp_path):
    m = models.create_model("lenet5")
    v = random_variables(abstract_init(m, (1, 32, 32, 1)), stats=False)
    img = ji.sample_image("camera", (32, 32), channels=1)
    layers = ji.default_layers(m, (1, 32, 32, 1))
    assert layers[0] == "c1"
    outs = ji.capture_outputs(m, v, jnp.asarray(img)[None], ["c1", "c3"])
    assert outs["c1"].shape == (1, 28, 28, 6) and outs["c3"].shape == (1, 10, 10, 16)
    assert _is_png(ji.plot_feature_maps(m, v, img, ["c1", "c3"], str(tmp_path / "f.png")))
    assert _is_png(ji.plot_filters(m, v, str(tmp_path / "w.png"), input_shape=(1, 32, 32, 1)))
    with pytest.raises(ValueError, match="no module output"):
        ji.capture_outputs(m, v, jnp.asarray(img)[None], ["c9"])


def test_vit_attention_map(tmp_path):
    m = models.create_model("vit_ti_16", img_size=(32, 32), depth=3)
    v = random_variables(abstract_init(m, (1, 32, 32, 3)), stats=False)
    img = ji.sample_image("astronaut", (32, 32))
    amap, what = ji.attention_map(m, v, img)
    assert amap.shape == (2, 2) and amap.max() == pytest.approx(1.0)
    assert "rollout over 3 layers" in what
    assert _is_png(ji.plot_attention(m, v, img, str(tmp_path / "a.png")))
    cnn = models.create_model("lenet5")
    with pytest.raises(ValueError, match="no attention"):
        ji.attention_map(
            cnn,
            random_variables(abstract_init(cnn, (1, 32, 32, 1))),
            np.zeros((32, 32, 1), np.float32),
        )


@pytest.mark.slow
def test_swin_attention_map(tmp_path):
    m = models.create_model("swin_t")
    v = random_variables(abstract_init(m, (1, 56, 56, 3)), stats=False)
    amap, what = ji.attention_map(m, v, ji.sample_image("coffee", (56, 56)))
    assert amap.shape == (14, 14) and "windows" in what


# -- export ----------------------------------------------------------------------------------


def test_export_roundtrip_equals_live_model(tmp_path):
    m = models.create_model("lenet5")
    v = random_variables(abstract_init(m, (1, 32, 32, 1)))
    exp = ji.export_model(m, v, (32, 32, 1))
    path = ji.save_exported(exp, str(tmp_path / "lenet5.stablehlo"))
    loaded = ji.load_exported(path)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 32, 32, 1)), jnp.float32)
    chex.assert_trees_all_close(loaded.call(x), m.apply(v, x), atol=1e-5)  # symbolic batch
    exp2 = ji.export_model(m, v, (2, 32, 32, 1), pass_variables=True, batch_polymorphic=False)
    loaded2 = ji.load_exported(exp2.serialize())
    chex.assert_trees_all_close(loaded2.call(v, x[:2]), m.apply(v, x[:2]), atol=1e-5)


# -- command line ----------------------------------------------------------------------------


def test_cli_unknown_model_suggests_close_matches(capsys):
    assert cli_main(["resnet5"]) == 2
    err = capsys.readouterr().err
    assert "Unknown model 'resnet5'" in err and "resnet50" in err and "Traceback" not in err


def test_cli_lenet5_everything(tmp_path, capsys):
    out_dir = tmp_path / "pics"
    rc = cli_main(
        [
            "lenet5",
            "--no-flops",
            "--pictures",
            str(out_dir),
            "--fold-bn",
            "--export",
            str(tmp_path / "l.stablehlo"),
            "--erf-samples",
            "2",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "Total params: 61,706" in out and "Model output: RF 32" in out
    assert "folded 0 conv->BatchNorm pairs" in out
    for f in ("feature_maps.png", "filters.png", "erf.png"):
        assert _is_png(out_dir / f)
    assert os.path.getsize(tmp_path / "l.stablehlo") > 1000


@pytest.mark.slow
def test_cli_resnet50(capsys):
    assert cli_main(["resnet50"]) == 0
    out = capsys.readouterr().out
    assert "Total params: 25,557,032" in out and "stage4" in out and " 427 " in out
