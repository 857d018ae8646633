"""jaxcnn.interop without torch: the reference libraries' own key lists and shapes
(tests/data/reference_keys.json.gz, written by ``python -m experiments.verify_interop --keys``
from torchvision 0.29.1, timm 1.0.31 and Keras 3.15) stand in for their state dicts.

Every registered layout must name exactly its reference's tensors; any key order must give the
same variables; misfits are named (torch key and jaxcnn path first); ``strict=False`` frees the
whole classifier and nothing else. Numerical agreement with the real libraries is checked by
``experiments/verify_interop.py`` (docs/interop.md has the figures)."""

import dataclasses
import random

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from interop_data import CASES, REFERENCE, _param, identical, random_state_dict, reference_shapes

from jaxcnn import models
from jaxcnn.interop import (
    ConversionError,
    core,
    from_torch_state_dict,
    load_file,
    save_file,
    to_torch_state_dict,
)
from jaxcnn.interop.pretrained import names as reference_names
from jaxcnn.layers.conv import ConvTranspose2d


@pytest.fixture(scope="module", autouse=True)
def _trace_each_model_once():
    """Each conversion traces its model (``core.jax_leaves``: an abstract init, ~1.5 s for the
    big ones) to learn the variables and their call order; the trace depends on the model and
    the input shape alone, not on the tensors. The tests here convert the same models many
    times (every key order, both directions), so the trace is kept per (model, shape): the
    first conversion of a model traces it as usual, the others get copies of its leaves."""
    real = core.jax_leaves
    seen: dict = {}

    def once(model, input_shape):
        key = (model, tuple(input_shape))
        try:
            hash(key)
        except TypeError:  # a module with an unhashable field: trace it every time
            return real(model, input_shape)
        if key not in seen:
            seen[key] = real(model, input_shape)
        return [dataclasses.replace(j) for j in seen[key]]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(core, "jax_leaves", once)
        yield


def test_every_reference_is_in_the_fixture():
    for src in REFERENCE:
        assert sorted(REFERENCE[src]) == reference_names(src), src


@pytest.mark.parametrize("src,name", [_param(s, n) for s, n in CASES])
def test_layout_names_exactly_the_reference_tensors(src, name):
    """The layout found from the keys is ``src``'s and fits every tensor, nothing left."""
    shapes = reference_shapes(src, name)
    plan = core.prepare(name, shapes.keys(), None, "auto", {})
    layout_keys = set(plan.keys)
    if src == "timm" and name in reference_names("torchvision"):
        same = set(reference_shapes("torchvision", name)) == set(shapes)
        assert plan.layout.source == ("torchvision" if same else "timm")
    else:
        assert plan.layout.source == src
    assert core._check(plan, shapes, strict=True, adapt_input=False) == set()
    ignored = {k for k in shapes if k.rpartition(".")[2] in plan.layout.ignore}
    assert layout_keys == set(shapes) - ignored


# One model per family and library (the smallest): every convertible family in the default
# suite; the other models of each family in the slow tests below.
FAMILIES = [
    ("torchvision", "resnet18"),
    ("torchvision", "alexnet"),
    ("torchvision", "vgg11_bn"),
    ("torchvision", "googlenet"),
    ("torchvision", "inception_v3"),
    ("torchvision", "densenet121"),
    ("torchvision", "mobilenet_v2"),
    ("torchvision", "mobilenet_v3_small"),
    ("torchvision", "efficientnet_b0"),
    ("torchvision", "convnext_tiny"),
    ("torchvision", "vit_b_32"),
    ("torchvision", "swin_t"),
    ("timm", "resnet18"),
    ("timm", "densenet121"),
    ("timm", "inception_v3"),
    ("timm", "efficientnet_b0"),
    ("timm", "mobilenet_v3_small"),
    ("timm", "convnext_tiny"),
    ("timm", "vit_ti_16"),
    ("timm", "swin_t"),
    ("timm", "xception"),
    ("timm", "inception_v4"),
    ("timm", "inception_resnet_v2"),
    ("timm", "coatnet_0"),
    ("timm", "vit_hybrid_r50_b16"),
    ("keras", "mobilenet_v1_025"),
    ("keras", "xception"),
]
# ~15 s each (133M parameters): AlexNet covers the same flatten permutation in the default suite
_SLOW_FAMILY = {("torchvision", "vgg11_bn")}
FAMILY_PARAMS = [
    pytest.param(s, n, id=f"{s}-{n}", marks=[pytest.mark.slow] if (s, n) in _SLOW_FAMILY else [])
    for s, n in FAMILIES
]


