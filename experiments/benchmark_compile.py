"""Compile time of the train step of deep models, with and without scanned blocks.

    python -m experiments.benchmark_compile                      # the five default models
    python -m experiments.benchmark_compile --models resnet152 --batch-size 16
    python -m experiments.benchmark_compile --quick              # smoke test: a tiny ViT

For every model, and for ``scan_blocks`` off and on (:mod:`jaxcnn.models.scan`; a family without
scanned blocks, DenseNet, runs unscanned only), each measurement runs in a fresh Python process
(nothing compiled is shared through JAX's in-memory caches):

- ``cold``: the persistent compilation cache off (``JAXCNN_COMPILATION_CACHE=0``);
  ``lower_s`` (tracing to StableHLO, ``jax.jit(step).lower``) and ``compile_s`` (XLA,
  ``.compile()``) of the train step of :func:`jaxcnn.train.steps.make_train_step`, on abstract
  arguments (nothing allocated);
- ``warm``: the same process twice with ``JAXCNN_COMPILATION_CACHE`` pointing to a fresh
  temporary directory; ``warm_ready_s`` is the second start's lower + compile (a cache hit),
  the time until the step can run; ``warm_start_s`` adds the first step (its compute), the
  time a resumed run waits before its first step is done.

``init_s`` (the jitted ``model.init``, compiled too) is reported apart, from the cold run, and
``stablehlo_lines``, the size of the lowered train step (what scanning shrinks; it does not
depend on the machine's load).
The numbers depend on the machine's load; the JSON (``--json PATH``) records the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

DEFAULT_MODELS = ("resnet101", "resnet152", "vit_l_16", "convnext_large", "densenet201")
# --quick: a 4-block ViT at 32x32 (compiles in well under a second)
QUICK = {
    "models": ("vit_ti_16",),
    "model_kwargs": {"img_size": 32, "hidden_dim": 32, "depth": 4, "num_heads": 2, "mlp_dim": 64},
    "image_size": 32,
    "batch_size": 2,
    "num_classes": 10,
}


def worker(
    model_name: str,
    scan: bool,
    batch_size: int,
    image_size: int,
    num_classes: int,
    model_kwargs: dict,
) -> dict:
    """Lower, compile and run one train step in this process; seconds of each part."""
    import jax
    import numpy as np
    import optax

    from jaxcnn import models
    from jaxcnn.models.scan import SCAN_FAMILIES
    from jaxcnn.train.state import create_train_state
    from jaxcnn.train.steps import make_train_step
    from jaxcnn.utils import enable_compilation_cache

    cache = enable_compilation_cache(min_compile_time_secs=0.0)
    info = models.model_info(model_name)
    kwargs = dict(model_kwargs)
    if info.family in SCAN_FAMILIES:
        kwargs["scan_blocks"] = scan
    elif scan:
        raise ValueError(f"{model_name}: no scanned blocks in the {info.family} family")
    model = models.create_model(model_name, num_classes=num_classes, **kwargs)
    shape = (batch_size, image_size, image_size, info.input_size[2])
    tx = optax.sgd(0.1, momentum=0.9)
    abstract = jax.eval_shape(lambda: create_train_state(model, tx, (1, *shape[1:])))
    batch = {
        "image": np.random.default_rng(0).normal(size=shape).astype(np.float32),
        "label": np.arange(batch_size, dtype=np.int32) % num_classes,
    }
    spec = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), batch)
    step = make_train_step()
    t0 = time.perf_counter()
    lowered = step.lower(abstract, spec)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    hlo_lines = len(lowered.as_text().splitlines())  # program size, independent of load
    t2b = time.perf_counter()
    state = create_train_state(model, tx, (1, *shape[1:]))
    jax.block_until_ready(state)
    t3 = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    t4 = time.perf_counter()
    return {
        "model": model_name,
        "scan_blocks": scan,
        "cache": cache,
        "lower_s": t1 - t0,
        "compile_s": t2 - t1,
        "init_s": t3 - t2b,
        "stablehlo_lines": hlo_lines,
        "first_step_s": t4 - t3,
        "platform": jax.devices()[0].platform,
        "device_kind": jax.devices()[0].device_kind,
    }


def _spawn(args: argparse.Namespace, model: str, scan: bool, cache: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["JAXCNN_COMPILATION_CACHE"] = cache
    cmd = [
        sys.executable,
        "-m",
        "experiments.benchmark_compile",
        "--worker",
        model,
        "--scan" if scan else "--no-scan",
        "--batch-size",
        str(args.batch_size),
        "--image-size",
        str(args.image_size),
        "--num-classes",
        str(args.num_classes),
        "--model-kwargs",
        json.dumps(args.model_kwargs),
    ]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=root)
    if proc.returncode:
        raise RuntimeError(f"{model} scan={scan}: the worker failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(args: argparse.Namespace, model: str, scan: bool) -> dict:
    """The cold run and the two warm starts of one configuration."""
    cold = _spawn(args, model, scan, "0")
    row = {
        "model": model,
        "scan_blocks": scan,
        "cold_lower_s": cold["lower_s"],
        "cold_compile_s": cold["compile_s"],
        "init_s": cold["init_s"],
        "stablehlo_lines": cold["stablehlo_lines"],
        "platform": cold["platform"],
        "device_kind": cold["device_kind"],
    }
    if not args.no_warm:
        with tempfile.TemporaryDirectory(prefix="jaxcnn-compile-") as cache:
            _spawn(args, model, scan, cache)  # fills the cache
            warm = _spawn(args, model, scan, cache)
        row["warm_lower_s"] = warm["lower_s"]
        row["warm_compile_s"] = warm["compile_s"]
        row["warm_ready_s"] = warm["lower_s"] + warm["compile_s"]  # step ready to run
        row["first_step_s"] = warm["first_step_s"]
        row["warm_start_s"] = row["warm_ready_s"] + warm["first_step_s"]
    return row


def fmt(r: dict) -> str:
    s = (
        f"{r['model']:>16s} scan={'on ' if r['scan_blocks'] else 'off'}: "
        f"lower {r['cold_lower_s']:7.2f} s  compile {r['cold_compile_s']:7.2f} s  "
        f"(init {r['init_s']:6.2f} s; {r['stablehlo_lines']} StableHLO lines)"
    )
    if "warm_start_s" in r:
        s += (
            f"  | warm cache: ready {r['warm_ready_s']:6.2f} s (compile {r['warm_compile_s']:.2f}),"
            f" + first step {r['first_step_s']:.2f} s"
        )
    return s


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--model-kwargs", type=json.loads, default={}, help="JSON, to create_model")
    p.add_argument("--no-warm", action="store_true", help="cold compile only")
    p.add_argument("--quick", action="store_true", help="smoke test: a tiny 4-block ViT, 32px")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--scan", action=argparse.BooleanOptionalAction, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        r = worker(
            a.worker, bool(a.scan), a.batch_size, a.image_size, a.num_classes, a.model_kwargs
        )
        print(json.dumps(r), flush=True)
        return r
    if a.quick:
        a.models, a.model_kwargs = list(QUICK["models"]), dict(QUICK["model_kwargs"])
        a.image_size, a.batch_size = QUICK["image_size"], QUICK["batch_size"]
        a.num_classes = QUICK["num_classes"]
    from jaxcnn import models
    from jaxcnn.models.scan import SCAN_FAMILIES

    results = []
    for name in a.models:
        scans = [False, True]
        if models.model_info(name).family not in SCAN_FAMILIES:
            scans = [False]
            print(f"{name}: its family has no scanned blocks; unscanned only", flush=True)
        for scan in scans:
            r = measure(a, name, scan)
            r["load_avg"] = os.getloadavg()[0]
            results.append(r)
            print(fmt(r), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
