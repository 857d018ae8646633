"""Train-step speed, jaxcnn vs PyTorch, paired model by model and interleaved step by step.

    python -m experiments.benchmark_train --torch-python ../refvenv/bin/python
    python -m experiments.benchmark_train --models resnet18_cifar,unet_small --steps 20
    python -m experiments.benchmark_train --params-only --torch-python ../refvenv/bin/python
    python -m experiments.benchmark_train --quick        # tiny nets, seconds (the test's run)

A train step is forward + backward + SGD with momentum 0.9 (no Nesterov, no weight decay),
float32, mean cross-entropy (per pixel for ``unet_small``). Models (jaxcnn name, input, batch;
10 classes unless noted) and their PyTorch counterparts:

- ``resnet18_cifar`` 32x32x3, 64: torchvision ``resnet18`` with the CIFAR stem (3x3 stride-1
  ``conv1`` without bias, ``maxpool = Identity``, ``fc`` 10).
- ``resnet50`` 224x224x3, 16: torchvision ``resnet50``.
- ``mobilenet_v2`` with ``small_input=True`` 32x32x3, 64: torchvision ``mobilenet_v2`` with the
  stem conv and the first stride-2 block (``features[2]``, the 24-channel stage) at stride 1.
- ``efficientnet_b0`` 224x224x3, 16: torchvision ``efficientnet_b0``.
- ``vit_ti_16`` (ViT-Ti/16) 224x224x3, 16: timm ``vit_tiny_patch16_224``, or torchvision's
  ``VisionTransformer`` of the same size (the same parameter layout) when timm is missing.
- ``unet_small`` 64x64x1, 16, 11 classes: a U-Net written here in PyTorch with the layers of
  ``jaxcnn.models.unet`` (3x3 conv without bias + BatchNorm + ReLU twice per level, 2x2 max
  pool, 2x2 stride-2 transposed conv with bias, skip concatenated first, 1x1 head).

The parameter counts of the two sides are printed and must be equal (RuntimeError otherwise),
so both time the same network. For each model both sides are built and warmed up (``jax.jit``
compiles, ``--warmup`` steps), then ``--steps`` rounds each time one jaxcnn step
(``jax.block_until_ready`` on the new state and metrics) and then one PyTorch step (eager, or
``torch.compile`` with ``--compile``; ``torch.set_num_threads(--threads, default all CPUs)``),
so load from other processes falls on both alike. Reported: the minimum over the steps per
framework and "jaxcnn speed vs PyTorch" = PyTorch time / jaxcnn time (above 1: jaxcnn
faster), as a Markdown table with the machine line (``uptime`` before and after, CPU count,
versions). ``--json PATH`` also writes every step time.

Two Pythons: jaxcnn never imports torch, and the PyTorch reference venv usually has no jax. If
``import torch, torchvision`` works in this Python the PyTorch side runs in-process; otherwise
with ``--torch-python PATH`` (default ``$JAXCNN_TORCH_PYTHON``) it runs in a worker process of
that Python (``python -m experiments.benchmark_train --torch-worker``, repository root on
``PYTHONPATH``; it imports only torch, torchvision, timm and this file), driven over a line
protocol of JSON requests on its stdin and replies on its stdout
(:mod:`experiments.bench_common`): ``setup`` builds and warms up a model and returns its
parameter count, ``step`` runs one step and returns its time as measured inside the worker, so
the pipe is not timed and the steps stay interleaved one by one. Without either, a one-line
message says so and the table has the jaxcnn column alone.

The PyTorch side runs on CPU; when JAX's default device is a GPU it runs on CUDA instead
(``torch.cuda.synchronize`` inside the timing). Take figures on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
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
    torch_resnet18_cifar,
    uptime,
    write_json,
)

# name -> jaxcnn model kwargs, square input side, channels, batch, classes, per-pixel labels
MODELS = {
    "resnet18_cifar": dict(kwargs={}, side=32, channels=3, batch=64, classes=10),
    "resnet50": dict(kwargs={}, side=224, channels=3, batch=16, classes=10),
    "mobilenet_v2": dict(kwargs={"small_input": True}, side=32, channels=3, batch=64, classes=10),
    "efficientnet_b0": dict(kwargs={}, side=224, channels=3, batch=16, classes=10),
    "vit_ti_16": dict(kwargs={}, side=224, channels=3, batch=16, classes=10),
    "unet_small": dict(kwargs={}, side=64, channels=1, batch=16, classes=11, seg=True),
}
# --quick: tiny widths and inputs (both sides have these options), seconds on a CPU
QUICK = {
    "mobilenet_v2": dict(
        kwargs={"small_input": True, "width_mult": 0.25}, side=32, channels=3, batch=4, classes=10
    ),
    "unet_small": dict(
        kwargs={"base_width": 8}, side=16, channels=1, batch=2, classes=11, seg=True
    ),
}


def model_specs(names, quick: bool) -> list[dict]:
    """The configurations to run, each a dict with ``model`` and the fields of :data:`MODELS`."""
    table = QUICK if quick else MODELS
    unknown = [n for n in names if n not in table]
    if unknown:
        raise SystemExit(
            f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(table)}"
            + (" (--quick)" if quick else "")
        )
    return [{"model": n, "seg": False, **table[n]} for n in names]


# ============================================================================== PyTorch side
def _torch_mobilenet_v2(torchvision, num_classes, width_mult=1.0, small_input=False):
    """torchvision ``mobilenet_v2``; ``small_input`` mirrors jaxcnn's: the stem conv and the
    depthwise conv of the first 24-channel block (``features[2]``) at stride 1."""
    m = torchvision.models.mobilenet_v2(num_classes=num_classes, width_mult=width_mult)
    if small_input:
        m.features[0][0].stride = (1, 1)
        m.features[2].conv[1][0].stride = (1, 1)
    return m


def _torch_vit_ti_16(torchvision, num_classes):
    """timm ``vit_tiny_patch16_224``, else torchvision's ViT of that size."""
    try:
        import timm
    except ImportError:
        from torchvision.models.vision_transformer import VisionTransformer

        return VisionTransformer(224, 16, 12, 3, 192, 768, num_classes=num_classes)
    return timm.create_model("vit_tiny_patch16_224", num_classes=num_classes)


