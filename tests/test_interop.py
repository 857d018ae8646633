"""jaxcnn.interop (torch state_dict <-> jaxcnn variables), without torch: state dicts are built
here from jaxcnn variables in torch's layout (OIHW convs, (out, in) linears, BatchNorm
weight/bias/running_mean/running_var/num_batches_tracked, keys in call order)."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jaxcnn import models
from jaxcnn.inspect import random_variables, small_input_shape
from jaxcnn.interop import from_torch_state_dict, to_torch_state_dict
from jaxcnn.layers.conv import ConvTranspose2d

TORCH_NAME = {
    "kernel": "weight",
    "scale": "weight",
    "bias": "bias",
    "mean": "running_mean",
    "var": "running_var",
    "cls_token": "class_token",
    "pos_embed": "pos_embedding",
}


def torch_layout(variables, flat_maps=None) -> dict:
    """A torch-style state dict of ``variables`` (numpy), modules in creation order.
    ``flat_maps``: {dense module path: (H, W, C)} for dense layers fed by a flattened map."""
    flat_maps = flat_maps or {}
    cols = {
        c: traverse_util.flatten_dict(dict(variables.get(c, {}))) for c in ("params", "batch_stats")
    }
    modules = list(dict.fromkeys(p[:-1] for c in cols.values() for p in c))
    sd = {}
    for mp in modules:
        for col in cols.values():
            for path, v in col.items():
                if path[:-1] != mp:
                    continue
                a, name = np.asarray(v), path[-1]
                if name == "kernel" and a.ndim == 4:
                    a = a.transpose(3, 2, 0, 1)
                elif name == "kernel" and a.ndim == 2 and mp in flat_maps:
                    h, w, c = flat_maps[mp]
                    a = a.reshape(h, w, c, -1).transpose(3, 2, 0, 1).reshape(a.shape[1], -1)
                elif name == "kernel" and a.ndim == 2:
                    a = a.T
                sd[".".join(mp + (TORCH_NAME[name],))] = a
        if "mean" in {p[-1] for p in cols["batch_stats"] if p[:-1] == mp}:
            sd[".".join(mp + ("num_batches_tracked",))] = np.array(7)
    return sd


def in_order(tree, ref):
    """``tree`` with the dict key order of ``ref`` (tree_map sorts keys; torch keeps order)."""
    return {k: in_order(tree[k], ref[k]) for k in ref} if isinstance(ref, dict) else tree


def random_setup(name, **kwargs):
    """Model, input shape and random variables (NumPy, no compilation) in creation order."""
    shape = small_input_shape(name)
    model = models.create_model(name, **kwargs)
    abstract = models.abstract_variables(model, shape)
    return model, shape, in_order(random_variables(abstract), abstract)


@pytest.fixture(scope="module")
def resnet18():
    model, shape, variables = random_setup("resnet18")
    return model, shape, variables, torch_layout(variables)


class FakeTensor:
    """Has ``.numpy()`` and ``.shape`` but no ``__array__`` (like a tensor of another library)."""

    def __init__(self, a):
        self._a, self.shape = a, a.shape

    def numpy(self):
        return self._a


@pytest.mark.parametrize("name", ["lenet5", "resnet18", "mobilenet_v3_small"])
def test_round_trip_leaves_and_logits(name):
    model, shape, variables = random_setup(name)
    sd = torch_layout(variables)
    assert any(k.endswith("num_batches_tracked") for k in sd) == (name != "lenet5")
    given = {k: FakeTensor(v) if i % 2 else v for i, (k, v) in enumerate(sd.items())}
    got = from_torch_state_dict(name, given, input_shape=shape)
    chex.assert_trees_all_equal(got, variables)
    apply = jax.jit(lambda v, x: model.apply(v, x))
    x = jax.random.normal(jax.random.key(0), shape)
    np.testing.assert_array_equal(apply(got, x), apply(variables, x))
    back = to_torch_state_dict(name, got, sd, input_shape=shape)
    assert list(back) == list(sd)
    for k in sd:
        np.testing.assert_array_equal(back[k], sd[k], err_msg=k)


def test_shape_mismatch_names_both_sides(resnet18):
    _, shape, _, sd = resnet18
    sd = dict(sd)
    sd["stage2.block1.conv1.weight"] = np.zeros((96, 128, 3, 3), np.float32)
    with pytest.raises(ValueError) as e:
        from_torch_state_dict("resnet18", sd, input_shape=shape)
    msg = str(e.value)
    assert "shape mismatch" in msg and "'stage2.block1.conv1.weight' (96, 128, 3, 3)" in msg
    assert "params/stage2/block1/conv1/kernel expects (3, 3, 128, 128)" in msg


def test_missing_tensor_is_located(resnet18):
    _, shape, _, sd = resnet18
    sd = {k: v for k, v in sd.items() if k != "stage2.block0.bn1.running_mean"}
    with pytest.raises(
        ValueError,
        match=r"no torch tensor for batch_stats/stage2/block0/bn1/mean "
        r"\(128,\)",
    ) as e:
        from_torch_state_dict("resnet18", sd, input_shape=shape)
    assert "left over" not in str(e.value)


def test_extra_tensors_are_listed(resnet18):
    _, shape, _, sd = resnet18
    items = list(sd.items())
    sd = dict(
        items[:10]
        + [("stem.extra.weight", np.ones((5, 3), np.float32))]
        + items[10:]
        + [("fc2.bias", np.ones(7, np.float32))]
    )
    with pytest.raises(ValueError) as e:
        from_torch_state_dict("resnet18", sd, input_shape=shape)
    msg = str(e.value)
    assert "torch tensor left over: 'stem.extra.weight' (5, 3); 'fc2.bias' (7,)" in msg
    assert "no torch tensor" not in msg and "mismatch" not in msg


def test_wrong_num_classes_says_what_to_do(resnet18):
    _, shape, _, sd = resnet18
    with pytest.raises(ValueError) as e:
        from_torch_state_dict("resnet18", sd, input_shape=shape, num_classes=10)
    msg = str(e.value)
    assert "'head.weight' (1000, 512) has 1000 classes" in msg
    assert "num_classes=1000" in msg and "strict=False" in msg and "replace_head" in msg


def test_strict_false_keeps_a_fresh_head():
    _, shape, variables = random_setup("lenet5")
    sd = torch_layout(variables)
    with pytest.raises(ValueError, match="num_classes=10"):
        from_torch_state_dict("lenet5", sd, num_classes=5)
    got = from_torch_state_dict("lenet5", sd, strict=False, num_classes=5)
    assert got["params"]["head"]["kernel"].shape == (84, 5)
    assert float(jnp.abs(got["params"]["head"]["kernel"]).sum()) > 0
    rest = lambda v: {k: t for k, t in v["params"].items() if k != "head"}  # noqa: E731
    chex.assert_trees_all_equal(rest(got), rest(variables))
    # strict=False lets only the head differ.
    sd2 = dict(sd, **{"c3.weight": np.zeros((16, 6, 3, 3), np.float32)})
    with pytest.raises(ValueError, match="strict=False only lets"):
        from_torch_state_dict("lenet5", sd2, strict=False, num_classes=5)


def test_features_only_ignores_the_classifier_when_not_strict():
    _, shape, variables = random_setup("lenet5")
    sd = torch_layout(variables)
    with pytest.raises(ValueError, match="left over: 'head.weight'"):
        from_torch_state_dict("lenet5", sd, features_only=True)
    got = from_torch_state_dict("lenet5", sd, strict=False, features_only=True)
    assert "head" not in got["params"]
    chex.assert_trees_all_equal(got["params"]["f6"], variables["params"]["f6"])


class Tiny(nn.Module):
    """conv -> an aux branch run mid-network -> conv -> flatten -> fc -> head."""

    @nn.compact
    def __call__(self, x, train=False):
        x = Aux(name="aux")(nn.Conv(8, (3, 3), padding=1, name="a")(x))
        x = nn.Conv(8, (3, 3), padding=1, name="b")(x)
        x = nn.Conv(4, (3, 3), strides=2, padding=1, name="c")(x)
        x = nn.Dropout(0.5)(x.reshape((x.shape[0], -1)), deterministic=True)
        return nn.Dense(3, name="head")(nn.relu(nn.Dense(5, name="fc")(x)))


class Aux(nn.Module):
    """An auxiliary classifier: its conv has the shape of Tiny's ``b``; returns its input."""

    @nn.compact
    def __call__(self, x):
        nn.Dense(2, name="fc")(nn.Conv(8, (3, 3), name="conv")(x).mean((1, 2)))
        return x


