"""Sweeps every registered model: a new model is tested by being registered.

- parameter count equals the reference count to the unit (``jax.eval_shape``, no allocation);
- ``num_classes`` changes only the head;
- a forward pass at the model's smallest input gives finite logits of the right shape, in
  training mode BatchNorm statistics change and in eval mode they do not;
- ``features_only`` returns the stages ``feature_info`` announces;
- too small an image raises ``ValueError`` naming the minimum.
"""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import models

ALL = models.list_models()


def _representatives():
    """The smallest registered variant of every model class (one per family and form)."""
    best = {}
    for n in ALL:
        cls = type(models.create_model(n)).__name__
        if cls not in best or models.model_info(n).params < models.model_info(best[cls]).params:
            best[cls] = n
    return sorted(best.values())


# The default run checks every model's parameter count (the faithfulness contract) and one
# representative per family for the rest; `-m slow` runs every check on every model.
REPRESENTATIVE = _representatives()
FAST = [n for n in REPRESENTATIVE if not models.model_info(n).slow]


def _sweep(names):
    """Parametrize over ``names`` by default and over the remaining models under ``slow``."""
    rest = [n for n in ALL if n not in names]
    return [pytest.param(n) for n in names] + [
        pytest.param(n, marks=pytest.mark.slow) for n in rest
    ]


# models whose output is not a class vector (segmentation, generators, discriminators)
NON_CLASSIFIERS = {n for n in ALL if models.model_info(n).task != "classification"}


def small_input(name, batch=2):
    info = models.model_info(name)
    return (batch, info.test_size, info.test_size, info.input_size[2])


def test_registry_lists_and_info():
    assert ALL == sorted(ALL) and len(ALL) == len(set(ALL))
    assert models.list_models("lenet*") == ["lenet5", "lenet5_modern"]
    for n in ALL:
        info = models.model_info(n)
        assert info.name == n and len(info.input_size) == 3 and info.paper


def test_model_info_typed_fields():
    """What code reads from the registry is a typed field, not a key of ``extra``."""
    for n in ALL:
        info = models.model_info(n)
        assert info.task in models.TASKS
        assert isinstance(info.test_size, int) and info.test_size >= info.min_size
        assert isinstance(info.aux_weight, float) and info.aux_weight >= 0
    assert models.model_info("unet").task == "segmentation"
    assert models.model_info("dcgan_generator_28").task == "generation"
    assert models.model_info("dcgan_discriminator_28").task == "discrimination"
    assert models.model_info("resnet50").task == "classification"
    assert models.model_info("resnet50").test_size == 32  # max(min_size, 32)
    assert models.model_info("vit_b_16").test_size == 224
    assert models.model_info("googlenet").aux_weight == 0.3
    assert models.model_info("resnet50").aux_weight == 0.0
    with pytest.raises(ValueError, match="task must be one of"):
        models.register_model("never_registered", params=1, input_size=(8, 8, 1), task="x")


def test_unknown_model_suggests_close_matches():
    with pytest.raises(ValueError, match=r"Unknown model 'lenet'.*lenet5"):
        models.create_model("lenet")


@pytest.mark.parametrize("name", ALL)
def test_param_count_matches_reference(name):
    info = models.model_info(name)
    assert info.params is not None, f"{name} has no reference parameter count"
    got = models.count_params(name)
    assert got == info.params, f"{name}: {got:,} parameters, reference {info.params:,}"


@pytest.mark.parametrize(
    "name", [p for p in _sweep(REPRESENTATIVE) if p.values[0] not in NON_CLASSIFIERS]
)
def test_num_classes_changes_only_the_head(name):
    info = models.model_info(name)
    shape = (1, *info.input_size)
    v10 = models.abstract_variables(models.create_model(name, num_classes=10), shape)
    v1 = models.abstract_variables(models.create_model(name, num_classes=1), shape)
    n10 = sum(math.prod(x.shape) for x in jax.tree.leaves(v10["params"]))
    n1 = sum(math.prod(x.shape) for x in jax.tree.leaves(v1["params"]))
    # one class fewer per output unit: (features + 1) parameters per class
    assert (n10 - n1) % 9 == 0 and n10 > n1


def _forward_checks(name):
    models.model_info(name)
    shape = small_input(name)
    nc = 7
    model = (
        models.create_model(name, num_classes=nc)
        if name not in NON_CLASSIFIERS
        else models.create_model(name)
    )
    x = jax.random.normal(jax.random.key(0), shape)

    @jax.jit  # one compilation: init, eval and train
    def run(x):
        variables = model.init({"params": jax.random.key(1), "dropout": jax.random.key(2)}, x)
        if "batch_stats" not in variables:
            return {"variables": variables, "out": model.apply(variables, x, train=False)}
        # eval mode asked to update the statistics: its output is the eval output, and the
        # statistics must come back unchanged (what a plain eval call relies on)
        out, eval_upd = model.apply(variables, x, train=False, mutable=["batch_stats"])
        res = {"variables": variables, "out": out, "eval_upd": eval_upd}
        res["train"] = model.apply(
            variables,
            x,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": jax.random.key(3)},
        )
        return res

    res = run(x)
    variables, out = res["variables"], res["out"]
    chex.assert_tree_all_finite(out)
    if name not in NON_CLASSIFIERS:
        chex.assert_shape(out, (shape[0], nc))
    if "batch_stats" in variables:
        out_t, upd = res["train"]
        chex.assert_tree_all_finite(out_t)
        changed = jax.tree.map(
            lambda a, b: bool(jnp.any(a != b)), variables["batch_stats"], upd["batch_stats"]
        )
        assert all(jax.tree.leaves(changed)), f"{name}: some BatchNorm statistics did not update"
        # eval mode is a pure function of the variables: nothing to update
        chex.assert_trees_all_equal(res["eval_upd"]["batch_stats"], variables["batch_stats"])


@pytest.mark.parametrize("name", FAST)
def test_forward_small_batch(name):
    _forward_checks(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in ALL if n not in FAST])
def test_forward_small_batch_large_models(name):
    _forward_checks(name)


@pytest.mark.parametrize(
    "name", [p for p in _sweep(REPRESENTATIVE) if models.model_info(p.values[0]).feature_info]
)
def test_features_only_matches_feature_info(name):
    info = models.model_info(name)
    shape = (1, *info.input_size)
    model = models.create_model(name, features_only=True)
    feats = jax.eval_shape(
        lambda: model.apply(model.init(jax.random.key(0), jnp.zeros(shape)), jnp.zeros(shape))
    )
    assert isinstance(feats, (list, tuple)) and len(feats) == len(info.feature_info)
    for f, fi in zip(feats, info.feature_info):
        assert f.shape[-1] == fi["channels"], (name, fi, f.shape)
        if f.ndim == 4:  # spatial map: side = input side / reduction (up to padding rounding)
            assert np.isclose(f.shape[1], shape[1] / fi["reduction"], rtol=0.3, atol=1), (
                name,
                fi,
                f.shape,
            )


@pytest.mark.parametrize(
    "name", [p for p in _sweep(REPRESENTATIVE) if models.model_info(p.values[0]).min_size > 1]
)
def test_too_small_image_is_rejected(name):
    info = models.model_info(name)
    side = info.min_size - 1
    model = models.create_model(name)
    with pytest.raises(ValueError, match=str(info.min_size)):
        model.init(jax.random.key(0), jnp.zeros((1, side, side, info.input_size[2])))
