"""Data parallelism (8 forced CPU devices vs 1), multi-process training through
``jax.distributed`` on loopback, gradient accumulation, mixed precision, remat, and the fit
loop's scale-out keys.

XLA_FLAGS and ``jax.distributed`` must be set before JAX starts, so those checks run this file as
a script in fresh processes (``python tests/test_distributed.py dp8|mp ...``) and compare what
the workers write with a run in the pytest process.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcnn.layers import ConvBNAct, global_avg_pool
from jaxcnn.train import mesh as mesh_lib
from jaxcnn.train.precision import get_policy, init_dynamic_scale
from jaxcnn.train.remat import remat_blocks, saved_residual_bytes
from jaxcnn.train.state import create_train_state
from jaxcnn.train.steps import make_eval_step, make_train_step

sys.path.insert(0, os.path.dirname(__file__))
from loopback import ROOT, free_port, run_workers, worker_env  # noqa: E402

TOL = 1e-5


def flat_uniform(key, shape, dtype=jnp.float32):
    """He-uniform drawn as a 1-D vector and reshaped. (XLA:CPU takes seconds to compile
    ``jax.random`` draws of 4-D shapes under ``jax_threefry_partitionable``; 1-D is instant.)"""
    fan_in = int(np.prod(shape[:-1]))
    bound = float(np.sqrt(6.0 / fan_in))
    return jax.random.uniform(key, (int(np.prod(shape)),), dtype, -bound, bound).reshape(shape)


class TinyBNNet(nn.Module):
    """conv-BN-ReLU x2 (one strided), global pool, dropout, head: a BatchNorm model in ms.
    ``norm=False``: the same without BatchNorm (convs with bias)."""

    num_classes: int = 10
    dropout: float = 0.0
    norm: bool = True
    dtype: object = None
    param_dtype: object = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=flat_uniform)

        def cba(f, s, name):
            return ConvBNAct(
                f,
                3,
                s,
                norm=self.norm,
                use_bias=not self.norm,  # noqa
                name=name,
                **kw,
            )

        x = cba(8, 1, "stem")(x, train)
        x = cba(16, 2, "stage1")(x, train)
        x = nn.Dropout(self.dropout)(global_avg_pool(x), deterministic=not train)
        return nn.Dense(self.num_classes, name="head", **kw)(x)


def toy_data(n=64, size=12, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n).astype(np.int32)
    x = rng.normal(size=(n, size, size, 1)).astype(np.float32) + y[:, None, None, None] * 0.1
    return x, y


def train_run(dp, steps=2, batch_size=32, dropout=0.25, ckpt_dir=None, n=64):
    """Train TinyBNNet on toy data through ``dp`` (data-parallel) and return numpy results."""
    x, y = toy_data(n)
    model = TinyBNNet(dropout=dropout)
    tx = optax.sgd(0.1, momentum=0.9)
    state = dp.replicate(create_train_state(model, tx, (1, *x.shape[1:]), seed=0))
    step = make_train_step(mesh=dp)
    sums = None
    for i, batch in enumerate(
        dp.batches(x, y, batch_size, shuffle=True, seed=0, drop_remainder=True)
    ):
        if i == steps:
            break
        state, m = step(state, batch)
        sums = m if sums is None else jax.tree.map(jnp.add, sums, m)
    ev = make_eval_step(num_classes=10, mesh=dp)
    acc = None
    for batch in dp.batches(x[:-6], y[:-6], 16):  # 58 examples: last batch padded and masked
        e = ev(state, batch)
        acc = e if acc is None else jax.tree.map(jnp.add, acc, e)
    if ckpt_dir is not None:
        from jaxcnn.checkpoint import Checkpointer

        ckpt = Checkpointer(ckpt_dir, keep=2, keep_best=0)
        ckpt.save(int(state.step), state)
        ckpt.close()

    def flat(t):
        return {
            jax.tree_util.keystr(k): np.asarray(v)  # noqa: E731
            for k, v in jax.tree_util.tree_leaves_with_path(jax.device_get(t))
        }

    return {
        "params": flat(state.params),
        "batch_stats": flat(state.batch_stats),
        "train": {k: float(v) for k, v in jax.device_get(sums).items()},
        "eval": {k: float(v) for k, v in jax.device_get(acc).items() if k != "confusion"},
        "step": int(state.step),
    }


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


# -- workers (run as scripts) ---------------------------------------------------------------
def _save(path, res):
    np.savez(
        path,
        **{f"params{k}": v for k, v in res["params"].items()},
        **{f"stats{k}": v for k, v in res["batch_stats"].items()},
    )
    with open(str(path) + ".json", "w") as f:
        json.dump({k: res[k] for k in ("train", "eval", "step")}, f)


def _load(path):
    z = np.load(path)
    with open(str(path) + ".json") as f:
        meta = json.load(f)
    return {
        "params": {k[6:]: z[k] for k in z.files if k.startswith("params")},
        "batch_stats": {k[5:]: z[k] for k in z.files if k.startswith("stats")},
        **meta,
    }


def worker_dp8(out):
    assert jax.device_count() == 8, jax.devices()
    dp8 = mesh_lib.DataParallel.create()
    r8 = train_run(dp8)
    errors = {}
    try:
        mesh_lib.setup({"batch_size": 12})
    except ValueError as e:
        errors["setup"] = str(e)
    try:
        make_train_step(mesh=dp8)(None, {"image": np.zeros((12, 12, 12, 1), np.float32)})
    except ValueError as e:
        errors["step"] = str(e)
    from jaxcnn.tasks import Classification
    from jaxcnn.train import Trainer

    try:  # fails in setup, before loading data or compiling anything
        cfg = {"dataset": "no_such_dataset", "batch_size": 12}
        Trainer(Classification(), cfg, out + "_fit").run()
    except ValueError as e:
        errors["fit"] = str(e)
    batch = next(dp8.batches(*toy_data(), 32))
    shards = len(batch["image"].addressable_shards)
    _save(out + "_8.npz", r8)
    with open(out + "_errors.json", "w") as f:
        json.dump({"errors": errors, "shards": shards}, f)


def worker_mp(pid, nproc, port, workdir):
    jax.config.update("jax_num_cpu_devices", 2)
    assert mesh_lib.initialize_distributed(
        f"127.0.0.1:{port}", nproc, pid, initialization_timeout=60
    )
    mesh_lib.quiet_non_main_processes()
    dp = mesh_lib.setup({"batch_size": 32, "eval_batch_size": 16})
    assert dp.num_devices == 2 * nproc and jax.local_device_count() == 2
    res = train_run(dp, ckpt_dir=os.path.join(workdir, "checkpoints"))
    if mesh_lib.is_main_process():
        _save(os.path.join(workdir, "mp.npz"), res)
        print("process 0 wrote results")
    print(f"process {pid} rows {dp.process_rows(32)} done", flush=True)


# -- tests ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference():
    """The single-device run both the 8-device and the 2-process runs must reproduce."""
    return train_run(mesh_lib.DataParallel.create(1))


def test_data_parallel_8_devices_matches_1_device(tmp_path, reference):
    """2 steps of a conv+BN(+dropout) net, global batch 32, on 8 forced CPU devices and on 1:
    params, BN statistics and metrics agree to 1e-5 (synced BN: global-batch statistics)."""
    out = str(tmp_path / "dp")
    proc = subprocess.run(
        [sys.executable, __file__, "dp8", out],
        cwd=ROOT,
        timeout=240,
        env=worker_env(XLA_FLAGS="--xla_force_host_platform_device_count=8"),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r8, r1 = _load(out + "_8.npz"), reference
    assert r8["step"] == r1["step"] == 2
    assert max_diff(r8["params"], r1["params"]) < TOL
    assert max_diff(r8["batch_stats"], r1["batch_stats"]) < TOL
    # the statistics moved (training mode) and are the global ones
    assert any(np.any(v != 0) for k, v in r8["batch_stats"].items() if "mean" in k)
    for k in ("loss_sum", "correct", "count"):
        assert abs(r8["train"][k] - r1["train"][k]) < 1e-4 * max(1, abs(r1["train"][k]))
        assert abs(r8["eval"][k] - r1["eval"][k]) < 1e-4 * max(1, abs(r1["eval"][k]))
    assert r8["eval"]["count"] == 58  # padded rows masked out
    with open(out + "_errors.json") as f:
        info = json.load(f)
    assert info["shards"] == 8
    assert "batch_size=12 does not divide by the 8 devices" in info["errors"]["setup"]
    assert "12 does not divide by the 8 devices" in info["errors"]["step"]
    assert "batch_size=12 does not divide by the 8 devices" in info["errors"]["fit"]


@pytest.mark.multiprocess
def test_two_processes_match_single_process(tmp_path, reference):
    """2 processes x 2 CPU devices on loopback through jax.distributed (gloo collectives), each
    loading only its half of every batch: same result as one process to 1e-5, one checkpoint."""
    port = free_port()
    cmds = [
        [sys.executable, __file__, "mp", str(pid), "2", str(port), str(tmp_path)]
        for pid in range(2)
    ]
    codes, text = run_workers(cmds, tmp_path)
    assert codes == [0, 0], "\n----\n".join(t[-3000:] for t in text)
    assert "process 0 wrote results" in text[0] and "wrote results" not in text[1]
    assert "rows slice(0, 16" in text[0] and "rows slice(16, 32" in text[1]

    ref = reference
    mp = _load(tmp_path / "mp.npz")
    assert mp["step"] == ref["step"] == 2
    assert max_diff(mp["params"], ref["params"]) < TOL
    assert max_diff(mp["batch_stats"], ref["batch_stats"]) < TOL
    assert abs(mp["eval"]["correct"] - ref["eval"]["correct"]) < 1e-4
    assert mp["eval"]["count"] == ref["eval"]["count"] == 58

    ckpt_dir = tmp_path / "checkpoints"
    assert sorted(os.listdir(ckpt_dir)) == ["2"], os.listdir(ckpt_dir)  # one checkpoint
    from jaxcnn.checkpoint import Checkpointer

    x, _ = toy_data()
    template = create_train_state(TinyBNNet(), optax.sgd(0.1, momentum=0.9), (1, *x.shape[1:]))
    restored, step, _ = Checkpointer(ckpt_dir, keep_best=0).restore(template)
    assert step == 2
    leaves = {
        jax.tree_util.keystr(k): np.asarray(v)
        for k, v in jax.tree_util.tree_leaves_with_path(restored.params)
    }
    assert max_diff(leaves, ref["params"]) < TOL


def test_setup_checks_batch_sizes():
    dp = mesh_lib.setup({"batch_size": 64, "eval_batch_size": 256})
    assert dp.num_devices == jax.device_count() and dp.mesh.axis_names == ("data",)
    mesh, data, replicated = dp  # unpacks as a tuple
    assert (
        data.spec == jax.sharding.PartitionSpec("data")
        and replicated.spec == jax.sharding.PartitionSpec()
    )
    with pytest.raises(ValueError, match="batch_size=10 does not divide by the 4 devices"):
        mesh_lib.check_batch_size(10, 4)
    with pytest.raises(ValueError, match="grad_accum_steps=3"):
        mesh_lib.setup({"batch_size": 64, "grad_accum_steps": 3})
    with pytest.raises(ValueError, match="devices are present"):
        mesh_lib.make_mesh(jax.device_count() + 1)
    assert mesh_lib.initialize_distributed() is False  # no coordinator: single process
    with pytest.raises(ValueError, match="JAX_PROCESS_ID"):
        mesh_lib.initialize_distributed("127.0.0.1:1", num_processes=2)


# -- gradient accumulation ------------------------------------------------------------------
def test_grad_accumulation_equals_big_batch():
    """k=4 micro-batches of 8 give the same update as one batch of 32 for a model without
    BatchNorm, with a mask whose zeros fall unevenly on the micro-batches; 2 Adam steps."""
    model = TinyBNNet(norm=False)
    x, y = toy_data(64)
    mask = (np.arange(32) < 29).astype(np.float32)  # 3 padded rows, all in micro-batches 1..3
    s0 = create_train_state(model, optax.adam(1e-2), (1, *x.shape[1:]))
    one = make_train_step(donate=False)
    acc = make_train_step(donate=False, grad_accum_steps=4)
    a, b = s0, s0
    for i in range(2):
        batch = {"image": x[32 * i : 32 * (i + 1)], "label": y[32 * i : 32 * (i + 1)], "mask": mask}
        a, ma = one(a, batch)
        b, mb = acc(b, batch)
    chex.assert_trees_all_close(a.params, b.params, atol=TOL, rtol=0)
    chex.assert_trees_all_close(ma, mb, atol=1e-4, rtol=1e-6)
    assert float(mb["count"]) == 29
    moved = jnp.max(jnp.abs(b.params["head"]["kernel"] - s0.params["head"]["kernel"]))
    assert float(moved) > 1e-3  # the update really happened
    with pytest.raises(ValueError, match="grad_accum_steps"):
        make_train_step(grad_accum_steps=0)
    with pytest.raises(ValueError, match="does not split into grad_accum_steps=3"):
        make_train_step(grad_accum_steps=3)(s0, {"image": x[:32], "label": y[:32]})


class Block(nn.Module):
    features: int = 8

    @nn.compact
    def __call__(self, x, train: bool = False):
        y = ConvBNAct(self.features, 3, name="conv1", kernel_init=flat_uniform)(x, train)
        y = ConvBNAct(self.features, 3, act=None, name="conv2", kernel_init=flat_uniform)(y, train)
        return nn.relu(x + y)


class Stack(nn.Module):
    """Stem + 3 residual blocks of ``block_cls`` (the field remat_blocks wraps) + head."""

    block_cls: type = Block

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = ConvBNAct(8, 3, name="stem", kernel_init=flat_uniform)(x, train)
        for i in range(3):
            x = self.block_cls(name=f"block{i}")(x, train)
        return nn.Dense(10, name="head")(global_avg_pool(x))


@pytest.fixture(scope="module")
def bn_setup():
    """A residual BatchNorm model, a batch of 16 and the plain step's result (shared)."""
    x, y = toy_data(16, size=8)
    batch = {"image": x, "label": y}
    s0 = create_train_state(Stack(), optax.sgd(0.1), (1, 8, 8, 1))
    step = make_train_step(donate=False)
    return s0, batch, step, step(s0, batch)[0]