def _torch_unet(in_channels, num_classes, base_width=32, depth=3):
    """jaxcnn's ``unet_small`` (``UNet(batch_norm=True, padding="same")``) in PyTorch."""
    import torch
    from torch import nn

    def double(cin, c):
        layers = []
        for i in range(2):
            layers += [nn.Conv2d(cin if i == 0 else c, c, 3, padding=1, bias=False)]
            layers += [nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
        return nn.Sequential(*layers)

    widths = [base_width * 2**i for i in range(depth + 1)]

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.ModuleList(
                double(in_channels if i == 0 else widths[i - 1], c) for i, c in enumerate(widths)
            )
            self.up = nn.ModuleList(
                nn.ConvTranspose2d(widths[i + 1], widths[i], 2, 2) for i in range(depth)
            )
            self.dec = nn.ModuleList(double(2 * widths[i], widths[i]) for i in range(depth))
            self.head = nn.Conv2d(base_width, num_classes, 1)

        def forward(self, x):
            skips = []
            for i, enc in enumerate(self.enc):
                x = enc(x if i == 0 else nn.functional.max_pool2d(x, 2))
                skips.append(x)
            for i in reversed(range(depth)):
                x = self.dec[i](torch.cat([skips[i], self.up[i](x)], 1))
            return self.head(x)

    return UNet()


def build_torch_model(spec: dict):
    """The PyTorch counterpart of ``spec`` (see the module docstring)."""
    _, torchvision = import_torch() or (None, None)
    if torchvision is None:
        raise ImportError("torch and torchvision are needed for the PyTorch side")
    name, k, kw = spec["model"], spec["classes"], spec["kwargs"]
    if name == "resnet18_cifar":
        return torch_resnet18_cifar(spec["channels"], k)
    if name == "mobilenet_v2":
        return _torch_mobilenet_v2(torchvision, k, **kw)
    if name == "vit_ti_16":
        return _torch_vit_ti_16(torchvision, k)
    if name == "unet_small":
        return _torch_unet(spec["channels"], k, **kw)
    return getattr(torchvision.models, name)(num_classes=k, **kw)


class TorchTrain:
    """The PyTorch side: builds one model at a time and times its train steps (the methods a
    :class:`~experiments.bench_common.WorkerProxy` calls in a worker, or called directly)."""

    def __init__(self):
        self.step_fn = None

    def hello(self, threads: int | None = None, device: str = "cpu") -> dict:
        """Set the thread count and device; return the versions."""
        found = import_torch()
        if found is None:
            raise ImportError("torch/torchvision not importable")
        torch, torchvision = found
        torch.set_num_threads(threads or os.cpu_count())
        self.device = device if device == "cpu" or torch.cuda.is_available() else "cpu"
        try:
            import timm

            timm_version = timm.__version__
        except ImportError:
            timm_version = None
        return {
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "timm": timm_version,
            "threads": torch.get_num_threads(),
            "device": self.device,
        }

    def params(self, spec: dict) -> int:
        """Trainable parameter count of the PyTorch counterpart."""
        return sum(p.numel() for p in build_torch_model(spec).parameters() if p.requires_grad)

    def setup(self, spec: dict, compile: bool = False, warmup: int = 2) -> int:
        """Build the model, its batch and SGD, run ``warmup`` steps; return the parameter count."""
        import torch
        import torch.nn.functional as F

        torch.manual_seed(0)
        dev = self.device
        model = build_torch_model(spec).to(dev).train()
        n = sum(p.numel() for p in model.parameters() if p.requires_grad)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        b, s = spec["batch"], spec["side"]
        x = torch.randn(b, spec["channels"], s, s, device=dev)
        shape = (b, s, s) if spec["seg"] else (b,)
        y = torch.randint(0, spec["classes"], shape, device=dev)
        fwd = torch.compile(model) if compile else model
        sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

        def step():
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(fwd(x), y).backward()
            opt.step()
            sync()

        self.step_fn = step
        for _ in range(warmup):
            step()
        return n

    def step(self) -> float:
        """One timed train step of the model of the last ``setup``, in seconds."""
        t = time.perf_counter()
        self.step_fn()
        return time.perf_counter() - t


def torch_side(args, device: str):
    """``(side, versions)``: a :class:`TorchTrain` here or behind a worker of
    ``--torch-python``; ``(None, None)`` (after printing why) when neither has PyTorch."""
    local = TorchTrain() if import_torch() is not None else None
    return open_torch_side(
        local, args.torch_python, "experiments.benchmark_train", threads=args.threads, device=device
    )


# ================================================================================= jaxcnn side
def _jax_model(spec: dict):
    from jaxcnn import models

    return models.create_model(spec["model"], num_classes=spec["classes"], **spec["kwargs"])


def jax_params(spec: dict) -> int:
    """Parameter count of the jaxcnn model (shapes only: nothing is compiled)."""
    from jaxcnn import models

    s = spec["side"]
    return models.count_params(_jax_model(spec), (1, s, s, spec["channels"]))


class JaxTrain:
    """One jaxcnn model's jitted train step (``make_train_step``, state donated) on a fixed
    random batch; ``step()`` runs and times one step."""

    def __init__(self, spec: dict, warmup: int = 2):
        import jax
        import numpy as np

        from jaxcnn.train.optim import make_optimizer
        from jaxcnn.train.segmentation import pixel_cross_entropy
        from jaxcnn.train.state import create_train_state
        from jaxcnn.train.steps import make_train_step

        b, s, c = spec["batch"], spec["side"], spec["channels"]
        model = _jax_model(spec)
        tx = make_optimizer("sgd", 0.01, momentum=0.9, nesterov=False)
        self.state = create_train_state(model, tx, (1, s, s, c))
        self.params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(self.state.params))
        rng = np.random.default_rng(0)
        labels = rng.integers(0, spec["classes"], (b, s, s) if spec["seg"] else (b,))
        self.batch = jax.device_put(
            {
                "image": rng.standard_normal((b, s, s, c)).astype(np.float32),
                "label": labels.astype(np.int32),
            }
        )
        self.train_step = make_train_step(loss_fn=pixel_cross_entropy if spec["seg"] else None)
        for _ in range(max(warmup, 1)):  # the first one compiles
            self.step()

    def step(self) -> float:
        import jax

        t = time.perf_counter()
        self.state, metrics = self.train_step(self.state, self.batch)
        jax.block_until_ready((self.state, metrics))
        return time.perf_counter() - t


