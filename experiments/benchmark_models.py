"""Benchmark one model per family on this machine: parameters, FLOPs, compile time and forward
time per image, printed as a Markdown table (the "which model should I choose" comparison).

    python -m experiments.benchmark_models                      # one model per family
    python -m experiments.benchmark_models --models resnet50,vit_b_16 --json out/bench.json
    python -m experiments.benchmark_models --all                # every registered model
    python -m experiments.benchmark_models --quick              # smoke test, seconds
    ../tvenv/bin/python experiments/benchmark_models.py --torch   # torchvision equivalents

Columns: exact parameter count; GFLOPs of the forward pass at batch 1 from XLA's cost analysis
of the compiled program (one multiply-add counts 2 FLOPs, so papers' "FLOPs" -- usually
multiply-adds -- are about half); compile time of the batch-1 forward (lowering + XLA
compilation); forward milliseconds per image at batch 1 and batch 8: the median of
``--repeats`` timed runs of the jitted eval forward (``jax.block_until_ready``) after
``--warmup`` untimed ones, divided by the batch size. Inputs are each model's default size
(``model_info(name).input_size``) unless ``--size`` is given. Weights are random (NumPy draws
shaped by ``jax.eval_shape``: no initialiser is compiled); speed does not depend on them.

``--torch`` runs the same measurement for the torchvision equivalents in eager mode with
``torch.inference_mode()`` (no compile column; FLOPs from ``torch.utils.flop_counter``, also
2 per multiply-add). It needs a Python with torch and torchvision (not dependencies of jaxcnn)
and imports nothing from jax; models without a torchvision counterpart (lenet5, xception,
mobilenet_v1) are skipped.

Timings depend on the machine and on what else runs on it: take them on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

from experiments.bench_common import cell, markdown_table, write_json

# one representative per family, at its default input size
DEFAULT_MODELS = (
    "lenet5",
    "alexnet",
    "vgg16",
    "googlenet",
    "inception_v3",
    "resnet18",
    "resnet50",
    "densenet121",
    "xception",
    "mobilenet_v1",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "convnext_tiny",
    "vit_b_16",
    "swin_t",
)
QUICK = (("lenet5", None), ("mobilenet_v3_small", 64))  # (name, side) for --quick
QUICK_TORCH = (("resnet18", 64), ("mobilenet_v3_small", 64))  # --torch --quick

# --torch: torchvision constructor name and default input side (no jaxcnn import there)
TORCHVISION = {
    "alexnet": 224,
    "vgg16": 224,
    "googlenet": 224,
    "inception_v3": 299,
    "resnet18": 224,
    "resnet50": 224,
    "densenet121": 224,
    "mobilenet_v2": 224,
    "mobilenet_v3_small": 224,
    "mobilenet_v3_large": 224,
    "efficientnet_b0": 224,
    "convnext_tiny": 224,
    "vit_b_16": 224,
    "swin_t": 224,
}
for _b in range(1, 8):
    TORCHVISION[f"efficientnet_b{_b}"] = (240, 260, 300, 380, 456, 528, 600)[_b - 1]


def _median_seconds(run, warmup: int, repeats: int, budget: float) -> float:
    """Median wall time of ``run()`` over ``repeats`` calls after ``warmup`` untimed ones;
    stops early (after at least 3) once ``budget`` seconds have been spent timing."""
    for _ in range(warmup):
        run()
    times, start = [], time.perf_counter()
    for i in range(repeats):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
        if i >= 2 and time.perf_counter() - start > budget:
            break
    return statistics.median(times)


# ---------------------------------------------------------------- JAX (jaxcnn)
def bench_jax(
    name: str, side: int | None, batches, warmup: int, repeats: int, budget: float
) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxcnn import models
    from jaxcnn.inspect import random_variables

    info = models.model_info(name)
    h, w, c = info.input_size
    if side is not None:
        h = w = side
    kwargs = {"img_size": (h, w)} if info.family == "vit" else {}
    model = models.create_model(name, **kwargs)
    variables = random_variables(models.abstract_variables(model, (1, h, w, c)))
    params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(variables["params"]))
    forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
    row = {"model": name, "family": info.family, "input": f"{h}x{w}x{c}", "params": params}
    for b in batches:
        x = jnp.asarray(np.random.default_rng(0).normal(size=(b, h, w, c)), jnp.float32)
        t = time.perf_counter()
        compiled = forward.lower(variables, x).compile()
        compile_s = time.perf_counter() - t
        if b == batches[0]:
            row["compile_s"] = compile_s
            cost = compiled.cost_analysis()
            cost = cost[0] if isinstance(cost, (list, tuple)) else cost
            flops = float(cost.get("flops", 0.0)) if cost else 0.0
            row["gflops"] = flops / b / 1e9 if flops > 0 else None
        run = lambda: jax.block_until_ready(compiled(variables, x))  # noqa: E731
        row[f"ms_per_image_b{b}"] = _median_seconds(run, warmup, repeats, budget) / b * 1e3
    return row


def _jax_meta() -> dict:
    import jax

    return {"framework": f"jax {jax.__version__}", "device": str(jax.devices()[0].device_kind)}


# ---------------------------------------------------------------- torch (torchvision)
def bench_torch(
    name: str, side: int | None, batches, warmup: int, repeats: int, budget: float
) -> dict:
    import torch
    import torchvision.models as tvm

    side = side or TORCHVISION[name]
    kwargs = {"init_weights": False} if name in ("googlenet", "inception_v3") else {}
    if name == "vit_b_16" and side != 224:
        kwargs["image_size"] = side
    model = getattr(tvm, name)(weights=None, **kwargs).eval()
    params = sum(p.numel() for p in model.parameters())
    row = {
        "model": name,
        "family": "torchvision",
        "input": f"{side}x{side}x3",
        "params": params,
        "compile_s": None,
        "gflops": None,
    }
    with torch.inference_mode():
        for b in batches:
            x = torch.randn(b, 3, side, side)
            if b == batches[0]:
                try:
                    from torch.utils.flop_counter import FlopCounterMode

                    counter = FlopCounterMode(display=False)
                    with counter:
                        model(x)
                    row["gflops"] = counter.get_total_flops() / b / 1e9
                except Exception:  # older torch
                    pass
            row[f"ms_per_image_b{b}"] = (
                _median_seconds(lambda: model(x), warmup, repeats, budget) / b * 1e3
            )
    return row


def _torch_meta() -> dict:
    import torch
    import torchvision

    return {
        "framework": f"torch {torch.__version__}, torchvision {torchvision.__version__}",
        "device": f"cpu, {torch.get_num_threads()} threads",
    }


# ---------------------------------------------------------------- output
def markdown(rows, batches) -> str:
    head = ["model", "input", "params", "GFLOPs", "compile s"] + [
        f"ms/image b={b}" for b in batches
    ]
    cells = []
    for r in rows:
        g = r.get("gflops")
        cells.append(
            [
                f"`{r['model']}`",
                r["input"],
                f"{r['params']:,}",
                cell(g, ".3g" if g is not None and g < 1 else ".2f"),
                cell(r.get("compile_s"), ".1f"),
            ]
            + [cell(r.get(f"ms_per_image_b{b}"), ".2f") for b in batches]
        )
    return markdown_table(head, "ll" + "r" * (len(head) - 2), cells)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models", help="comma-separated registered names (default: one per family)")
    p.add_argument("--all", action="store_true", help="every registered model")
    p.add_argument("--quick", action="store_true", help="two tiny models at small sizes")
    p.add_argument("--torch", action="store_true", help="torchvision equivalents (needs torch)")
    p.add_argument("--size", type=int, help="square input side instead of each default")
    p.add_argument("--batches", default="1,8", help="batch sizes to time (default 1,8)")
    p.add_argument("--repeats", type=int, default=10, help="timed runs per batch size")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs before timing")
    p.add_argument(
        "--budget",
        type=float,
        default=30.0,
        help="seconds of timing per model and batch size before stopping early",
    )
    p.add_argument("--json", help="also write the rows and settings as JSON here")
    return p.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    batches = tuple(int(b) for b in args.batches.split(","))
    if args.quick:
        todo = list(QUICK_TORCH if args.torch else QUICK)
        args.repeats, args.warmup = min(args.repeats, 3), min(args.warmup, 1)
    elif args.models:
        todo = [(n.strip(), args.size) for n in args.models.split(",") if n.strip()]
    elif args.all:
        if args.torch:
            todo = [(n, args.size) for n in sorted(TORCHVISION)]
        else:
            from jaxcnn import models

            todo = [(n, args.size) for n in models.list_models()]
    else:
        todo = [(n, args.size) for n in DEFAULT_MODELS]
    if args.torch:
        skipped = [n for n, _ in todo if n not in TORCHVISION]
        todo = [(n, s) for n, s in todo if n in TORCHVISION]
        if skipped:
            print(f"<!-- no torchvision equivalent, skipped: {', '.join(skipped)} -->")
        bench, meta = bench_torch, _torch_meta()
    else:
        bench, meta = bench_jax, _jax_meta()
    meta.update(
        python=platform.python_version(),
        machine=platform.machine(),
        cpus=os.cpu_count(),
        batches=batches,
        repeats=args.repeats,
        warmup=args.warmup,
    )
    print(
        f"<!-- {meta['framework']} on {meta['device']}, {meta['cpus']} CPUs; median of "
        f"{args.repeats} runs after {args.warmup} warm-up -->",
        flush=True,
    )
    rows = []
    for name, side in todo:
        t = time.perf_counter()
        rows.append(bench(name, side, batches, args.warmup, args.repeats, args.budget))
        print(f"<!-- {name}: {time.perf_counter() - t:.1f} s -->", file=sys.stderr, flush=True)
    print(markdown(rows, batches))
    if args.json:
        write_json(args.json, meta, rows)
    return rows


if __name__ == "__main__":
    main()