def test_grad_accumulation_batchnorm_caveat(bn_setup):
    """With BatchNorm, k>1 normalises each micro-batch with its own statistics and so differs
    from the big batch (documented caveat); the running statistics are still updated."""
    s0, batch, _, big = bn_setup
    k4, m4 = make_train_step(donate=False, grad_accum_steps=4)(s0, batch)
    diff = jax.tree.map(lambda p, q: float(jnp.max(jnp.abs(p - q))), big.params, k4.params)
    assert max(jax.tree.leaves(diff)) > 1e-4
    assert float(m4["count"]) == 16
    moved = jax.tree.map(
        lambda a, b: float(jnp.max(jnp.abs(a - b))), k4.batch_stats, s0.batch_stats
    )
    assert min(jax.tree.leaves(moved)) > 0
    chex.assert_tree_all_finite(k4.batch_stats)


REMAT_IN_JAXPR = re.compile(r"\b(remat\w*|checkpoint)\[")


def test_remat_same_result(bn_setup):
    """remat='blocks' (nn.remat around every block, ``train`` made static) gives the plain
    step's update with the same parameter names; 'blocks' and 'dots' (whole model under
    jax.checkpoint) really put a checkpoint in the program. (Peak memory is measured by
    experiments/benchmark_steps.py --remat-compare: XLA:CPU's memory analysis of small models
    shows no saving, so it is not asserted here.)"""
    s0, batch, step, a = bn_setup
    blocks = create_train_state(remat_blocks(Stack()), optax.sgd(0.1), (1, 8, 8, 1))
    chex.assert_trees_all_equal(s0.params, blocks.params)  # same names and values
    b, _ = step(blocks, batch)
    chex.assert_trees_all_close(a.params, b.params, atol=1e-6)
    chex.assert_trees_all_close(a.batch_stats, b.batch_stats, atol=1e-6)
    assert REMAT_IN_JAXPR.search(str(jax.make_jaxpr(step)(blocks, batch)))
    assert not REMAT_IN_JAXPR.search(str(jax.make_jaxpr(step)(s0, batch)))
    # what the forward pass keeps for the backward pass: every conv/BN/ReLU output without
    # remat, only the block inputs with per-block remat
    x = jnp.asarray(batch["image"])
    full, kept = (
        saved_residual_bytes(m, s0.variables, x) for m in (Stack(), remat_blocks(Stack()))
    )
    assert kept < 0.5 * full, (kept, full)
    dots = make_train_step(donate=False, remat="dots")
    assert REMAT_IN_JAXPR.search(str(jax.make_jaxpr(dots)(s0, batch)))
    with pytest.raises(ValueError, match="remat='bogus'"):
        make_train_step(remat="bogus")(s0, batch)
    with pytest.raises(ValueError, match="block_cls"):
        remat_blocks(TinyBNNet())


