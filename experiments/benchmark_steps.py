"""Training throughput (steps/s, images/s) and compiled memory of the data-parallel train step.

    python -m experiments.benchmark_steps --model resnet50 --batch-size 128 --precision bfloat16
    python -m experiments.benchmark_steps --devices 8 --grad-accum 4 --remat blocks
    python -m experiments.benchmark_steps --remat-compare --model resnet50 --batch-size 128
    python -m experiments.benchmark_steps --quick          # smoke test: a tiny ResNet on CPU

Uses every device present (``--devices N``: the first N) through the same mesh and jit step as
the training engine (``jaxcnn.train.Trainer``); ``--batch-size`` is the global batch. For each
configuration it reports XLA's compiled memory analysis (temp = activations and scratch,
argument, output bytes; these do not depend on machine load), the device's peak memory where the
backend reports it, and the mean step time after warm-up, and the bytes the forward pass keeps
for the backward pass (``kept``: JAX's residuals, what per-block remat cuts; for whole-model
remat, "dots"/"full", the backward pass re-creates them, so the peak does not fall with it),
and XLA's count of FLOPs per step (``flops_per_step`` in the JSON; a multiply-add counts 2).
``--remat-compare`` runs the same model without remat and with each remat mode (``none, blocks,
dots, full``). ``--json PATH`` writes the results.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np
import optax

from experiments.bench_common import compiled_flops
from jaxcnn import models
from jaxcnn.train.mesh import DataParallel
from jaxcnn.train.precision import get_policy, init_dynamic_scale
from jaxcnn.train.remat import check_remat, remat_blocks, saved_residual_bytes
from jaxcnn.train.state import create_train_state
from jaxcnn.train.steps import make_train_step

MB = 2**20


def bench(
    model_name: str,
    batch_size: int,
    image_size: int,
    precision: str = "float32",
    remat: str | None = None,
    grad_accum: int = 1,
    devices: int | None = None,
    steps: int = 10,
    warmup: int = 2,
    num_classes: int = 1000,
    model_kwargs: dict | None = None,
    run: bool = True,
) -> dict:
    """Compile (and unless ``run=False`` time) one train step configuration."""
    dp = DataParallel.create(devices)
    dp.check_batch_size(batch_size // grad_accum, "micro-batch size")
    policy, remat = get_policy(precision), check_remat(remat)
    info = models.model_info(model_name)
    channels = (model_kwargs or {}).get("in_channels", info.input_size[2])
    model = models.create_model(
        model_name, num_classes=num_classes, **{**policy.model_kwargs, **(model_kwargs or {})}
    )
    if remat == "blocks":
        model = remat_blocks(model)
    shape = (batch_size, image_size, image_size, channels)
    state = dp.replicate(
        create_train_state(
            model,
            optax.sgd(0.1, momentum=0.9),
            (1, *shape[1:]),
            dynamic_scale=init_dynamic_scale(policy),
        )
    )
    rng = np.random.default_rng(0)
    batch = dp.shard(
        {
            "image": rng.normal(size=shape).astype(np.float32),
            "label": rng.integers(0, num_classes, batch_size).astype(np.int32),
        }
    )
    step = make_train_step(
        mesh=dp, grad_accum_steps=grad_accum, remat=None if remat == "blocks" else remat
    )
    kept = saved_residual_bytes(
        model,
        jax.device_get(state.variables),
        jax.ShapeDtypeStruct((batch_size // grad_accum, *shape[1:]), np.float32),
        remat,
    )
    t0 = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    ma = compiled.memory_analysis()
    res = {
        "model": model_name,
        "batch_size": batch_size,
        "image_size": image_size,
        "precision": policy.name,
        "remat": remat or "none",
        "grad_accum": grad_accum,
        "devices": dp.num_devices,
        "platform": jax.devices()[0].platform,
        "device_kind": jax.devices()[0].device_kind,
        "compile_s": round(time.perf_counter() - t0, 2),
        "kept_for_backward_mb": kept / MB,
        "temp_mb": ma.temp_size_in_bytes / MB if ma else None,
        "argument_mb": ma.argument_size_in_bytes / MB if ma else None,
        "output_mb": ma.output_size_in_bytes / MB if ma else None,
        "flops_per_step": compiled_flops(compiled),
    }
    if not run:
        return res
    for _ in range(warmup):
        state, m = compiled(state, batch)
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for _ in range(steps):
        state, m = compiled(state, batch)
    jax.block_until_ready((state, m))
    dt = (time.perf_counter() - t0) / steps
    res.update(step_ms=dt * 1e3, steps_per_s=1 / dt, images_per_s=batch_size / dt)
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:  # since the process started (the max over the runs so far)
        res["device_peak_mb"] = stats["peak_bytes_in_use"] / MB
    return res


def fmt(r: dict) -> str:
    s = (
        f"{r['model']:>12s} b={r['batch_size']:<4d} {r['image_size']}px {r['precision']:>8s} "
        f"remat={r['remat']:<6s} accum={r['grad_accum']} on {r['devices']}x{r['platform']}: "
        f"kept {r['kept_for_backward_mb']:8.1f} MB  temp {r['temp_mb']:8.1f} MB  "
        f"args {r['argument_mb']:7.1f} MB  "
        f"out {r['output_mb']:7.1f} MB"
    )
    if "step_ms" in r:
        s += (
            f"  | {r['step_ms']:8.2f} ms/step  {r['steps_per_s']:7.2f} steps/s  "
            f"{r['images_per_s']:8.1f} img/s"
        )
    return s


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet50")
    p.add_argument("--batch-size", type=int, default=64, help="global batch")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--precision", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--devices", type=int, default=None, help="devices of the data axis (all)")
    p.add_argument("--remat", default="none", choices=["none", "blocks", "dots", "full"])
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument(
        "--remat-compare",
        action="store_true",
        help="the same model without remat and with each remat mode",
    )
    p.add_argument("--compile-only", action="store_true", help="memory analysis only")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: resnet18 (8 filters, CIFAR stem) at 32px, batch 16, 2 steps",
    )
    p.add_argument("--json", default=None, help="write the results here")
    a = p.parse_args(argv)
    kwargs = {}
    if a.quick:
        a.model, a.image_size, a.num_classes, a.steps, a.warmup = "resnet18", 32, 10, 2, 1
        a.batch_size = 16 if a.batch_size == 64 else a.batch_size
        kwargs = {"num_filters": 8, "stem_type": "cifar"}
    print(
        f"{jax.device_count()} device(s): {jax.devices()[0].device_kind}; "
        f"using {a.devices or jax.device_count()}",
        flush=True,
    )
    modes = ["none", "blocks", "dots", "full"] if a.remat_compare else [a.remat]
    results = []
    for mode in modes:
        r = bench(
            a.model,
            a.batch_size,
            a.image_size,
            a.precision,
            mode,
            a.grad_accum,
            a.devices,
            a.steps,
            a.warmup,
            a.num_classes,
            kwargs,
            not a.compile_only,
        )
        results.append(r)
        print(fmt(r), flush=True)
    if a.remat_compare and results[0]["temp_mb"]:
        base = results[0]
        for r in results[1:]:
            line = f"remat={r['remat']}: temp memory x{r['temp_mb'] / base['temp_mb']:.2f}"
            if "step_ms" in r:
                line += f", step time x{r['step_ms'] / base['step_ms']:.2f}"
            print(line + " (vs no remat)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
