"""On-device metric sums (jaxcnn.train.metrics) and TensorBoard scalars (jaxcnn.train.logger)."""

import json
import os
import pathlib
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn.train import losses
from jaxcnn.train.metrics import classification_sums, summarize, topk_correct
from jaxcnn.utils import tree_add

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _data(n=64, k=10, seed=0):
    logits = jax.random.normal(jax.random.key(seed), (n, k))
    labels = jax.random.randint(jax.random.key(seed + 1), (n,), 0, k)
    return logits, labels


def test_top1_top5_per_class_against_numpy():
    logits, labels = _data()
    w = jnp.ones(64).at[-5:].set(0.0)  # padding
    s = jax.jit(classification_sums)(logits, labels, w)
    lg, lb, wn = np.asarray(logits), np.asarray(labels), np.asarray(w)
    top5 = np.argsort(-lg, axis=1)[:, :5]
    in5 = np.array([lb[i] in top5[i] for i in range(64)])
    top1 = lg.argmax(1) == lb
    assert float(s["count"]) == 59
    assert float(s["correct"]) == (top1 * wn).sum()
    assert float(s["correct_top5"]) == (in5 * wn).sum()
    for c in range(10):
        sel = (lb == c) & (wn > 0)
        assert float(s["class_count"][c]) == sel.sum()
        assert float(s["class_correct"][c]) == (top1 & sel).sum()
    ref = losses.classification_metrics(logits, labels, w)
    chex.assert_trees_all_close(s["loss_sum"], ref["loss_sum"], rtol=1e-6)


def test_top5_only_with_more_than_five_classes_and_ties():
    logits, labels = _data(k=5)
    assert "correct_top5" not in classification_sums(logits, labels)
    # a label tied with the 5th highest logit counts as in the top 5
    lg = jnp.array([[5.0, 4, 3, 2, 1, 1, 0]])
    assert float(topk_correct(lg, jnp.array([5]), 5)[0]) == 1.0
    assert float(topk_correct(lg, jnp.array([6]), 5)[0]) == 0.0


def test_sums_add_across_batches_and_summarize():
    logits, labels = _data(n=60)
    whole = classification_sums(logits, labels)
    parts = None
    for i in range(0, 60, 20):
        parts = tree_add(parts, classification_sums(logits[i : i + 20], labels[i : i + 20]))
    chex.assert_trees_all_close(parts, whole, rtol=1e-5)
    names = tuple(f"c{i}" for i in range(10))
    out = summarize(parts, class_names=names)
    assert out["count"] == 60
    np.testing.assert_allclose(out["accuracy"], float(whole["correct"]) / 60)
    np.testing.assert_allclose(out["top5_accuracy"], float(whole["correct_top5"]) / 60)
    assert set(out["per_class_accuracy"]) == set(names)
    # a class with no example is None (strict JSON), not NaN
    s = classification_sums(jnp.eye(3), jnp.array([0, 1, 1]))
    out = summarize(s)
    assert out["per_class_accuracy"] == [1.0, 0.5, None]
    json.dumps(out, allow_nan=False)


_SHARDED = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxcnn.train.metrics import classification_sums
assert len(jax.devices()) == 4
logits = jax.random.normal(jax.random.key(0), (32, 10))
labels = jax.random.randint(jax.random.key(1), (32,), 0, 10)
w = jnp.ones(32).at[-3:].set(0.0)
shard = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), PartitionSpec("data"))
args = [jax.device_put(a, shard) for a in (logits, labels, w)]
got = jax.jit(classification_sums)(*args)
assert len(args[0].sharding.device_set) == 4
ref = classification_sums(np.asarray(logits), np.asarray(labels), np.asarray(w))
for k in ref:
    np.testing.assert_allclose(np.asarray(got[k]), np.asarray(ref[k]), rtol=1e-5, err_msg=k)
print("OK", float(got["count"]))
"""


def test_sums_across_devices_equal_single_device():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-c", _SHARDED], env=env, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "OK 29.0" in proc.stdout


def test_tensorboard_scalars_read_back(tmp_path):
    from jaxcnn.train.logger import TensorBoardWriter, read_scalars

    logdir = tmp_path / "tb"
    with TensorBoardWriter(str(logdir)) as w:
        for step in range(1, 4):
            w.write_scalars(step, {"train/loss": 1.0 / step, "lr": 0.1 * step})
        w.write_scalars(10, {"val/accuracy": np.float32(0.75)})
    got = read_scalars(str(logdir))
    assert set(got) == {"train/loss", "lr", "val/accuracy"}
    assert [s for s, _ in got["train/loss"]] == [1, 2, 3]
    np.testing.assert_allclose([v for _, v in got["train/loss"]], [1.0, 0.5, 1 / 3], rtol=1e-6)
    np.testing.assert_allclose([v for _, v in got["lr"]], [0.1, 0.2, 0.3], rtol=1e-6)
    assert got["val/accuracy"] == [(10, 0.75)]
    with pytest.raises(FileNotFoundError):
        read_scalars(str(tmp_path / "empty"))