# -- mixed precision ------------------------------------------------------------------------
def test_bfloat16_computes_in_bf16_keeps_float32_state():
    """policy 'bfloat16': convolutions and the dense head run on bfloat16 operands (jaxpr),
    while parameters, gradients/updates, optimizer state and BatchNorm statistics stay float32."""
    policy = get_policy("bfloat16")
    assert get_policy("float32").model_kwargs == {} and not policy.loss_scaling
    x, y = toy_data(8, size=8)
    batch = {"image": x, "label": y}
    s0 = create_train_state(TinyBNNet(**policy.model_kwargs), optax.adam(1e-3), (1, 8, 8, 1))
    step = make_train_step(donate=False)
    text = str(jax.make_jaxpr(step)(s0, batch))
    convs = [ln for ln in text.splitlines() if "= conv_general_dilated[" in ln]
    dots = [ln for ln in text.splitlines() if "= dot_general[" in ln]
    assert convs and dots
    assert all(":bf16[" in ln.split("=")[0] for ln in convs + dots), convs + dots
    out, metrics = jax.eval_shape(step, s0, batch)
    for tree in (out.params, out.batch_stats, out.opt_state):
        assert {
            a.dtype for a in jax.tree.leaves(tree) if jnp.issubdtype(a.dtype, jnp.floating)
        } == {jnp.dtype(jnp.float32)}
    assert metrics["loss_sum"].dtype == jnp.float32
    with pytest.raises(ValueError, match="precision='float8'"):
        get_policy("float8")


