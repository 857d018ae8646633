"""ResNet-50 bfloat16 train throughput and MFU on one GPU: jaxcnn vs PyTorch AMP (~10 min).

    python -m experiments.benchmark_gpu --json runs/gpu_resnet50.json
    python -m experiments.benchmark_gpu --torch-python ../refvenv/bin/python --batch-size 256
    python -m experiments.benchmark_gpu --no-torch-compile --peak-tflops 989
    python -m experiments.benchmark_gpu --quick      # tiny ResNet-50 on CPU, a smoke test

jaxcnn: ``resnet50`` under the ``"bfloat16"`` precision policy (``jaxcnn.train.precision``:
bfloat16 compute, float32 parameters, BatchNorm statistics and loss), SGD with momentum, the
engine's jitted train step on the first device (``experiments.benchmark_steps.bench``, state
donated), batch ``--batch-size`` (256) of 224x224x3 random images, 1000 classes; the mean step
time over ``--steps`` steps after ``--warmup`` (the first compiles).
PyTorch: torchvision ``resnet50``, ``channels_last`` model and input, ``torch.autocast`` with
bfloat16, SGD with momentum, ``torch.compile`` unless ``--no-torch-compile`` (eager if it
fails), timed the same way between ``torch.cuda.synchronize`` calls.

Images/s = batch / step time. MFU = model FLOPs per step x steps/s / the device's peak dense
bfloat16 FLOP/s. Model FLOPs: 3 x (forward) for forward + backward, the forward of ResNet-50
being 4.09 G multiply-adds = 8.18 GFLOPs per 224x224 image (torchvision's published "4.09
GFLOPS" counts multiply-adds; scaled by the image area at other sizes), the same count for both
frameworks. XLA's own count of the compiled jaxcnn step (``cost_analysis``, including
BatchNorm, loss and optimizer) is printed beside it, and used for ``--quick``'s reduced net.
Peak: by ``device_kind`` from :data:`PEAK_TFLOPS` (H100 SXM and H200 989, H100 PCIe 756, A100
312, V100 125 (float16) TFLOP/s), or ``--peak-tflops``; no MFU on a device not listed.

PyTorch is optional, as in ``experiments.benchmark_train``: in-process if this Python has torch
and torchvision, else in a worker of ``--torch-python`` (default ``$JAXCNN_TORCH_PYTHON``), else
a one-line message and the jaxcnn row alone. ``--quick``: ResNet-50 with 8 stem filters at
32x32, batch 4, 2 steps on whatever device there is (PyTorch: the full torchvision net at
32x32, eager), so a test runs every path in seconds.
"""

from __future__ import annotations

import argparse
import sys
import time

from experiments.bench_common import (
    WorkerProxy,
    add_torch_python_args,
    cell,
    import_torch,
    machine_line,
    markdown_table,
    open_torch_side,
    serve,
    uptime,
    write_json,
)

# dense bfloat16 tensor-core peaks (V100: float16), TFLOP/s, by a substring of device_kind;
# the first match wins, so the more specific names come first
PEAK_TFLOPS = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("A100", 312.0),
    ("V100", 125.0),
)
RESNET50_MACS = 4.089e9  # multiply-adds of one 224x224 forward pass (torchvision's figure)


def peak_flops(device_kind: str, override_tflops: float | None = None) -> float | None:
    """Peak FLOP/s: ``override_tflops`` if given, else from :data:`PEAK_TFLOPS`, else None."""
    if override_tflops:
        return override_tflops * 1e12
    for key, tflops in PEAK_TFLOPS:
        if key.lower() in device_kind.lower():
            return tflops * 1e12
    return None


def resnet50_train_flops(batch: int, side: int) -> float:
    """Analytic FLOPs of one ResNet-50 train step: 3 x 2 x 4.09 G multiply-adds per image,
    scaled by the image area."""
    return 3 * 2 * RESNET50_MACS * (side / 224) ** 2 * batch


