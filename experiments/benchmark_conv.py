"""Convolution speed on CPU: JAX/XLA vs PyTorch, per op (forward, input grad, filter grad).

Two interpreters (jaxcnn's venv has no torch, and jaxcnn never imports it)::

    ../tvenv/bin/python -m experiments.benchmark_conv --torch --json runs/conv_torch.json
    python -m experiments.benchmark_conv --torch-json runs/conv_torch.json [--impl both]

The JAX run prints one Markdown table: JAX ms, torch ms, JAX/torch. ``--impl xla|fast|both``
chooses jaxcnn's conv implementation (``jaxcnn.layers.fast_conv``); ``both`` adds a column.
``--impl cond`` times XLA's convolutions as they are (column ``xla``) and inside a
``lax.cond`` whose branch is picked at run time (column ``cond``): what a train step that picks
its phase on device (``lax.switch``) runs.
``--e2e`` also times a whole ResNet-18 (CIFAR stem, 32x32x1, batch 128) SGD train step,
``--only-e2e`` only that. ``--quick`` shrinks batches and repeats for a smoke test.

Timing: ``jax.jit`` + ``block_until_ready`` (torch: eager, ``torch.set_num_threads(2)``), median
of ``--repeats`` rounds after a warm-up; rounds interleave configs and implementations, so load
from other processes hits all of them alike. Ratios are indicative on a shared machine: the
script prints ``uptime`` before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

from experiments.bench_common import torch_resnet18_cifar, uptime

# (name, kind, N, H, W, Cin, Cout, k, stride, padding, groups)
#   kind "conv": y = conv2d(x, w), padding symmetric (PyTorch style);
#   kind "convT": PyTorch ConvTranspose2d(Cin, Cout, k, stride, padding) = jaxcnn ConvTranspose2d.
CONFIGS = [
    ("r18 3x3 32x32 64", "conv", 128, 32, 32, 64, 64, 3, 1, 1, 1),
    ("r18 3x3 16x16 128", "conv", 128, 16, 16, 128, 128, 3, 1, 1, 1),
    ("r18 3x3 8x8 256", "conv", 128, 8, 8, 256, 256, 3, 1, 1, 1),
    ("r18 3x3 4x4 512", "conv", 128, 4, 4, 512, 512, 3, 1, 1, 1),
    ("r18 3x3/2 32->16 64->128", "conv", 128, 32, 32, 64, 128, 3, 2, 1, 1),
    ("r18 3x3/2 8->4 256->512", "conv", 128, 8, 8, 256, 512, 3, 2, 1, 1),
    ("r18 1x1/2 32->16 64->128", "conv", 128, 32, 32, 64, 128, 1, 2, 0, 1),
    ("1x1 16x16 128->256", "conv", 128, 16, 16, 128, 256, 1, 1, 0, 1),
    ("stem 7x7/2 224 3->64 (N=8)", "conv", 8, 224, 224, 3, 64, 7, 2, 3, 1),
    ("dw 3x3 112 32 (N=8)", "conv", 8, 112, 112, 32, 32, 3, 1, 1, 32),
    ("dw 3x3/2 112 96 (N=8)", "conv", 8, 112, 112, 96, 96, 3, 2, 1, 96),
    ("dw 3x3 56 144 (N=8)", "conv", 8, 56, 56, 144, 144, 3, 1, 1, 144),
    ("dw 3x3 14 384 (N=8)", "conv", 8, 14, 14, 384, 384, 3, 1, 1, 384),
    ("dw 3x3 7 960 (N=8)", "conv", 8, 7, 7, 960, 960, 3, 1, 1, 960),
    ("dw 3x3 32 144 (N=128)", "conv", 128, 32, 32, 144, 144, 3, 1, 1, 144),
    ("unet T2x2/2 32->64 256->128", "convT", 8, 32, 32, 256, 128, 2, 2, 0, 1),
    ("unet T2x2/2 64->128 128->64", "convT", 8, 64, 64, 128, 64, 2, 2, 0, 1),
    ("dcgan T4x4/2 8->16 256->128", "convT", 64, 8, 8, 256, 128, 4, 2, 1, 1),
    ("dcgan T4x4/2 16->32 128->64", "convT", 64, 16, 16, 128, 64, 4, 2, 1, 1),
]
OPS = ("fwd", "dx", "dw")


def quick_configs():
    out = []
    for c in CONFIGS:
        n = max(1, c[2] // 16)
        out.append(c[:2] + (n,) + c[3:])
    return out


def timeit(fn, repeats_inner=1):
    t0 = time.perf_counter()
    for _ in range(repeats_inner):
        fn()
    return (time.perf_counter() - t0) / repeats_inner * 1e3


# ----------------------------------------------------------------------------------------- torch
def torch_ops(cfg):
    import torch
    import torch.nn.functional as F

    name, kind, n, h, w, cin, cout, k, s, p, g = cfg
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, cin, h, w, generator=gen)
    if kind == "conv":
        wt = torch.randn(cout, cin // g, k, k, generator=gen) * 0.1
        y = F.conv2d(x, wt, stride=s, padding=p, groups=g)
        fwd = lambda: F.conv2d(x, wt, stride=s, padding=p, groups=g)  # noqa: E731
        transposed = False
    else:
        wt = torch.randn(cin, cout, k, k, generator=gen) * 0.1
        y = F.conv_transpose2d(x, wt, stride=s, padding=p)
        fwd = lambda: F.conv_transpose2d(x, wt, stride=s, padding=p)  # noqa: E731
        transposed = True
    gy = torch.randn_like(y)

    def bwd(mask):
        return torch.ops.aten.convolution_backward(
            gy, x, wt, None, [s, s], [p, p], [1, 1], transposed, [0, 0], g, mask
        )

    with torch.no_grad():
        return {
            "fwd": fwd,
            "dx": lambda: bwd([True, False, False]),
            "dw": lambda: bwd([False, True, False]),
        }


def torch_resnet_step(batch):
    import torch

    m = torch_resnet18_cifar(in_channels=1, num_classes=10)
    m.train()
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(batch, 1, 32, 32)
    y = torch.randint(0, 10, (batch,))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(m(x), y)
        loss.backward()
        opt.step()
        return loss.item()

    return step


def run_torch(args, configs):
    import torch

    torch.set_num_threads(args.threads)
    results = {}
    if not args.only_e2e:
        ops = {c[0]: torch_ops(c) for c in configs}
        for fns in ops.values():
            for f in fns.values():
                with torch.no_grad():
                    f()
        samples = {(c[0], o): [] for c in configs for o in OPS}
        for _ in range(args.repeats):
            for c in configs:
                for o in OPS:
                    with torch.no_grad():
                        samples[(c[0], o)].append(timeit(ops[c[0]][o]))
        for (name, o), v in samples.items():
            results.setdefault(name, {})[o] = statistics.median(v)
    if args.e2e or args.only_e2e:
        step = torch_resnet_step(args.e2e_batch)
        for _ in range(2):
            step()
        results["resnet18_cifar train step"] = {
            "step": statistics.median(timeit(step) for _ in range(args.e2e_repeats))
        }
    return results


# ------------------------------------------------------------------------------------------- jax
def in_cond(fn, impl):
    """``fn`` itself, or (impl "cond") ``fn`` as one branch of a ``lax.cond`` on its first
    argument's data (never constant: XLA keeps the conditional)."""
    if impl != "cond":
        return fn
    import jax
    import jax.numpy as jnp

    def other(*a):
        return fn(*(2 * v for v in a))

    return lambda *a: jax.lax.cond(jnp.isfinite(a[0].ravel()[0]), fn, other, *a)