def test_every_family_has_a_fast_case():
    """Each (library, family) with a reference is in FAMILIES."""
    have = {(s, models.model_info(n).family) for s, n in FAMILIES}
    for src, name in CASES:
        assert (src, models.model_info(name).family) in have, (src, name)


@pytest.mark.parametrize("src,name", FAMILY_PARAMS)
def test_any_key_order_gives_identical_variables(src, name):
    """State-dict order, sorted by name (safetensors' order), reversed and shuffled (2 seeds)."""
    sd = random_state_dict(src, name)
    ref = from_torch_state_dict(name, sd)
    keys = list(sd)
    orders = [sorted(keys), keys[::-1]]
    for seed in range(2):
        shuffled = list(keys)
        random.Random(seed).shuffle(shuffled)
        orders.append(shuffled)
    for order in orders:
        identical(from_torch_state_dict(name, {k: sd[k] for k in order}), ref)


@pytest.mark.slow
@pytest.mark.parametrize("src,name", [(s, n) for s, n in CASES if (s, n) not in FAMILIES])
def test_any_key_order_gives_identical_variables_all(src, name):
    test_any_key_order_gives_identical_variables(src, name)


@pytest.mark.parametrize("src,name", FAMILY_PARAMS)
def test_safetensors_round_trip(src, name, tmp_path):
    """reference -> jaxcnn -> the library's layout (without a reference) -> .safetensors ->
    jaxcnn: exact; the keys and shapes written are the library's own (Keras: its names, HWIO
    arrays)."""
    sd = random_state_dict(src, name)
    variables = from_torch_state_dict(name, sd)
    kwargs = core.layout_named(models.create_model(name), src).kwargs_for(sd)  # aux_logits...
    back = to_torch_state_dict(name, variables, source=src, **kwargs)
    assert {k: v.shape for k, v in back.items()} == reference_shapes(src, name)
    for k, v in sd.items():
        if not k.endswith(("num_batches_tracked", "relative_position_index")):
            np.testing.assert_array_equal(back[k], v, err_msg=k)
    path = save_file(back, tmp_path / f"{name}.safetensors")
    identical(from_torch_state_dict(name, load_file(path)), variables)
    again = to_torch_state_dict(name, variables, sd)
    assert list(again) == list(sd)
    for k in sd:
        np.testing.assert_array_equal(again[k], sd[k], err_msg=k)


def test_swin_relative_position_index_is_torchvision_s():
    """torchvision's formula (2w-1)^2 table rows, flattened index (w = 7)."""
    from jaxcnn.interop.layouts import relative_position_index

    idx = relative_position_index(7)
    assert idx.shape == (2401,) and idx.dtype == np.int64
    assert idx[0] == 84 and idx[48] == 0 and idx[-1] == 84 and idx.max() == 168