# ============================================================================== PyTorch side
class TorchAMP:
    """The PyTorch side (called directly, or in a worker through a ``WorkerProxy``)."""

    def hello(self) -> dict:
        found = import_torch()
        if found is None:
            raise ImportError("torch/torchvision not importable")
        torch, torchvision = found
        return {
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        }

    def run(self, batch: int, side: int, steps: int, warmup: int, compile: bool) -> dict:
        """Time torchvision ``resnet50`` train steps under bfloat16 autocast, channels_last."""
        import torch
        import torch.nn.functional as F
        import torchvision

        dev = "cuda" if torch.cuda.is_available() else "cpu"
        torch.manual_seed(0)
        model = torchvision.models.resnet50(num_classes=1000)
        model = model.to(dev, memory_format=torch.channels_last).train()
        params = sum(p.numel() for p in model.parameters())
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        x = torch.randn(batch, 3, side, side, device=dev).to(memory_format=torch.channels_last)
        y = torch.randint(0, 1000, (batch,), device=dev)
        sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
        compiled = None
        if compile:
            try:
                compiled = torch.compile(model)
            except Exception as e:  # no compiler backend here
                print(f"torch.compile unavailable ({e}); eager", file=sys.stderr)
        fwd = compiled or model

        def step():
            opt.zero_grad(set_to_none=True)
            with torch.autocast(dev, dtype=torch.bfloat16):
                loss = F.cross_entropy(fwd(x), y)
            loss.backward()
            opt.step()

        t0 = time.perf_counter()
        try:
            step()
        except Exception as e:  # torch.compile fails at the first call when it fails
            if compiled is None:
                raise
            print(f"torch.compile failed ({type(e).__name__}: {e}); eager", file=sys.stderr)
            compiled, fwd = None, model
            step()
        for _ in range(max(warmup - 1, 0)):
            step()
        sync()
        warm_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        dt = (time.perf_counter() - t0) / steps
        return {
            "framework": f"PyTorch {torch.__version__}"
            + (" torch.compile" if compiled is not None else " eager")
            + ", AMP bf16, channels_last",
            "model": "torchvision resnet50",
            "params": params,
            "device": torch.cuda.get_device_name(0) if dev == "cuda" else "cpu",
            "compile_s": warm_s,
            "step_ms": dt * 1e3,
            "images_per_s": batch / dt,
            "full_width": True,
        }


def torch_side(python: str | None):
    """``(side, versions)`` or ``(None, None)`` after printing why (see the docstring)."""
    local = TorchAMP() if import_torch() is not None else None
    return open_torch_side(local, python, "experiments.benchmark_gpu")


# ================================================================================= jaxcnn side
def jax_run(batch: int, side: int, steps: int, warmup: int, quick: bool) -> dict:
    """jaxcnn's ResNet-50 bfloat16 train step on one device (``benchmark_steps.bench``)."""
    import jax

    from experiments.benchmark_steps import bench
    from jaxcnn import models

    kwargs = {"num_filters": 8} if quick else {}
    r = bench(
        "resnet50",
        batch,
        side,
        precision="bfloat16",
        devices=1,
        steps=steps,
        warmup=warmup,
        num_classes=1000,
        model_kwargs=kwargs,
    )
    return {
        "framework": f"jaxcnn (jax {jax.__version__}), bf16 policy",
        "model": "jaxcnn resnet50" + (" (8 stem filters)" if quick else ""),
        "params": models.count_params("resnet50", (1, side, side, 3), **kwargs),
        "device": r["device_kind"],
        "compile_s": r["compile_s"],
        "step_ms": r["step_ms"],
        "images_per_s": r["images_per_s"],
        "xla_flops_per_step": r["flops_per_step"],
        "full_width": not quick,
    }