def test_blocks_registered_elsewhere_and_flattened_dense():
    """Torch registers the aux branch last (like GoogLeNet's aux1): the block is matched as a
    whole, not conv by conv (``b`` has aux's conv shape). ``fc`` sees torch's (C, H, W) order."""
    model = Tiny()
    shape = (1, 8, 8, 3)
    abstract = models.abstract_variables(model, shape)
    variables = in_order(random_variables(abstract), abstract)
    sd = torch_layout(variables, flat_maps={("fc",): (4, 4, 4)})
    order = [k for k in sd if not k.startswith("aux.")] + [k for k in sd if k.startswith("aux.")]
    assert order[2] == "b.weight"
    got = from_torch_state_dict(model, {k: sd[k] for k in order}, input_shape=shape)
    chex.assert_trees_all_equal(got, variables)
    # The permutation is torch's: W @ map.flatten() in NCHW == map.flatten() in NHWC @ kernel.
    fmap = np.random.default_rng(0).normal(size=(1, 4, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(
        fmap.reshape(1, -1) @ np.asarray(got["params"]["fc"]["kernel"]),
        fmap.transpose(0, 3, 1, 2).reshape(1, -1) @ sd["fc.weight"].T,
        rtol=1e-5,
        atol=1e-6,
    )


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
    variables = from_torch_state_dict(model, {"up.weight": w, "up.bias": b}, input_shape=(4, 4, 2))
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
    back = to_torch_state_dict(
        model, variables, {"up.weight": w.shape, "up.bias": (3,)}, input_shape=(4, 4, 2)
    )
    np.testing.assert_array_equal(back["up.weight"], w)


def test_bad_arguments():
    with pytest.raises(TypeError, match="mapping"):
        from_torch_state_dict("lenet5", [np.zeros(3)])
    with pytest.raises(ValueError, match="input_shape"):
        from_torch_state_dict(models.create_model("lenet5"), {})
