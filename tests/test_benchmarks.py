"""Smoke tests of experiments/benchmark_train.py and experiments/benchmark_gpu.py (--quick), and
benchmark_conv.py's conditional wrapper (--impl cond).

jaxcnn's venv has no PyTorch, so the paired runs take the jaxcnn-only path here; a fake PyTorch
side (the interface of ``TorchTrain``) checks the pairing, the table and the parameter-count
check. ``JAXCNN_TORCH_PYTHON`` (a Python with torch and torchvision) and ``-m slow`` also run
the real PyTorch side through the worker protocol.
"""

import json
import os

import pytest

from experiments import bench_common, benchmark_gpu, benchmark_train

TORCH_PYTHON = os.environ.get("JAXCNN_TORCH_PYTHON")


@pytest.fixture
def no_torch(monkeypatch):
    """This Python without PyTorch, and no other Python to run it in."""
    monkeypatch.setattr(benchmark_train, "import_torch", lambda: None)
    monkeypatch.setattr(benchmark_gpu, "import_torch", lambda: None)
    monkeypatch.delenv("JAXCNN_TORCH_PYTHON", raising=False)


class FakeTorch:
    """Stands for the PyTorch side: ``params`` is what its ``setup`` reports."""

    def __init__(self, params=None):
        self.n, self.steps = params, 0

    def hello(self, threads=None, device="cpu"):
        return {"torch": "0.fake", "torchvision": "0.fake", "threads": 1, "device": device}

    def setup(self, spec, compile=False, warmup=2):
        return self.n if self.n is not None else benchmark_train.jax_params(spec)

    def step(self):
        self.steps += 1
        return 0.5


def test_train_without_torch_prints_message_and_jaxcnn_column(no_torch, tmp_path, capsys):
    path = tmp_path / "train.json"
    rows = benchmark_train.main(["--quick", "--models", "unet_small", "--json", str(path)])
    out = capsys.readouterr().out
    assert bench_common.TORCH_ABSENT in out
    assert "| model | batch | input | jaxcnn s/step | PyTorch s/step" in out
    assert "| `unet_small` | 2 | 16x16x1 |" in out
    (row,) = rows
    assert row["model"] == "unet_small" and row["params"] == 121_123
    assert row["jax_s"] > 0 and len(row["jax_times"]) == 2 and all(t > 0 for t in row["jax_times"])
    assert row["torch_s"] is None and row["ratio"] is None
    saved = json.loads(path.read_text())
    assert saved["rows"][0]["jax_s"] == row["jax_s"] and saved["meta"]["torch"] is None
    assert "load average" in saved["meta"]["load_before"]


def test_train_pairs_steps_and_reports_ratio(monkeypatch, capsys):
    fake = FakeTorch()
    monkeypatch.setattr(benchmark_train, "torch_side", lambda args, device: (fake, fake.hello()))
    (row,) = benchmark_train.main(["--quick", "--models", "unet_small", "--steps", "3"])
    assert fake.steps == 3 and len(row["jax_times"]) == 3
    assert row["torch_s"] == 0.5 and row["ratio"] == pytest.approx(0.5 / row["jax_s"])
    assert row["params_torch"] == row["params"] == 121_123
    out = capsys.readouterr().out
    assert "unet_small: parameters jaxcnn 121,123, PyTorch 121,123" in out
    assert f"| {row['ratio']:.2f} | 121,123 |" in out


def test_train_parameter_mismatch_raises(monkeypatch):
    fake = FakeTorch(params=121_124)
    monkeypatch.setattr(benchmark_train, "torch_side", lambda args, device: (fake, fake.hello()))
    with pytest.raises(RuntimeError, match="not the same network"):
        benchmark_train.main(["--quick", "--models", "unet_small"])
    with pytest.raises(RuntimeError, match="121,123 parameters"):
        benchmark_train.check_params("unet_small", 121_123, 121_124)
    benchmark_train.check_params("unet_small", 121_123, None)  # no PyTorch: nothing to compare


def test_train_unknown_model_is_refused():
    with pytest.raises(SystemExit, match="unknown model"):
        benchmark_train.model_specs(["resnet18_cifar"], quick=True)


def test_gpu_quick_without_torch(no_torch, tmp_path, capsys):
    path = tmp_path / "gpu.json"
    rows = benchmark_gpu.main(["--quick", "--peak-tflops", "1", "--json", str(path)])
    out = capsys.readouterr().out
    assert bench_common.TORCH_ABSENT in out
    assert "| framework | params | ms/step | images/s | TFLOP/s | MFU |" in out
    (row,) = rows
    assert row["step_ms"] > 0 and row["images_per_s"] == pytest.approx(4e3 / row["step_ms"])
    # the reduced net: MFU from XLA's count of the compiled step against the 1 TFLOP/s given
    assert (
        row["xla_flops_per_step"] > 0 and row["model_flops_per_step"] == row["xla_flops_per_step"]
    )
    assert row["mfu"] == pytest.approx(row["tflops_per_s"])
    assert f"| {100 * row['mfu']:.1f}% |" in out
    saved = json.loads(path.read_text())
    assert saved["meta"]["batch_size"] == 4 and saved["meta"]["image_size"] == 32
    assert saved["rows"][0]["step_ms"] == row["step_ms"]