# ====================================================================================== driver
def check_params(name: str, n_jax: int, n_torch: int | None) -> None:
    """Print both counts; raise RuntimeError unless they are equal (not the same network)."""
    print(
        f"{name}: parameters jaxcnn {n_jax:,}, PyTorch "
        + ("-" if n_torch is None else f"{n_torch:,}"),
        flush=True,
    )
    if n_torch is not None and n_torch != n_jax:
        raise RuntimeError(
            f"{name}: jaxcnn has {n_jax:,} parameters, its PyTorch counterpart {n_torch:,}: "
            "not the same network, the timings would not compare"
        )


def bench_model(spec: dict, side, steps: int, warmup: int, compile: bool) -> dict:
    """Build and warm up both sides, check their parameter counts, then time ``steps``
    interleaved rounds (jaxcnn step, PyTorch step)."""
    jx = JaxTrain(spec, warmup)
    n_torch = side.setup(spec=spec, compile=compile, warmup=warmup) if side else None
    check_params(spec["model"], jx.params, n_torch)
    tj, tt = [], []
    for _ in range(steps):
        tj.append(jx.step())
        if side:
            tt.append(side.step())
    s = spec["side"]
    row = {
        "model": spec["model"],
        "kwargs": spec["kwargs"],
        "batch": spec["batch"],
        "input": f"{s}x{s}x{spec['channels']}",
        "params": jx.params,
        "params_torch": n_torch,
        "jax_s": min(tj),
        "torch_s": min(tt) if tt else None,
        "jax_times": tj,
        "torch_times": tt,
    }
    row["ratio"] = row["torch_s"] / row["jax_s"] if tt else None
    return row


