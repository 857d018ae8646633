"""Training loop: static shapes (one compilation), resume == uninterrupted, outputs written."""

import json

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxcnn import models
from jaxcnn.train import create_train_state, cross_entropy, fit, make_eval_step, make_train_step


def small_config(**kw):
    c = ml_collections.ConfigDict(
        dict(
            model="lenet5_modern",
            dataset="digits",
            test_split=0.2,
            split_seed=0,
            num_train=300,
            batch_size=32,
            eval_batch_size=64,
            epochs=3,
            learning_rate=2e-3,
            augment_shift=1,
            progress=False,
            checkpoint_every_steps=4,
        )
    )
    c.update(kw)
    return c


def test_fit_compiles_each_step_once_and_writes_outputs(tmp_path):
    # 300 train examples / 32 -> a dropped partial batch; 359 test / 64 -> a padded one.
    res = fit(small_config(), str(tmp_path))
    assert res["compilations"] == {"train_step": 1, "eval_step": 1}
    for f in ("metrics.json", "curves.png", "confusion.png"):
        assert (tmp_path / f).stat().st_size > 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert len(m["history"]) == 3 and m["params"] == 61_706
    cm = np.array(m["confusion"])
    assert cm.shape == (10, 10) and cm.sum() == m["num_test"] == 359
    assert np.trace(cm) / cm.sum() == pytest.approx(m["final"]["test_accuracy"])
    assert m["final"]["test_accuracy"] > 0.5  # learns something in 3 short epochs


def test_resume_after_interruption_equals_uninterrupted_run(tmp_path):
    full = fit(small_config(), str(tmp_path / "full"))
    # 300 // 32 = 9 steps per epoch; stop mid-epoch 2 (step 13, after a step checkpoint at 12)
    part = fit(small_config(), str(tmp_path / "part"), stop_at_step=13)
    assert part == {"stopped_at_step": 13}
    resumed = fit(small_config(), str(tmp_path / "part"), resume=True)
    assert int(resumed["state"].step) == int(full["state"].step) == 27
    chex.assert_trees_all_close(resumed["state"].params, full["state"].params, atol=1e-6)
    chex.assert_trees_all_close(resumed["state"].opt_state, full["state"].opt_state, atol=1e-6)
    assert resumed["test_accuracy"] == pytest.approx(full["test_accuracy"])
    hist = json.loads((tmp_path / "part" / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in hist] == [1, 2, 3]


def test_early_stopping(tmp_path):
    res = fit(
        small_config(
            epochs=30, early_stopping_patience=1, learning_rate=0.0, checkpoint_every_steps=0
        ),
        str(tmp_path),
    )
    assert res["stopped_early"] and res["epochs_run"] == 2  # lr 0: never improves after epoch 1


def test_unknown_config_key_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="learning_rte.*did you mean learning_rate"):
        fit(small_config(learning_rte=0.1), str(tmp_path))


def test_train_step_is_jitted_donated_and_reduces_loss():
    model = models.create_model("lenet5")
    state = create_train_state(model, optax.adam(1e-2), (1, 32, 32, 1))
    step = make_train_step()
    x = jax.random.normal(jax.random.key(0), (16, 32, 32, 1))
    y = jnp.arange(16) % 10
    batch = {"image": x, "label": y, "mask": jnp.ones(16)}
    losses = []
    for _ in range(15):
        old = state
        state, m = step(state, batch)
        losses.append(float(m["loss_sum"] / m["count"]))
    assert old.params["head"]["kernel"].is_deleted()  # donated: buffers reused
    assert losses[-1] < 0.5 * losses[0]
    assert step._cache_size() == 1


def test_masked_examples_do_not_contribute():
    model = models.create_model("lenet5")
    state = create_train_state(model, optax.sgd(0.1), (1, 32, 32, 1))
    eval_step = make_eval_step(num_classes=10)
    x = jax.random.normal(jax.random.key(0), (8, 32, 32, 1))
    y = jnp.arange(8)
    full = eval_step(state, {"image": x[:5], "label": y[:5], "mask": jnp.ones(5)})
    padded = eval_step(
        state, {"image": x, "label": y, "mask": jnp.array([1, 1, 1, 1, 1, 0, 0, 0.0])}
    )
    chex.assert_trees_all_close(full, padded, atol=1e-5)
    assert cross_entropy(
        jnp.zeros((2, 3)), jnp.array([0, 1]), jnp.array([1.0, 0.0])
    ) == pytest.approx(np.log(3), rel=1e-6)


@pytest.mark.slow
def test_default_job_reaches_98_percent_on_digits(tmp_path):
    """The README's first command: LeNet-5 on held-out real digits."""
    from experiments.configs import lenet_digits

    c = lenet_digits.get_config()
    c.progress = False
    res = fit(c, str(tmp_path))
    assert res["test_accuracy"] >= 0.98


@pytest.mark.slow
def test_lenet_mnist_reaches_98_5_percent(tmp_path, mnist_dir):
    from experiments.configs import lenet_mnist

    c = lenet_mnist.get_config()
    c.data_dir = str(mnist_dir)
    c.progress = False
    res = fit(c, str(tmp_path))
    assert res["epochs_run"] <= 10 and res["test_accuracy"] >= 0.985
