"""AlexNet, VGG, GoogLeNet, Inception v3: what the registry sweep does not cover.

Auxiliary classifiers (parameter counts with/without, sown in training, absent in eval), stage
shapes against torchvision 0.29 at the default and at odd input sizes (ceil-mode pools), the true
minimum input sizes, VGG's configurations and adaptive pooling. Whole models are only traced
(``jax.eval_shape``); numerics run on the small auxiliary heads alone.
"""

import math

import chex
import jax
import jax.numpy as jnp
import pytest
from flax.traverse_util import flatten_dict

from jaxcnn import models
from jaxcnn.models import googlenet as googlenet_mod
from jaxcnn.models import inception as inception_mod

RNGS = {"params": jax.random.key(0), "dropout": jax.random.key(1)}


def _n(tree):
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def _trace(model, shape, train_apply=False):
    """Abstract init (train=False) and eval apply; with ``train_apply`` also a training apply
    collecting ``batch_stats`` and ``aux_logits``."""
    x = jnp.zeros(shape)

    def run():
        v = model.init(RNGS, x)
        out = {"variables": v, "eval": model.apply(v, x, mutable=["batch_stats", "aux_logits"])}
        if train_apply:
            out["train"] = model.apply(
                v,
                x,
                train=True,
                mutable=["batch_stats", "aux_logits"],
                rngs={"dropout": jax.random.key(2)},
            )
        return out

    return jax.eval_shape(run)


# ------------------------------------------------------------------------- auxiliary heads


@pytest.mark.parametrize(
    "name,heads,weight", [("googlenet", ("aux1", "aux2"), 0.3), ("inception_v3", ("aux",), 0.4)]
)
def test_aux_heads_built_at_init_sown_in_train_absent_in_eval(name, heads, weight):
    info = models.model_info(name)
    assert info.aux_weight == weight
    nc = 5
    model = models.create_model(name, num_classes=nc, aux_logits=True)
    side = info.input_size[0] if name == "inception_v3" else 64
    out = _trace(model, (2, side, side, 3), train_apply=True)
    params = out["variables"]["params"]
    # built by an init with train=False, nothing sown at init
    assert "aux_logits" not in out["variables"]
    for h in heads:
        assert params[h]["head"]["kernel"].shape[-1] == nc
    # (eval_shape returns dicts with sorted keys, so only membership is checked here)
    assert "head" in params and any(k.startswith("conv") for k in params)
    # training: main logits returned, one (batch, classes) leaf per head, sown from its scope
    logits, mut = out["train"]
    chex.assert_shape(logits, (2, nc))
    sown = mut["aux_logits"]
    assert sorted(sown) == sorted(heads)
    for h in heads:
        assert list(sown[h]) == ["logits"]
        (aux,) = sown[h]["logits"]
        chex.assert_shape(aux, (2, nc))
    assert len(jax.tree.leaves(sown)) == len(heads)  # what the train step sums over
    # eval: the heads do not run
    logits_e, mut_e = out["eval"]
    chex.assert_shape(logits_e, (2, nc))
    assert not mut_e.get("aux_logits")


def test_aux_parameter_counts():
    g = models.model_info("googlenet")
    assert g.params == 6_624_904 and g.extra["params_with_aux"] == 13_004_888
    assert models.count_params("googlenet", aux_logits=True) == 13_004_888
    v = models.abstract_variables(
        models.create_model("googlenet", aux_logits=True), (1, 224, 224, 3)
    )
    # each head: 1x1 conv 512|528->128 + BN, fc 2048->1024, head 1024->1000
    assert _n(v["params"]["aux1"]) == 512 * 128 + 256 + 2048 * 1024 + 1024 + 1024 * 1000 + 1000
    assert _n(v["params"]["aux2"]) == 528 * 128 + 256 + 2048 * 1024 + 1024 + 1024 * 1000 + 1000
    assert (
        "aux1"
        not in models.abstract_variables(models.create_model("googlenet"), (1, 224, 224, 3))[
            "params"
        ]
    )

    i = models.model_info("inception_v3")
    assert i.params == 27_161_264 and i.extra["params_without_aux"] == 23_834_568
    assert models.count_params("inception_v3", aux_logits=False) == 23_834_568
    # with 10 classes both heads shrink: (2048 + 1) and (768 + 1) per class
    assert models.count_params("inception_v3", num_classes=10) == 27_161_264 - 990 * (2049 + 769)


@pytest.mark.parametrize(
    "aux_cls,shape",
    [(googlenet_mod.InceptionAux, (2, 4, 4, 16)), (inception_mod.InceptionAux, (2, 17, 17, 16))],
)
def test_aux_head_sows_its_output_in_training_only(aux_cls, shape):
    head = aux_cls(num_classes=3)
    x = jax.random.normal(jax.random.key(0), shape)
    v = head.init(RNGS, x)
    assert set(v) == {"params", "batch_stats"}
    y, mut = head.apply(
        v, x, train=True, mutable=["batch_stats", "aux_logits"], rngs={"dropout": jax.random.key(1)}
    )
    chex.assert_trees_all_equal(mut["aux_logits"]["logits"], (y,))
    chex.assert_tree_all_finite(y)
    assert not jnp.allclose(
        mut["batch_stats"]["conv" if "conv" in v["params"] else "conv0"]["bn"]["mean"], 0
    )
    y_eval, mut_eval = head.apply(v, x, mutable=["aux_logits"])
    assert not mut_eval
    chex.assert_shape(y_eval, (2, 3))
    if aux_cls is googlenet_mod.InceptionAux:  # dropout 0.7 before the head, `dropout` stream
        y2, _ = head.apply(
            v,
            x,
            train=True,
            mutable=["batch_stats", "aux_logits"],
            rngs={"dropout": jax.random.key(2)},
        )
        assert not jnp.allclose(y, y2)


