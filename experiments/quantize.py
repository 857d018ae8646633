"""Post-training int8 quantization of trained runs: accuracy, weight bytes and CPU latency,
float vs int8 (``jaxcnn.compress.quantize``, through Qwix).

    python -m experiments.quantize runs/compress/lenet_s0 runs/compress/resnet18 \
        runs/compress/mobilenet_v2 --json=quantize.json

For every run (the --workdir of ``python -m experiments.train``): the float model and its
three int8 versions (``weights``: weight-only; ``dynamic``: int8 weights and activations, scales
at run time; ``static``: activation scales calibrated on the run's validation split) are
evaluated on the held-out test split (the validation split calibrates, nothing is selected on
the test split). The int8 models run plain XLA convolutions (``conv_impl="xla"``, what Qwix
intercepts), so the float model is also timed that way ("float32, XLA convs").

Bytes: all variables (kernels, scales, biases, BatchNorm). Latency: one jitted forward pass on
this machine's CPU, batch 1 and batch ``--batch_size``, the minimum of ``--repeats`` timed calls
after compilation, all models timed in turn (interleaved) so a change of load hits them alike.
The load average is printed with the table.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging


def _define_flags():
    """The command line's flags (defined when run as a script, so that importing this
    module beside another experiment's never defines a flag twice)."""
    flags.DEFINE_integer("batch_size", 256, "latency batch size (besides batch 1)")
    flags.DEFINE_integer("repeats", 10, "timed calls per model and batch size")
    flags.DEFINE_list("modes", ["weights", "dynamic", "static"], "quantization modes")
    flags.DEFINE_integer("calibration_batch_size", 64, "calibration batch size")
    flags.DEFINE_string("json", None, "write the results to this JSON file")


def accuracy(fn, images, labels, batch_size=500) -> float:
    correct = 0
    for i in range(0, len(labels), batch_size):
        logits = fn(jnp.asarray(images[i : i + batch_size]))
        correct += int(np.sum(np.asarray(logits).argmax(-1) == labels[i : i + batch_size]))
    return correct / len(labels)


def latencies(fns: dict, x, repeats: int) -> dict:
    """Min seconds of ``repeats`` calls of each function on ``x``, interleaved."""
    for f in fns.values():
        jax.block_until_ready(f(x))  # compile
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t = time.perf_counter()
            jax.block_until_ready(f(x))
            best[k] = min(best[k], time.perf_counter() - t)
    return best


def quantize_run(run_dir: str, modes, batch_size: int, repeats: int, calib_batch: int) -> dict:
    from experiments import runs
    from jaxcnn.compress import quantize, tree_nbytes

    run = runs.load_run(run_dir)
    data = runs.load_run_data(run.config)
    xte, yte = data.test
    xva, _ = data.get("validation")
    float_fn = jax.jit(lambda x: run.model.apply(run.variables, x, train=False))
    models_ = {"float": float_fn}
    rows = {
        "float": {
            "bytes": tree_nbytes(run.variables),
            "test_accuracy": accuracy(float_fn, xte, yte),
        }
    }
    if getattr(run.model, "conv_impl", "xla") != "xla":
        # the convolutions the int8 models run (Qwix intercepts plain XLA convolutions)
        xla_model = run.model.clone(conv_impl="xla")
        xla_fn = jax.jit(lambda x: xla_model.apply(run.variables, x, train=False))
        models_["float_xla"] = xla_fn
        rows["float_xla"] = {
            "bytes": tree_nbytes(run.variables),
            "test_accuracy": accuracy(xla_fn, xte, yte),
        }
    for mode in modes:
        t = time.perf_counter()
        kw = {"calibration": xva, "calibration_batch_size": calib_batch} if mode == "static" else {}
        if mode == "dynamic":
            kw["input_shape"] = run.input_shape
        qm = quantize(run.model, run.variables, mode, **kw)
        rows[mode] = {
            "bytes": qm.nbytes,
            "test_accuracy": accuracy(qm, xte, yte),
            "quantize_s": time.perf_counter() - t,
        }
        if mode == "static":
            rows[mode]["calibration_images"] = (len(xva) // calib_batch) * calib_batch
        models_[mode] = qm
    for b in (1, batch_size):
        lat = latencies(models_, jnp.asarray(xte[:b]), repeats)
        for k, s in lat.items():
            rows[k][f"latency_ms_b{b}"] = 1e3 * s
    return {
        "run": run.directory,
        "model": run.config["model"],
        "model_kwargs": run.config["model_kwargs"],
        "step": run.step,
        "num_test": int(len(yte)),
        "rows": rows,
    }


def markdown(results: list[dict], batch_size: int) -> str:
    head = (
        f"| model | weights | test accuracy | weight bytes | CPU ms, batch 1 (speed-up) | "
        f"CPU ms, batch {batch_size} (speed-up) |\n|---|---|---|---|---|---|"
    )
    lines = [head]
    names = {"float": "float32", "float_xla": "float32, XLA convs", "weights": "int8 weight-only",
             "dynamic": "int8 dynamic", "static": "int8 static"}  # fmt: skip
    for r in results:
        f = r["rows"]["float"]
        for k, row in r["rows"].items():
            acc = f"{100 * row['test_accuracy']:.2f}%"
            if k not in ("float", "float_xla"):
                acc += f" ({100 * (row['test_accuracy'] - f['test_accuracy']):+.2f})"
            size = f"{row['bytes'] / 1e6:.3f} MB"
            if k not in ("float", "float_xla"):
                size += f" ({f['bytes'] / row['bytes']:.2f}x smaller)"
            lat = []
            for b in (1, batch_size):
                ms = row[f"latency_ms_b{b}"]
                ratio = f["latency_ms_b" + str(b)] / ms
                lat.append(f"{ms:.2f}" + ("" if k == "float" else f" ({ratio:.2f}x)"))
            lines.append(f"| {r['model']} | {names[k]} | {acc} | {size} | {lat[0]} | {lat[1]} |")
    return "\n".join(lines)


def main(argv):
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    if len(argv) < 2:
        raise app.UsageError("give one or more run directories")
    load0 = os.getloadavg()
    results = [
        quantize_run(
            d,
            flags.FLAGS.modes,
            flags.FLAGS.batch_size,
            flags.FLAGS.repeats,
            flags.FLAGS.calibration_batch_size,
        )
        for d in argv[1:]
    ]
    load1 = os.getloadavg()
    print(markdown(results, flags.FLAGS.batch_size))
    print(f"\nload average before {load0[0]:.2f}, after {load1[0]:.2f} ({os.cpu_count()} CPUs)")
    if flags.FLAGS.json:
        from experiments.runs import save_json

        save_json(flags.FLAGS.json, {"results": results, "loadavg": [load0, load1]})


if __name__ == "__main__":
    _define_flags()
    app.run(main)