# -- errors -------------------------------------------------------------------------------
ERROR_CASES = [
    ("torchvision", "resnet18", "layer3.1.conv2.weight", "params/stage3/block1/conv2/kernel"),
    ("torchvision", "swin_t", "features.5.3.mlp.0.weight", "params/stage3/block3/mlp/fc1/kernel"),
    (
        "torchvision",
        "efficientnet_b0",
        "features.4.1.block.2.fc1.bias",
        "params/stage4/block1/se/fc1/bias",
    ),
    (
        "torchvision",
        "densenet121",
        "features.denseblock3.denselayer10.norm2.running_var",
        "batch_stats/stage3/block9/bn2/var",
    ),
    (
        "torchvision",
        "vit_b_16",
        "encoder.layers.encoder_layer_7.ln_2.weight",
        "params/block7/norm2/scale",
    ),
    (
        "torchvision",
        "googlenet",
        "inception4c.branch3.1.bn.bias",
        "params/inception4c/branch3_2/bn/bias",
    ),
    ("torchvision", "vgg16_bn", "features.25.running_mean", "batch_stats/stage4/bn1/mean"),
    (
        "timm",
        "swin_t",
        "layers.2.blocks.3.attn.proj.weight",
        "params/stage3/block3/attn/proj/kernel",
    ),
    (
        "timm",
        "mobilenet_v3_large",
        "blocks.3.2.bn2.weight",
        "params/stage4/block2/depthwise/bn/scale",
    ),
    (
        "timm",
        "xception",
        "block5.rep.4.pointwise.weight",
        "params/stage3/block2/sepconv2/pointwise/kernel",
    ),
    (
        "keras",
        "xception",
        "separable_conv2d_7/pointwise_kernel",  # Keras block5 = jaxcnn stage3/block1
        "params/stage3/block1/sepconv2/pointwise/kernel",
    ),
    (
        "keras",
        "mobilenet_v1",
        "batch_normalization_9/moving_mean",
        "batch_stats/stage3/block1/bn_dw/mean",
    ),
    ("torchvision", "alexnet", "features.8.weight", "params/conv4/kernel"),
    (
        "torchvision",
        "inception_v3",
        "Mixed_6c.branch7x7dbl_3.bn.running_mean",
        "batch_stats/mixed_6c/branch7x7dbl_3/bn/mean",
    ),
    (
        "torchvision",
        "mobilenet_v2",
        "features.5.conv.1.1.weight",
        "params/stage3/block1/depthwise/bn/scale",
    ),
    (
        "torchvision",
        "convnext_tiny",
        "features.5.4.block.3.weight",
        "params/stage3/block4/fc1/kernel",
    ),
    (
        "torchvision",
        "mobilenet_v3_small",
        "features.6.block.2.fc2.weight",
        "params/stage3/block2/se/fc2/kernel",
    ),
    ("timm", "resnet50", "layer4.2.bn3.running_var", "batch_stats/stage4/block2/bn3/var"),
    ("timm", "convnext_tiny", "stages.2.blocks.4.gamma", "params/stage3/block4/layer_scale"),
    ("timm", "vit_ti_16", "blocks.3.attn.qkv.weight", "params/block3/attn/qkv/kernel"),
    (
        "timm",
        "efficientnet_b0",
        "blocks.5.2.conv_pwl.weight",
        "params/stage6/block2/project/conv/kernel",
    ),
    (
        "timm",
        "inception_v4",
        "features.11.branch2.3.conv.weight",
        "params/stage3/block0/branch2_3/conv/kernel",
    ),
    ("timm", "inception_resnet_v2", "repeat_1.7.conv2d.bias", "params/stage3/block7/conv2d/bias"),
    (
        "timm",
        "inception_resnet_v2",
        "block8.branch1.2.bn.running_var",  # the last Block8 (no ReLU)
        "batch_stats/stage4/block9/branch1_2/bn/var",
    ),
    (
        "timm",
        "coatnet_0",
        "stages.2.blocks.0.norm1.norm.weight",
        "params/stage3/block0/norm1/scale",
    ),
    (
        "timm",
        "vit_hybrid_r50_b16",
        "patch_embed.backbone.stages.2.blocks.5.norm2.bias",
        "params/stage3/block5/norm2/bias",
    ),
]


@pytest.mark.parametrize(
    "src,name,key,path", ERROR_CASES, ids=[c[1] + "-" + c[0] for c in ERROR_CASES]
)
def test_one_missing_tensor_is_named_first(src, name, key, path):
    shapes = reference_shapes(src, name)
    del shapes[key]
    with pytest.raises(ConversionError) as e:
        from_torch_state_dict(name, shapes, source=src)
    lines = str(e.value).splitlines()
    assert lines[0].startswith(f"{name}: missing: {key!r} for {path} ("), lines[0]
    assert len(lines) == 2 and lines[1].startswith(f"({src} layout: 1 missing;")
    assert "downsample" not in str(e.value) and "unexpected" not in str(e.value)


@pytest.mark.parametrize(
    "src,name,key,path", ERROR_CASES, ids=[c[1] + "-" + c[0] for c in ERROR_CASES]
)
def test_one_misshaped_tensor_is_named_first(src, name, key, path):
    shapes = reference_shapes(src, name)
    shapes[key] = tuple(d + 1 for d in shapes[key])
    with pytest.raises(ConversionError) as e:
        from_torch_state_dict(name, shapes, source=src)
    lines = str(e.value).splitlines()
    assert lines[0].startswith(f"{name}: wrong shape: {key!r} "), lines[0]
    assert f"for {path} (" in lines[0] and len(lines) == 2


