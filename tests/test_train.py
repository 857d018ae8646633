"""The jit-compiled train and eval steps: donated state, one compilation, masked examples."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcnn import models
from jaxcnn.train import create_train_state, cross_entropy, make_eval_step, make_train_step


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