# ------------------------------------------------------------------ shapes vs torchvision

# stage sides from torchvision 0.29 (forward hooks on the modules named in feature_info)
TORCHVISION_SIDES = {
    ("googlenet", 224): [112, 56, 28, 14, 7],  # ceil mode: a floor pool would give 55, 27, 13
    ("googlenet", 15): [8, 4, 2, 1, 1],
    ("googlenet", 33): [17, 8, 4, 2, 1],
    ("inception_v3", 299): [147, 71, 35, 17, 8],
    ("inception_v3", 75): [35, 15, 7, 3, 1],
    ("inception_v3", 150): [72, 33, 16, 7, 3],
    ("alexnet", 63): [15, 7, 3],
    ("alexnet", 100): [24, 11, 5],
    ("vgg11_bn", 33): [33, 16, 8, 4, 2],
    ("vgg11", 50): [50, 25, 12, 6, 3],
}


@pytest.mark.parametrize("name,side", list(TORCHVISION_SIDES))
def test_stage_shapes_match_torchvision(name, side):
    info = models.model_info(name)
    model = models.create_model(name, features_only=True)
    feats = _trace(model, (1, side, side, 3))["eval"][0]
    assert [f.shape[1] for f in feats] == TORCHVISION_SIDES[name, side]
    assert [f.shape[2] for f in feats] == TORCHVISION_SIDES[name, side]
    assert [f.shape[3] for f in feats] == [f["channels"] for f in info.feature_info]


# ------------------------------------------------------------------------ minimum sizes


@pytest.mark.parametrize(
    "name,kwargs,side",
    [
        ("alexnet", {}, 63),
        ("vgg11", {}, 32),
        ("googlenet", {"aux_logits": True}, 15),
        ("inception_v3", {"aux_logits": False}, 75),
    ],
)
def test_true_minimum_size_works_and_one_less_is_rejected(name, kwargs, side):
    model = models.create_model(name, num_classes=4, **kwargs)
    logits, _ = _trace(model, (1, side, side, 3))["eval"]
    assert logits.shape == (1, 4)
    with pytest.raises(ValueError, match=f"at least {side}x{side}"):
        _trace(model, (1, side - 1, side, 3))


def test_inception_aux_needs_299_for_init_and_training_only():
    model = models.create_model("inception_v3")
    assert models.model_info("inception_v3").min_size == 299
    assert models.model_info("inception_v3").extra["min_size_without_aux"] == 75
    with pytest.raises(ValueError, match=r"299x299.*aux_logits=False"):
        _trace(model, (1, 298, 298, 3))
    # parameters made at 299 evaluate at 75 (the aux head is not run in eval mode) ...
    v = models.abstract_variables(model, (1, 299, 299, 3))
    x = jnp.zeros((1, 75, 75, 3))
    assert jax.eval_shape(lambda v: model.apply(v, x), v).shape == (1, 1000)
    # ... but not in training, and features_only never builds the head
    with pytest.raises(ValueError, match="299"):
        jax.eval_shape(
            lambda v: model.apply(
                v, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)}
            ),
            v,
        )
    feats = _trace(models.create_model("inception_v3", features_only=True), (1, 75, 75, 3))
    assert feats["eval"][0][-1].shape == (1, 1, 1, 2048)


# ------------------------------------------------------------------------ family details


@pytest.mark.parametrize("depth,convs", [(11, 8), (13, 10), (16, 13), (19, 16)])
def test_vgg_configurations(depth, convs):
    plain = flatten_dict(
        models.abstract_variables(models.create_model(f"vgg{depth}"), (1, 32, 32, 3))["params"]
    )
    bn = models.abstract_variables(models.create_model(f"vgg{depth}_bn"), (1, 32, 32, 3))
    kernels = [k for k, a in plain.items() if k[-1] == "kernel" and a.ndim == 4]
    assert len(kernels) == convs and all(plain[k].shape[:2] == (3, 3) for k in kernels)
    assert all(k[:-1] + ("bias",) in plain for k in kernels)  # torchvision keeps conv biases
    assert len(jax.tree.leaves(bn["batch_stats"])) == 2 * convs
    # 32x32 input: 1x1 after five pools, adaptive pooling replicates it to 7x7 as torchvision
    assert plain[("fc1", "kernel")].shape == (512 * 7 * 7, 4096)
    assert list(bn["params"]) == [
        "stage1",
        "stage2",
        "stage3",
        "stage4",
        "stage5",
        "fc1",
        "fc2",
        "head",
    ]


def test_alexnet_classifier_is_independent_of_input_size():
    for side in (63, 224):
        p = models.abstract_variables(models.create_model("alexnet"), (1, side, side, 3))["params"]
        assert p["fc1"]["kernel"].shape == (256 * 6 * 6, 4096)
        assert list(p) == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc1", "fc2", "head"]
    assert p["conv1"]["kernel"].shape == (11, 11, 3, 64)


def test_googlenet_is_faithful_to_torchvision_quirks():
    v = models.abstract_variables(models.create_model("googlenet"), (1, 224, 224, 3))
    p = v["params"]
    # the "5x5" branch is a 3x3 conv in torchvision; convolutions have no bias before BN
    assert p["inception3a"]["branch3_2"]["conv"]["kernel"].shape == (3, 3, 16, 32)
    assert "bias" not in p["inception3a"]["branch3_2"]["conv"]
    model = googlenet_mod.BasicConv(8)
    assert model.bn_eps == 1e-3 and inception_mod.BasicConv(8).bn_eps == 1e-3