UNEXPECTED = [
    ("torchvision", "swin_t", "features.3.1.attn.extra.weight"),
    ("timm", "swin_t", "layers.1.blocks.1.attn.extra.weight"),
    ("timm", "coatnet_0", "stages.2.blocks.1.attn.rel_pos.extra"),
    ("keras", "xception", "dense_1/kernel"),
]


@pytest.mark.parametrize("src,name,key", UNEXPECTED, ids=[f"{s}-{n}" for s, n, _ in UNEXPECTED])
def test_one_unexpected_tensor_is_named_first(src, name, key):
    shapes = reference_shapes(src, name)
    n_vars = len(core.prepare(name, shapes.keys(), None, src, {}).leaves)
    shapes[key] = (4, 4)
    with pytest.raises(ConversionError) as e:
        from_torch_state_dict(name, shapes, source=src)
    assert str(e.value).splitlines() == [
        f"{name}: unexpected: {key!r} (4, 4)",
        f"({src} layout: 1 unexpected; {len(shapes)} tensors given, {n_vars} variables)",
    ]
    if (src, name) == ("torchvision", "swin_t"):
        assert n_vars == 173 and len(shapes) == 186


def test_renamed_tensor_suggests_the_given_name():
    shapes = reference_shapes("torchvision", "resnet18")
    shapes["layer2.0.conv1.weight_orig"] = shapes.pop("layer2.0.conv1.weight")
    with pytest.raises(ConversionError) as e:
        from_torch_state_dict("resnet18", shapes)
    msg = str(e.value)
    assert msg.startswith(
        "resnet18: missing: 'layer2.0.conv1.weight' for params/stage2/block0/conv1/kernel "
        "(3, 3, 64, 128) (given: 'layer2.0.conv1.weight_orig'?)"
    )
    assert "  unexpected: 'layer2.0.conv1.weight_orig' (128, 64, 3, 3)" in msg


def test_many_misfits_are_counted_not_listed():
    shapes = {
        k: s
        for k, s in reference_shapes("torchvision", "resnet50").items()
        if not k.startswith("layer3.")
    }
    with pytest.raises(ConversionError) as e:
        from_torch_state_dict("resnet50", shapes)
    lines = str(e.value).splitlines()
    assert len(lines) == 7 and lines[5] == "  ... and 90 more missing"
    assert lines[6].startswith("(torchvision layout: 95 missing;")  # 6 blocks x 15 + shortcut 5


def test_unknown_names_say_so():
    with pytest.raises(ConversionError, match=r"resnet18: missing: 'conv1.weight'"):
        from_torch_state_dict("resnet18", {"foo.weight": (3, 3)})
    with pytest.raises(TypeError, match="mapping"):
        from_torch_state_dict("resnet18", [np.zeros(3)])
    with pytest.raises(ValueError, match="input_shape"):
        from_torch_state_dict(models.create_model("lenet5"), {})
    with pytest.raises(ValueError, match="no 'keras' layout for ResNet"):
        from_torch_state_dict("resnet18", {}, source="keras")


# -- the classifier: strict=False --------------------------------------------------------------
def test_other_class_count_needs_strict_false_and_then_only_the_head_is_new():
    sd = random_state_dict("torchvision", "resnet18")
    with pytest.raises(ConversionError) as e:
        from_torch_state_dict("resnet18", sd, num_classes=10)
    msg = str(e.value)
    assert msg.splitlines()[0] == (
        "resnet18: wrong shape: 'fc.weight' (1000, 512) (as (512, 1000)) for "
        "params/head/kernel (512, 10)"
    )
    assert "The classifier head has 10 classes, the tensors 1000" in msg
    assert "num_classes=1000" in msg and "strict=False" in msg
    got = from_torch_state_dict("resnet18", sd, num_classes=10, strict=False)
    full = from_torch_state_dict("resnet18", sd)
    assert got["params"]["head"]["kernel"].shape == (512, 10)
    assert float(jnp.abs(got["params"]["head"]["kernel"]).sum()) > 0
    body = lambda v: {k: t for k, t in v["params"].items() if k != "head"}  # noqa: E731
    identical(body(got), body(full))
    identical(got["batch_stats"], full["batch_stats"])