# ====================================================================================== driver
def add_mfu(row: dict, batch: int, side: int, peak: float | None) -> dict:
    """Model FLOPs per step (analytic for the full-width net, else XLA's count), achieved
    TFLOP/s and MFU (None without a peak)."""
    flops = resnet50_train_flops(batch, side) if row["full_width"] else row["xla_flops_per_step"]
    row["model_flops_per_step"] = flops
    row["tflops_per_s"] = flops / (row["step_ms"] / 1e3) / 1e12 if flops else None
    row["mfu"] = row["tflops_per_s"] * 1e12 / peak if (peak and flops) else None
    return row


def markdown(rows) -> str:
    head = ["framework", "params", "ms/step", "images/s", "TFLOP/s", "MFU"]
    cells = [
        [
            r["framework"],
            f"{r['params']:,}",
            cell(r["step_ms"], ".1f"),
            cell(r["images_per_s"], ".0f"),
            cell(r["tflops_per_s"], ".3g"),
            "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%",
        ]
        for r in rows
    ]
    return markdown_table(head, "lrrrrr", cells)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--steps", type=int, default=50, help="timed steps (default 50)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    p.add_argument("--peak-tflops", type=float, help="the device's peak bf16 TFLOP/s for MFU")
    p.add_argument("--no-torch-compile", action="store_true", help="PyTorch eager")
    add_torch_python_args(p)
    p.add_argument("--quick", action="store_true", help="tiny ResNet-50, 32x32, batch 4, 2 steps")
    p.add_argument("--json", help="also write the rows and settings as JSON here")
    return p.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.torch_worker:  # in the PyTorch Python: no jax here
        sys.exit(serve(TorchAMP()))
    if args.quick:
        args.batch_size, args.image_size, args.steps, args.warmup = 4, 32, 2, 1
        args.no_torch_compile = True
    import jax

    kind = jax.devices()[0].device_kind
    if jax.default_backend() != "gpu" and not args.quick:
        print(f"no GPU: JAX runs on {kind}", file=sys.stderr)
    side, versions = torch_side(args.torch_python)
    tv = versions or {}
    print(
        "<!-- "
        + machine_line(
            jax=jax.__version__, torch=tv.get("torch"), torchvision=tv.get("torchvision")
        )
        + " -->",
        flush=True,
    )
    peak = peak_flops(kind, args.peak_tflops)
    b, s = args.batch_size, args.image_size
    rows = [add_mfu(jax_run(b, s, args.steps, args.warmup, args.quick), b, s, peak)]
    print(f"<!-- jaxcnn done: {rows[0]['step_ms']:.1f} ms/step -->", file=sys.stderr, flush=True)
    try:
        if side is not None:
            r = side.run(
                batch=b,
                side=s,
                steps=args.steps,
                warmup=args.warmup,
                compile=not args.no_torch_compile,
            )
            r["xla_flops_per_step"] = None
            rows.append(add_mfu(r, b, s, peak))
    finally:
        if isinstance(side, WorkerProxy):
            side.close()

    def giga(v):
        return "-" if v is None else f"{v / 1e9:.4g}"

    print(
        f"<!-- ResNet-50 train step, batch {b}, {s}x{s}, on {kind}; mean of {args.steps} steps "
        f"after {args.warmup}; model GFLOPs/step {giga(rows[0]['model_flops_per_step'])} "
        f"(XLA's count {giga(rows[0]['xla_flops_per_step'])}); peak "
        f"{'-' if peak is None else f'{peak / 1e12:.0f}'} TFLOP/s; {uptime()} -->"
    )
    print(markdown(rows), flush=True)
    if args.json:
        meta = {
            "device_kind": kind,
            "batch_size": b,
            "image_size": s,
            "steps": args.steps,
            "warmup": args.warmup,
            "peak_flops": peak,
            "jax": jax.__version__,
            "torch": versions,
            "quick": args.quick,
        }
        write_json(args.json, meta, rows)
    return rows


if __name__ == "__main__":
    main()