def test_gpu_peak_table_and_analytic_flops():
    assert benchmark_gpu.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert benchmark_gpu.peak_flops("NVIDIA H100 PCIe") == 756e12
    assert benchmark_gpu.peak_flops("NVIDIA H200") == 989e12
    assert benchmark_gpu.peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert benchmark_gpu.peak_flops("cpu") is None
    assert benchmark_gpu.peak_flops("cpu", 2.5) == 2.5e12
    # 3 x (2 x 4.09 G multiply-adds) per 224x224 image
    assert benchmark_gpu.resnet50_train_flops(256, 224) == pytest.approx(256 * 24.534e9)
    assert benchmark_gpu.resnet50_train_flops(1, 112) == pytest.approx(24.534e9 / 4)


@pytest.mark.slow  # ~20 s: PyTorch builds the six full-size nets to count their parameters
@pytest.mark.skipif(not TORCH_PYTHON, reason="set JAXCNN_TORCH_PYTHON to a Python with torch")
def test_train_with_torch_worker(capsys):
    benchmark_train.main(["--params-only", "--torch-python", TORCH_PYTHON])
    out = capsys.readouterr().out
    for name in benchmark_train.MODELS:  # the full-size pairs are the same networks
        assert f"{name}: parameters jaxcnn " in out
    assert "PyTorch -" not in out
    (row,) = benchmark_train.main(
        ["--quick", "--models", "unet_small", "--torch-python", TORCH_PYTHON]
    )
    assert row["torch_s"] > 0 and row["ratio"] > 0 and row["params_torch"] == 121_123


def test_worker_without_torch_gives_the_message(no_torch, capsys):
    """A --torch-python without torch (here: this Python, in a real worker process)."""
    import sys

    args = benchmark_train.parse_args(["--torch-python", sys.executable])
    assert benchmark_train.torch_side(args, "cpu") == (None, None)
    out = capsys.readouterr().out
    assert out.startswith(bench_common.TORCH_ABSENT) and "not importable" in out


def test_worker_reports_errors_and_exit():
    """The line protocol: a method's exception comes back as WorkerError; a dead worker as
    RuntimeError (run with this Python: the worker needs no torch to start)."""
    import sys

    w = bench_common.WorkerProxy(sys.executable, "experiments.benchmark_train", ["--torch-worker"])
    try:
        with pytest.raises(bench_common.WorkerError, match="no method"):
            w.call("_private")
        with pytest.raises(bench_common.WorkerError, match="no method"):
            w.nonexistent()
    finally:
        w.close()
    with pytest.raises(RuntimeError, match="exited"):
        w.call("hello")


@pytest.mark.slow  # two compiled runs of a small ViT on the engine (~40 s idle)
def test_benchmark_recipes_quick_reports_both_variants(tmp_path, capsys):
    from experiments import benchmark_recipes as br

    out = tmp_path / "recipes.json"
    rows = br.main(
        [
            "--quick",
            "--configs",
            "vit_s16_imagenet",
            "--steps",
            "2",
            "--batch-size",
            "8",
            "--workers",
            "0",
            "--json",
            str(out),
        ]
    )
    assert [(r["config"], r["variant"]) for r in rows] == [
        ("vit_s16_imagenet", "plain"),
        ("vit_s16_imagenet", "recipe"),
    ]
    for r in rows:
        assert r["s_per_step"] > 0 and 0 <= r["data_wait_fraction"] < 1, r
        assert r["compilations"] == 1
    assert json.loads(out.read_text())["rows"] == rows
    assert "| `vit_s16_imagenet` | `vit_s_16`, 32x32, 8 |" in capsys.readouterr().out


def test_benchmark_recipes_plain_variant_and_bad_names():
    from experiments import benchmark_recipes as br

    # "plain" switches off every augmentation the recipe sets, and nothing else
    recipe = br.recipe_config("vit_s16_imagenet", 8, 2, 0, quick=True)
    plain = {**recipe, **br.plain_overrides()}
    assert recipe["mixup_alpha"] > 0 and recipe["augment_policy"] == "randaugment"
    assert plain["mixup_alpha"] == plain["cutmix_alpha"] == plain["random_erasing"] == 0
    assert plain["augment_policy"] == "none"
    assert {k for k in recipe if recipe[k] != plain[k]} <= set(br.plain_overrides())
    with pytest.raises(SystemExit):
        br.main(["--configs", "resnet51_imagenet"])


def test_conv_in_cond_puts_the_op_in_a_conditional_with_the_same_values():
    """benchmark_conv --impl cond: the op runs as one branch of a lax.cond picked at run time
    (kept by XLA), giving the plain op's values; other impls leave the op as it is."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from experiments import benchmark_conv

    def f(x, w):
        return jnp.tanh(x) * w

    x, w = jnp.arange(6.0).reshape(2, 3), jnp.full((3,), 0.5)
    wrapped = benchmark_conv.in_cond(f, "cond")
    assert "cond[" in str(jax.make_jaxpr(wrapped)(x, w))
    np.testing.assert_allclose(jax.jit(wrapped)(x, w), f(x, w), rtol=1e-6)
    assert benchmark_conv.in_cond(f, "xla") is f