def test_strict_false_does_not_excuse_part_of_the_head():
    """The issue's case: right class count, head bias missing -> an error, not a fresh bias."""
    shapes = reference_shapes("torchvision", "efficientnet_b3")
    del shapes["classifier.1.bias"]
    for strict in (True, False):
        with pytest.raises(ConversionError) as e:
            from_torch_state_dict("efficientnet_b3", shapes, strict=strict)
        msg = str(e.value)
        assert msg.startswith("efficientnet_b3: missing: 'classifier.1.bias' for params/head/bias")
        assert "Only part of the classifier head is there" in msg


def test_strict_false_does_not_excuse_the_body():
    shapes = reference_shapes("torchvision", "resnet18")
    del shapes["layer1.0.bn1.running_mean"]
    with pytest.raises(ConversionError) as e:
        from_torch_state_dict("resnet18", shapes, strict=False, num_classes=10)
    msg = str(e.value)
    assert msg.startswith("resnet18: missing: 'layer1.0.bn1.running_mean' for ")
    assert "strict=False lets only the whole classifier differ or be absent" in msg


def test_absent_classifier_is_a_new_head_only_with_strict_false():
    sd = {
        k: v for k, v in random_state_dict("timm", "vit_ti_16").items() if not k.startswith("head.")
    }
    with pytest.raises(ConversionError, match="The tensors have no classifier"):
        from_torch_state_dict("vit_ti_16", sd)
    got = from_torch_state_dict("vit_ti_16", sd, strict=False)
    assert got["params"]["head"]["kernel"].shape == (192, 1000)


def test_features_only_leaves_the_classifier_side_unused():
    sd = random_state_dict("torchvision", "mobilenet_v3_small")
    full = from_torch_state_dict("mobilenet_v3_small", sd)
    feats = from_torch_state_dict("mobilenet_v3_small", sd, features_only=True)
    assert "head" not in feats["params"] and "pre_logits" not in feats["params"]
    identical(feats["params"]["stage3"], full["params"]["stage3"])
    bad = dict(sd, **{"classifier.9.weight": np.zeros((2, 2), np.float32)})
    with pytest.raises(ConversionError, match="unexpected: 'classifier.9.weight'"):
        from_torch_state_dict("mobilenet_v3_small", bad, features_only=True)


def test_model_options_the_weights_need():
    """timm's MobileNet v3 needs bn_eps=1e-5: set when built by name, an error for a module."""
    shapes = reference_shapes("timm", "mobilenet_v3_small")
    plan = core.prepare("mobilenet_v3_small", shapes.keys(), None, "auto", {})
    assert plan.layout.source == "timm" and plan.model.bn_eps == 1e-5
    with pytest.raises(ValueError, match=r"timm's weights need the model built with bn_eps=1e-05"):
        from_torch_state_dict(
            models.create_model("mobilenet_v3_small"), shapes, input_shape=(224, 224, 3)
        )
    plan = core.prepare(
        "inception_v3", reference_shapes("timm", "inception_v3").keys(), None, "auto", {}
    )
    assert plan.model.aux_logits is False


# -- the jaxcnn layout, layouts of arrays -------------------------------------------------------
class Tiny(nn.Module):
    """conv -> conv -> flatten -> fc -> head (torch flattens NCHW: fc's rows are permuted)."""

    @nn.compact
    def __call__(self, x, train=False):
        x = nn.Conv(8, (3, 3), padding=1, name="a")(x)
        x = nn.Conv(4, (3, 3), strides=2, padding=1, name="c")(x)
        x = nn.Dropout(0.5)(x.reshape((x.shape[0], -1)), deterministic=True)
        return nn.Dense(3, name="head")(nn.relu(nn.Dense(5, name="fc")(x)))


