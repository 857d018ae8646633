"""jaxcnn.utils: the one home of path, parameter-count, abstract-init and running-sum helpers."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import inspect, models, transfer, utils


class _Tiny(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        x = nn.Conv(4, (3, 3), name="stem")(x)
        x = nn.BatchNorm(use_running_average=not train, name="bn")(x)
        return nn.Dense(3, name="head")(x.mean((1, 2)))


def test_path_str_takes_key_paths_and_names():
    tree = {"stage1": {"block0": [np.zeros(2), {"kernel": np.zeros(3)}]}}
    key_paths = [kp for kp, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
    assert [utils.path_str(kp) for kp in key_paths] == [
        "stage1/block0/0",
        "stage1/block0/1/kernel",
    ]
    assert utils.path_str(("stage1", "block0", "conv1")) == "stage1/block0/conv1"
    assert utils.path_str(()) == ""
    assert utils.tree_paths(tree) == ["stage1/block0/0", "stage1/block0/1/kernel"]
    sizes = utils.map_with_path(lambda p, x: (p, x.size), tree)
    assert sizes["stage1"]["block0"][1]["kernel"] == ("stage1/block0/1/kernel", 3)


def test_abstract_init_allocates_nothing_and_keeps_creation_order():
    v = utils.abstract_init(_Tiny(), (1, 8, 8, 2))
    assert list(v) == ["params", "batch_stats"]
    assert list(v["params"]) == ["stem", "bn", "head"]  # creation order, not sorted
    leaves = jax.tree.leaves(v)
    assert leaves and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
    assert v["params"]["stem"]["kernel"].shape == (3, 3, 2, 4)
    assert models.abstract_variables is utils.abstract_init


def test_count_params_one_contract_everywhere():
    tiny, shape = _Tiny(), (1, 8, 8, 2)
    expected = 3 * 3 * 2 * 4 + 4 + 4 + 4 + 4 * 3 + 3  # conv, BN scale/bias, dense (no stats)
    assert utils.count_params(tiny, shape) == expected
    assert models.count_params(tiny, shape) == expected
    params = utils.abstract_init(tiny, shape)["params"]
    assert utils.count_params(params) == expected
    variables = jax.jit(lambda x: tiny.init(jax.random.key(0), x))(jnp.zeros(shape))
    assert utils.count_params(variables["params"]) == expected  # arrays as well as shapes
    assert utils.count_params(variables) == expected + 8  # a tree counts every leaf: + stats
    assert transfer.count_params is utils.count_params
    assert models.count_params("lenet5") == 61_706
    with pytest.raises(ValueError, match="input_shape"):
        utils.count_params(tiny)
    with pytest.raises(TypeError, match="only applies to a module"):
        utils.count_params(params, shape)
    with pytest.raises(TypeError, match="only apply to a registered model name"):
        models.count_params(tiny, shape, num_classes=3)


def test_tree_add_is_a_running_sum():
    total = None
    for m in ({"loss": jnp.array(1.0), "n": jnp.array(2)}, {"loss": jnp.array(0.5), "n": 3}):
        total = utils.tree_add(total, m)
    assert float(total["loss"]) == 1.5 and int(total["n"]) == 5


def test_inspect_exposes_what_interop_needs():
    calls, variables = inspect.record_calls(_Tiny(), (1, 8, 8, 2))
    assert [c.name for c in calls] == ["", "stem", "bn", "head"]
    module, shape, name = inspect.resolve("lenet5")
    assert shape == (1, 32, 32, 1) and name == "lenet5" and isinstance(module, nn.Module)


# -- the persistent compilation cache (jaxcnn.utils.cache) ---------------------------------------
def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("JAXCNN_COMPILATION_CACHE", "0")
    assert utils.default_cache_dir() is None
    monkeypatch.setenv("JAXCNN_COMPILATION_CACHE", str(tmp_path / "mine"))
    assert utils.default_cache_dir() == str(tmp_path / "mine")
    monkeypatch.delenv("JAXCNN_COMPILATION_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    d = utils.default_cache_dir()
    # keyed by machine: another CPU never loads this one's native code
    assert d.startswith(str(tmp_path / "xdg" / "jaxcnn" / "xla-")) and len(d) > len(str(tmp_path))


def test_cli_second_start_loads_every_compiled_program_from_the_cache(tmp_path):
    """``python -m experiments.train`` caches its compiled programs by default; the same run
    started again compiles nothing new (no new cache entry) and gives the same result."""
    import json
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    cache = tmp_path / "cache"
    env = {
        **os.environ,
        "JAXCNN_COMPILATION_CACHE": str(cache),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }
    small = ["--config.epochs=1", "--config.num_train=128", "--config.progress=false"]
    results = []
    entries = []
    for i in range(2):
        wd = tmp_path / f"run{i}"
        r = subprocess.run(
            [sys.executable, "-m", "experiments.train", *small, "--workdir", str(wd)],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert r.returncode == 0, r.stderr
        entries.append(sorted(p.name for p in cache.iterdir()))
        results.append(json.loads((wd / "metrics.json").read_text())["final"]["test_accuracy"])
    assert len(entries[0]) >= 2, entries[0]  # at least the train and eval steps
    assert entries[1] == entries[0]
    assert results[1] == results[0]