def test_float16_loss_scaling_skips_non_finite_step():
    """float16: a step whose gradients overflow leaves params, optimizer state and BN stats
    untouched and halves the loss scale; a finite step updates and counts towards growth."""
    policy = get_policy("float16")
    assert policy.loss_scaling
    x, y = toy_data(8, size=8)
    s0 = create_train_state(
        TinyBNNet(**policy.model_kwargs),
        optax.adam(1e-2),
        (1, 8, 8, 1),
        dynamic_scale=init_dynamic_scale(policy, initial_scale=2.0**10),
    )
    step = make_train_step(donate=False)
    bad = x.copy()
    bad[0, 0, 0, 0] = np.inf
    s1, _ = step(s0, {"image": bad, "label": y})
    chex.assert_trees_all_equal(s1.params, s0.params)
    chex.assert_trees_all_equal(s1.batch_stats, s0.batch_stats)
    chex.assert_trees_all_equal(s1.opt_state, s0.opt_state)
    assert float(s1.dynamic_scale.scale) == 2.0**9 and int(s1.dynamic_scale.fin_steps) == 0
    s2, m2 = step(s1, {"image": x, "label": y})
    chex.assert_tree_all_finite((s2.params, s2.batch_stats, m2))
    assert float(jnp.max(jnp.abs(s2.params["head"]["kernel"] - s0.params["head"]["kernel"]))) > 0
    assert float(s2.dynamic_scale.scale) == 2.0**9 and int(s2.dynamic_scale.fin_steps) == 1
    assert s2.params["head"]["kernel"].dtype == jnp.float32
    assert step._cache_size() == 1