def test_jaxcnn_layout_and_flattened_dense():
    """A module without a registered layout: keys are its paths with dots and torch leaf names;
    the dense layer after the flatten sees torch's (C, H, W) order."""
    model, shape = Tiny(), (1, 8, 8, 3)
    rng = np.random.default_rng(0)
    sd = {
        "a.weight": rng.normal(size=(8, 3, 3, 3)).astype(np.float32),
        "a.bias": rng.normal(size=8).astype(np.float32),
        "c.weight": rng.normal(size=(4, 8, 3, 3)).astype(np.float32),
        "c.bias": rng.normal(size=4).astype(np.float32),
        "fc.weight": rng.normal(size=(5, 64)).astype(np.float32),
        "fc.bias": rng.normal(size=5).astype(np.float32),
        "head.weight": rng.normal(size=(3, 5)).astype(np.float32),
        "head.bias": rng.normal(size=3).astype(np.float32),
    }
    got = from_torch_state_dict(model, sd, input_shape=shape)
    fmap = rng.normal(size=(1, 4, 4, 4)).astype(np.float32)  # NHWC after c
    np.testing.assert_allclose(
        fmap.reshape(1, -1) @ np.asarray(got["params"]["fc"]["kernel"]),
        fmap.transpose(0, 3, 1, 2).reshape(1, -1) @ sd["fc.weight"].T,
        rtol=1e-5,
        atol=1e-5,
    )
    back = to_torch_state_dict(model, got, input_shape=shape)
    assert list(back) == list(sd)
    for k in sd:
        np.testing.assert_array_equal(back[k], sd[k])


class Up(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        return ConvTranspose2d(3, 3, stride=2, padding=1, name="up")(x)


def test_transposed_conv_matches_torch_formula():
    """ConvTranspose2d: torch weight (in, out, kh, kw) -> flipped HWIO; checked against
    torch's definition out[o, y*s + ky - p, x*s + kx - p] += in[i, y, x] * w[i, o, ky, kx]."""
    model = Up()
    rng = np.random.default_rng(1)
    w, b = rng.normal(size=(2, 3, 3, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)
    sd = {"up.conv.weight": w, "up.conv.bias": b}  # the jaxcnn layout: ConvTranspose2d's conv
    variables = from_torch_state_dict(model, sd, input_shape=(4, 4, 2))
    x = rng.normal(size=(2, 4, 4)).astype(np.float32)  # CHW
    full = np.zeros((3, 9, 9), np.float32)
    for ky in range(3):
        for kx in range(3):
            full[:, ky : ky + 8 : 2, kx : kx + 8 : 2] += np.einsum(
                "iyx,io->oyx", x, w[:, :, ky, kx]
            )
    ref = full[:, 1:8, 1:8] + b[:, None, None]
    y = model.apply(variables, jnp.asarray(x.transpose(1, 2, 0)[None]))
    np.testing.assert_allclose(np.asarray(y[0]).transpose(2, 0, 1), ref, rtol=1e-5, atol=1e-5)
    back = to_torch_state_dict(model, variables, input_shape=(4, 4, 2))
    np.testing.assert_array_equal(back["up.conv.weight"], w)


def test_torch_tensors_and_objects_with_numpy():
    class FakeTensor:
        """Has ``.numpy()`` and ``.shape`` but no ``__array__`` (another library's tensor)."""

        def __init__(self, a):
            self._a, self.shape = a, a.shape

        def numpy(self):
            return self._a

    sd = random_state_dict("torchvision", "resnet18")
    got = from_torch_state_dict("resnet18", {k: FakeTensor(v) for k, v in sd.items()})
    identical(got, from_torch_state_dict("resnet18", sd))


def test_adapt_input_conv_follows_timm():
    from jaxcnn.interop.core import adapt_input_conv

    k = np.random.default_rng(0).normal(size=(3, 3, 3, 8)).astype(np.float32)
    np.testing.assert_allclose(adapt_input_conv(k, 1), k.sum(axis=2, keepdims=True), rtol=1e-6)
    five = adapt_input_conv(k, 5)
    np.testing.assert_allclose(five, np.concatenate([k, k[:, :, :2]], axis=2) * 3 / 5, rtol=1e-6)
    six = np.concatenate([k, 2 * k], axis=2)  # a space-to-depth stem: each RGB triple summed
    s = k.sum(axis=2, keepdims=True)
    np.testing.assert_allclose(adapt_input_conv(six, 1), np.concatenate([s, 2 * s], 2), rtol=1e-5)
    with pytest.raises(ValueError, match="cannot adapt a 4-channel"):
        adapt_input_conv(np.zeros((3, 3, 4, 8), np.float32), 2)


def test_chex_variants_of_loading_are_jittable():
    sd = random_state_dict("torchvision", "resnet18")
    variables = from_torch_state_dict("resnet18", sd)
    model = models.create_model("resnet18")
    x = jnp.ones((1, 32, 32, 3))
    y = jax.jit(lambda v, x: model.apply(v, x))(variables, x)
    chex.assert_shape(y, (1, 1000))
    chex.assert_tree_all_finite(y)