def markdown(rows) -> str:
    head = [
        "model",
        "batch",
        "input",
        "jaxcnn s/step",
        "PyTorch s/step",
        "jaxcnn speed vs PyTorch",
        "params",
    ]
    cells = []
    for r in rows:
        name = r["model"] + (" (small_input)" if r["kwargs"].get("small_input") else "")
        cells.append(
            [
                f"`{name}`",
                str(r["batch"]),
                r["input"],
                cell(r["jax_s"], ".4f"),
                cell(r["torch_s"], ".4f"),
                cell(r["ratio"], ".2f"),
                f"{r['params']:,}",
            ]
        )
    return markdown_table(head, "lrlrrrr", cells)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models", help="comma-separated, from: " + ", ".join(MODELS))
    p.add_argument("--steps", type=int, help="timed rounds per model (default 10; --quick 2)")
    p.add_argument("--warmup", type=int, help="untimed steps per side first (default 2; --quick 1)")
    p.add_argument("--threads", type=int, help="PyTorch threads (default: all CPUs)")
    p.add_argument("--compile", action="store_true", help="torch.compile the PyTorch models")
    add_torch_python_args(p)
    p.add_argument("--params-only", action="store_true", help="compare parameter counts only")
    p.add_argument("--quick", action="store_true", help="tiny nets and inputs, 2 steps")
    p.add_argument("--json", help="also write the rows and settings as JSON here")
    return p.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.torch_worker:  # in the PyTorch Python: no jax here
        sys.exit(serve(TorchTrain()))
    if args.steps is None:
        args.steps = 2 if args.quick else 10
    if args.warmup is None:
        args.warmup = 1 if args.quick else 2
    table = QUICK if args.quick else MODELS
    names = [n.strip() for n in args.models.split(",") if n.strip()] if args.models else table
    specs = model_specs(list(names), args.quick)

    import jax

    device = "cuda" if jax.default_backend() == "gpu" else "cpu"
    side, versions = torch_side(args, device)
    meta = {
        "jax": jax.__version__,
        "jax_device": str(jax.devices()[0].device_kind),
        "torch": versions,
        "cpus": os.cpu_count(),
        "steps": args.steps,
        "warmup": args.warmup,
        "torch_compile": args.compile,
        "load_before": uptime(),
    }
    tv = versions or {}
    line = machine_line(
        jax=jax.__version__, torch=tv.get("torch"), torchvision=tv.get("torchvision")
    )
    print(f"<!-- {line} -->", flush=True)
    rows = []
    try:
        for spec in specs:
            if args.params_only:
                check_params(
                    spec["model"], jax_params(spec), side.params(spec=spec) if side else None
                )
                continue
            t = time.perf_counter()
            rows.append(bench_model(spec, side, args.steps, args.warmup, args.compile))
            print(f"<!-- {spec['model']}: {time.perf_counter() - t:.1f} s -->", file=sys.stderr)
    finally:
        if isinstance(side, WorkerProxy):
            side.close()
    if args.params_only:
        return rows
    meta["load_after"] = uptime()
    print(
        f"<!-- min of {args.steps} interleaved steps after {args.warmup} warm-up; PyTorch "
        f"{'torch.compile' if args.compile else 'eager'}, {tv.get('threads', '-')} threads, "
        f"{tv.get('device', '-')}; jax on {meta['jax_device']}; load after: "
        f"{meta['load_after']} -->"
    )
    print(markdown(rows), flush=True)
    if args.json:
        write_json(args.json, meta, rows)
    return rows


if __name__ == "__main__":
    main()