# -- the training engine ----------------------------------------------------------------------
def test_trainer_with_scale_out_keys(tmp_path):
    """The classification task with precision/grad_accum_steps/remat/num_devices: runs with one
    compilation and float32 state; a bad key value fails before any data is loaded."""
    from jaxcnn.tasks import Classification
    from jaxcnn.train import Trainer

    cfg = dict(
        model="lenet5_modern",
        dataset="digits",
        num_train=128,
        validation_split=64,
        batch_size=32,
        eval_batch_size=64,
        epochs=1,
        learning_rate=3e-3,
        precision="bfloat16",
        grad_accum_steps=2,
        remat="dots",
        num_devices=1,
        progress=False,
    )

    def fit(c, workdir):
        return Trainer(Classification(), c, workdir).run()

    res = fit(cfg, str(tmp_path))
    assert res["compilations"]["train_step"] == 1 and res["steps"] == 4
    assert np.isfinite(res["test_loss"]) and 0 <= res["test_accuracy"] <= 1
    assert res["state"].params["head"]["kernel"].dtype == jnp.float32
    with open(tmp_path / "metrics.json") as f:
        assert json.load(f)["config"]["precision"] == "bfloat16"
    with pytest.raises(ValueError, match="does not divide into grad_accum_steps=3"):
        fit({**cfg, "grad_accum_steps": 3, "dataset": "nope"}, str(tmp_path / "x"))
    with pytest.raises(ValueError, match="'remat': expected one of .* got 'sometimes'"):
        fit({**cfg, "remat": "sometimes", "dataset": "nope"}, str(tmp_path / "x"))
    with pytest.raises(ValueError, match="devices are present"):
        fit({**cfg, "num_devices": jax.device_count() + 1, "dataset": "nope"}, str(tmp_path / "x"))


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "dp8":
        worker_dp8(sys.argv[2])
    elif mode == "mp":
        worker_mp(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    else:
        raise SystemExit(f"unknown mode {mode}")