def jax_ops(cfg, impl):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxcnn.layers import fast_conv

    name, kind, n, h, w, cin, cout, k, s, p, g = cfg
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((n, h, w, cin), np.float32))
    conv = fast_conv.get_conv_fn("xla" if impl == "cond" else impl)
    if kind == "conv":
        wt = jnp.asarray(rng.standard_normal((k, k, cin // g, cout), np.float32) * 0.1)

        def f(x, wt):
            return conv(x, wt, (s, s), ((p, p), (p, p)), None, (1, 1), fast_conv.NHWC_DN, g)
    else:
        # jaxcnn.layers.ConvTranspose2d: input dilation by the stride, padding d*(k-1)-p.
        wt = jnp.asarray(rng.standard_normal((k, k, cin, cout), np.float32) * 0.1)
        e = k - 1 - p

        def f(x, wt):
            return conv(x, wt, (1, 1), ((e, e), (e, e)), (s, s), (1, 1), fast_conv.NHWC_DN, 1)

    y = jax.eval_shape(f, x, wt)
    gy = jnp.asarray(rng.standard_normal(y.shape, np.float32))
    fwd = jax.jit(in_cond(f, impl))
    dx = jax.jit(in_cond(lambda x, wt, gy: jax.vjp(lambda x_: f(x_, wt), x)[1](gy)[0], impl))
    dw = jax.jit(in_cond(lambda x, wt, gy: jax.vjp(lambda w_: f(x, w_), wt)[1](gy)[0], impl))
    return {
        "fwd": lambda: fwd(x, wt).block_until_ready(),
        "dx": lambda: dx(x, wt, gy).block_until_ready(),
        "dw": lambda: dw(x, wt, gy).block_until_ready(),
    }


def jax_resnet_step(batch, impl):
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from jaxcnn.models import create_model
    from jaxcnn.train.state import create_train_state
    from jaxcnn.train.steps import make_train_step

    conv_impl = "xla" if impl == "cond" else impl
    model = create_model("resnet18_cifar", num_classes=10, in_channels=1, conv_impl=conv_impl)
    state = create_train_state(model, optax.sgd(0.1, momentum=0.9), (batch, 32, 32, 1))
    rng = np.random.default_rng(0)
    data = {
        "image": jnp.asarray(rng.standard_normal((batch, 32, 32, 1), np.float32)),
        "label": jnp.asarray(rng.integers(0, 10, batch), jnp.int32),
    }
    train_step = make_train_step(donate=False)
    if impl == "cond":  # the whole step as one branch of a conditional picked at run time
        plain = train_step
        train_step = jax.jit(
            lambda s, d: jax.lax.cond(
                jnp.isfinite(d["image"][0, 0, 0, 0]),
                plain,
                lambda s, d: plain(s, {**d, "image": -d["image"]}),
                s,
                d,
            )
        )
    holder = {"state": state}

    def step():
        holder["state"], metrics = train_step(holder["state"], data)
        jax.block_until_ready(metrics)

    step()  # compile with this impl
    return step


def run_jax(args, configs, impls):
    results = {}
    if not args.only_e2e:
        ops = {(c[0], i): jax_ops(c, i) for c in configs for i in impls}
        for fns in ops.values():
            for f in fns.values():
                f()
        samples = {key: [] for key in ((c[0], i, o) for c in configs for i in impls for o in OPS)}
        for _ in range(args.repeats):
            for c in configs:
                for o in OPS:
                    for i in impls:
                        samples[(c[0], i, o)].append(timeit(ops[(c[0], i)][o]))
        for (name, i, o), v in samples.items():
            results.setdefault(name, {})[f"{o}:{i}"] = statistics.median(v)
    if args.e2e or args.only_e2e:
        steps = {i: jax_resnet_step(args.e2e_batch, i) for i in impls}
        samples = {i: [] for i in impls}
        for _ in range(args.e2e_repeats):
            for i in impls:
                samples[i].append(timeit(steps[i]))
        results["resnet18_cifar train step"] = {
            f"step:{i}": statistics.median(v) for i, v in samples.items()
        }
    return results


# ----------------------------------------------------------------------------------------- table
def fmt(v):
    return "-" if v is None else (f"{v:.1f}" if v >= 10 else f"{v:.2f}")


def table(jres, tres, impls):
    head = ["config", "op"] + [f"JAX {i} ms" for i in impls]
    if tres:
        head += ["torch ms"] + [f"{i}/torch" for i in impls]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, d in jres.items():
        ops = ("step",) if name.endswith("train step") else OPS
        for o in ops:
            js = [d.get(f"{o}:{i}") for i in impls]
            row = [name, o] + [fmt(v) for v in js]
            if tres:
                t = tres.get(name, {}).get(o)
                row += [fmt(t)] + [
                    ("-" if (t is None or v is None) else f"{v / t:.2f}") for v in js
                ]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--torch", action="store_true", help="time PyTorch (run under tvenv)")
    ap.add_argument("--json", help="write the results of this run to this JSON file")
    ap.add_argument("--torch-json", help="torch results (from a --torch run) for the table")
    ap.add_argument("--impl", default="xla", choices=["xla", "fast", "both", "cond"])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--e2e", action="store_true", help="also time a ResNet-18 train step")
    ap.add_argument("--only-e2e", action="store_true")
    ap.add_argument("--e2e-batch", type=int, default=128)
    ap.add_argument("--e2e-repeats", type=int, default=7)
    ap.add_argument("--filter", default="", help="only configs whose name contains this")
    ap.add_argument("--quick", action="store_true", help="tiny batches, 2 repeats (smoke test)")
    args = ap.parse_args(argv)
    configs = quick_configs() if args.quick else CONFIGS
    configs = [c for c in configs if args.filter in c[0]]
    if args.quick:
        args.repeats, args.e2e_repeats, args.e2e_batch = 2, 2, min(args.e2e_batch, 16)
    print("load before:", uptime(), file=sys.stderr)
    if args.torch:
        res = run_torch(args, configs)
        impls = None
    else:
        impls = {"both": ["xla", "fast"], "cond": ["xla", "cond"]}.get(args.impl, [args.impl])
        res = run_jax(args, configs, impls)
    print("load after: ", uptime(), file=sys.stderr)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    if args.torch:
        for name, d in res.items():
            print(name, {k: round(v, 2) for k, v in d.items()})
        return
    tres = None
    if args.torch_json:
        with open(args.torch_json) as f:
            tres = json.load(f)
    print(table(res, tres, impls))


if __name__ == "__main__":
    main()
