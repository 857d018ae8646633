"""Weight EMA (jaxcnn.train.ema) and its TrainState field: timm's ModelEmaV3 decay, checkpointed."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import serialization

from jaxcnn.checkpoint import Checkpointer
from jaxcnn.train import create_train_state
from jaxcnn.train.ema import ema_decay, ema_init, ema_update


def _timm_decay(step, decay, warmup=False, gamma=1.0, power=2 / 3, min_decay=0.0, after=0):
    # timm ModelEmaV3.get_decay, transcribed
    step = max(0, step - after - 1)
    if step <= 0:
        return 0.0
    if warmup:
        d = 1 - (1 + step / gamma) ** -power
        return max(min(d, decay), min_decay)
    return decay


@pytest.mark.parametrize("warmup", [False, True])
@pytest.mark.parametrize("after", [0, 3])
def test_decay_matches_timm(warmup, after):
    for step in [0, 1, 2, 3, 5, 10, 100, 10_000, 1_000_000]:
        got = float(ema_decay(step, 0.9999, warmup=warmup, update_after_step=after))
        want = _timm_decay(step, 0.9999, warmup=warmup, after=after)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    got = float(ema_decay(50, 0.99, warmup=True, warmup_power=0.75, min_decay=0.5))
    np.testing.assert_allclose(got, 1 - 50**-0.75, rtol=1e-6)
    assert float(ema_decay(2, 0.99, warmup=True, min_decay=0.5)) == 0.5


def test_update_averages_params_and_batch_stats():
    p0 = {"w": jnp.zeros(3), "b": jnp.ones(2)}
    bs0 = {"mean": jnp.zeros(3), "count": jnp.array(0, jnp.int32)}
    ema = ema_init(p0, bs0)
    p1 = {"w": jnp.full(3, 10.0), "b": jnp.full(2, 3.0)}
    bs1 = {"mean": jnp.full(3, 4.0), "count": jnp.array(7, jnp.int32)}
    # first update (step 1) copies the model, as timm
    e1 = jax.jit(lambda e: ema_update(e, p1, bs1, 1, 0.9))(ema)
    chex.assert_trees_all_close(e1, {"params": p1, "batch_stats": bs1})
    # then d * ema + (1 - d) * new on floating leaves; integer leaves copied
    p2 = {"w": jnp.zeros(3), "b": jnp.zeros(2)}
    bs2 = {"mean": jnp.zeros(3), "count": jnp.array(9, jnp.int32)}
    e2 = ema_update(e1, p2, bs2, 2, 0.9)
    chex.assert_trees_all_close(e2["params"]["w"], jnp.full(3, 9.0), rtol=1e-6)
    chex.assert_trees_all_close(e2["batch_stats"]["mean"], jnp.full(3, 3.6), rtol=1e-6)
    assert int(e2["batch_stats"]["count"]) == 9
    assert "batch_stats" not in ema_init(p0, {})
    with pytest.raises(ValueError, match="ema decay"):
        ema_update(e1, p2, bs2, 2, 1.0)


def test_ema_of_constant_stream_and_bf16_leaves():
    ema = ema_init({"w": jnp.zeros(4, jnp.bfloat16)})
    for step in range(1, 200):
        ema = ema_update(ema, {"w": jnp.ones(4, jnp.bfloat16)}, None, step, 0.9, warmup=True)
    assert ema["params"]["w"].dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(ema["params"]["w"], np.float32), 1.0, atol=1e-2)


class _TinyBN(nn.Module):
    """Conv + BatchNorm + Dense: parameters and batch statistics, cheap to build."""

    @nn.compact
    def __call__(self, x, train=False):
        x = nn.Conv(4, (3, 3))(x)
        x = nn.BatchNorm(use_running_average=not train)(x)
        return nn.Dense(3)(x.mean((1, 2)))


def _state(ema):
    return create_train_state(_TinyBN(), optax.sgd(0.1), (1, 8, 8, 3), seed=0, ema=ema)


def test_train_state_ema_field_and_evaluation():
    state = _state(ema=True)
    chex.assert_trees_all_close(state.ema, state.variables)
    x = jnp.ones((2, 8, 8, 3))
    chex.assert_trees_all_close(
        state.apply_fn(state.ema, x, train=False), state.apply_fn(state.variables, x, train=False)
    )
    assert _state(ema=False).ema is None


def test_state_dict_round_trip_and_old_checkpoints():
    with_ema = _state(ema=True)
    with_ema = with_ema.replace(ema=jax.tree.map(lambda a: a + 1.0, with_ema.ema))
    d = serialization.to_state_dict(with_ema)
    assert "ema" in d
    back = serialization.from_state_dict(_state(ema=True), d)
    chex.assert_trees_all_close(back.ema, with_ema.ema)

    # a state without EMA keeps the old layout: no "ema" key
    old = _state(ema=False)
    old = old.replace(params=jax.tree.map(lambda a: a * 2.0, old.params))
    d_old = serialization.to_state_dict(old)
    assert "ema" not in d_old and set(d_old) == {
        "step",
        "params",
        "batch_stats",
        "opt_state",
        "rng",
    }
    # restoring it into a template without EMA: as before
    r = serialization.from_state_dict(_state(ema=False), d_old)
    assert r.ema is None
    # into a template with EMA: the EMA starts at the restored weights
    r = serialization.from_state_dict(_state(ema=True), d_old)
    chex.assert_trees_all_close(r.ema, {"params": old.params, "batch_stats": old.batch_stats})


def test_ema_checkpointed_and_resumed(tmp_path):
    state = _state(ema=True)
    state = state.replace(ema=jax.tree.map(lambda a: a - 0.5, state.ema))
    ckpt = Checkpointer(str(tmp_path / "ckpt"))
    ckpt.save(3, state)
    ckpt.wait()
    restored = ckpt.restore(_state(ema=True))
    ckpt.close()
    got = restored[0]
    chex.assert_trees_all_close(got.ema, state.ema)
    chex.assert_trees_all_close(got.params, state.params)
