"""Checkpoints: latest N + best k kept, the newest never deleted, atomic, fallback on corruption."""

import pathlib

import chex
import jax.numpy as jnp
import optax
import pytest

from jaxcnn import models
from jaxcnn.checkpoint import Checkpointer
from jaxcnn.train import create_train_state


@pytest.fixture(scope="module")
def state():
    return create_train_state(models.create_model("lenet5"), optax.adam(1e-3), (1, 32, 32, 1))


def bump(state, s):
    return state.replace(
        step=jnp.int32(s),
        params={
            **state.params,
            "head": {**state.params["head"], "bias": state.params["head"]["bias"] + s},
        },
    )


def test_keeps_latest_and_best_and_never_deletes_newest(tmp_path, state):
    ck = Checkpointer(tmp_path, keep=2, keep_best=1, best_metric="acc")
    for s, acc in [(1, 0.95), (2, 0.5), (3, 0.6), (4, 0.7), (5, 0.1)]:
        ck.save(s, bump(state, s), {"acc": acc})
    assert ck.all_steps() == [1, 4, 5]  # best (1) + latest two, newest 5 although worst
    assert ck.best_step() == 1 and ck.latest_step() == 5
    restored, step = ck.restore(state)
    assert step == 5
    chex.assert_trees_all_equal(restored.params, bump(state, 5).params)
    best, _ = ck.restore(state, step=ck.best_step())
    chex.assert_trees_all_equal(best.params, bump(state, 1).params)
    ck.close()
    # a new manager on the same directory still knows which one was best
    ck2 = Checkpointer(tmp_path, keep=2, keep_best=1, best_metric="acc")
    ck2.save(6, bump(state, 6), {"acc": 0.2})
    assert ck2.all_steps() == [1, 5, 6]


def test_min_mode_keeps_lowest_loss(tmp_path, state):
    ck = Checkpointer(tmp_path, keep=1, keep_best=1, best_metric="loss", best_mode="min")
    for s, loss in [(1, 3.0), (2, 0.5), (3, 1.0), (4, 2.0)]:
        ck.save(s, state, {"loss": loss})
    assert ck.all_steps() == [2, 4]


def test_interrupted_save_leaves_last_good_checkpoint(tmp_path, state):
    ck = Checkpointer(tmp_path, keep=3)
    ck.save(1, bump(state, 1))
    ck.close()
    # a crash mid-save leaves only Orbax's temporary directory behind
    tmp = pathlib.Path(tmp_path) / "2.orbax-checkpoint-tmp-1234"
    (tmp / "default").mkdir(parents=True)
    (tmp / "default" / "partial").write_bytes(b"\0" * 100)
    ck = Checkpointer(tmp_path, keep=3)
    assert ck.all_steps() == [1]
    restored, step = ck.restore(state)
    assert step == 1
    chex.assert_trees_all_equal(restored.params, bump(state, 1).params)
    assert not tmp.exists()  # leftovers of the crashed save are cleaned up


def test_corrupt_latest_falls_back_to_previous(tmp_path, state):
    ck = Checkpointer(tmp_path, keep=3)
    ck.save(1, bump(state, 1))
    ck.save(2, bump(state, 2))
    ck.close()
    # damage every data file of step 2 (disk error, manual tampering)
    for f in (pathlib.Path(tmp_path) / "2").rglob("*"):
        if f.is_file() and "metadata" not in f.name.lower():
            f.write_bytes(b"garbage")
    ck = Checkpointer(tmp_path, keep=3)
    restored, step = ck.restore(state)
    assert step == 1
    chex.assert_trees_all_equal(restored.params, bump(state, 1).params)
    ck.close()


def test_errors(tmp_path, state):
    with pytest.raises(ValueError, match="keep must be >= 1"):
        Checkpointer(tmp_path, keep=0)
    ck = Checkpointer(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        ck.restore(state)
    ck.save(3, state)
    with pytest.raises(FileNotFoundError, match="step 7 not in"):
        ck.restore(state, step=7)
