"""Convert weights to a jaxcnn Orbax checkpoint, or back to a torch / Keras-free file.

    python -m jaxcnn.convert resnet50.pth runs/r50 --model resnet50 [--num-classes 10]
        [--in-channels 1] [--source auto|torchvision|timm|keras|jaxcnn]
    python -m jaxcnn.convert runs/r50 r50.safetensors --model resnet50 --to torch
        [--source timm] [--reference original.safetensors]

The first form reads any file :func:`jaxcnn.interop.load_file` reads (``.safetensors``,
``.npz``, ``.pth`` with torch, ``.keras``/``.h5``), converts it by name (see docs/interop.md)
and writes an Orbax checkpoint of ``{"params", "batch_stats"}`` to the new directory OUT with
``jaxcnn_meta.json`` (model, options, source), which ``jaxcnn.interop.load_variables(OUT,
model)`` and a training run's ``--config.init_from=OUT`` read. ``--num-classes`` other than the
file's gives a freshly initialised head, ``--in-channels`` an adapted first conv. ``--to
torch`` writes the variables of SRC (an OUT directory or a weights file) in a library's layout:
``.safetensors`` or ``.npz`` (no torch needed) or ``.pth`` (torch), named for ``--source``
(default: the checkpoint's source, else the model's reference library), ordered like
``--reference`` when given. Both print a one-screen report of what was loaded.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import numpy as np


def _shape(a) -> str:
    return "(" + ", ".join(str(d) for d in a.shape) + (",)" if len(a.shape) == 1 else ")")


def _report(lines, width=100):
    for line in lines:
        print(line if len(line) <= width else line[: width - 3] + "...")


def to_jaxcnn(args) -> int:
    from flax import traverse_util

    from jaxcnn.interop import create_model, load_file
    from jaxcnn.interop.files import save_variables

    tensors = load_file(args.src)
    net = create_model(
        args.model,
        tensors,
        num_classes=args.num_classes,
        in_channels=args.in_channels,
        source=args.source,
    )
    flat = {c: traverse_util.flatten_dict(dict(v)) for c, v in net.variables.items() if v}
    n_params = sum(math.prod(a.shape) for a in flat.get("params", {}).values())
    skipped = [k for k in tensors if k.rpartition(".")[2] in ("num_batches_tracked",)]
    other = [k for k in tensors if k.rpartition(".")[2] in ("relative_position_index", "attn_mask")]
    meta = {
        "model": args.model,
        "model_kwargs": dict(net.model_kwargs),
        "source": net.source,
        "input_shape": list(net.input_shape),
        "converted_from": os.path.basename(os.fspath(args.src)),
    }
    out = save_variables(args.out, net.variables, meta)
    kw = ", ".join(f"{k}={v!r}" for k, v in net.model_kwargs.items())
    lines = [
        f"jaxcnn.convert: {args.model} from {args.src} ({net.source} layout, "
        f"{len(tensors)} tensors)",
        f"  loaded:  {len(tensors) - len(skipped) - len(other)} tensors -> "
        + ", ".join(f"{len(v)} {c}" for c, v in flat.items())
        + f" arrays ({n_params:,} parameters)",
    ]
    if skipped or other:
        lines.append(
            f"  skipped: {len(skipped)} num_batches_tracked"
            + (f", {len(other)} relative_position_index/attn_mask" if other else "")
            + " (buffers, no learned values)"
        )
    for what, paths in (("new", net.fresh), ("adapted", net.adapted)):
        if paths:
            shapes = []
            for p in paths:
                col, *rest = p.split("/")
                shapes.append(f"{p} {_shape(flat[col][tuple(rest)])}")
            reason = (
                "--num-classes differs from the file's"
                if what == "new"
                else ("--in-channels differs from the file's (timm's adapt_input_conv)")
            )
            lines.append(f"  {what + ':':8} {'; '.join(shapes)}  [{reason}]")
    lines += [
        f"  model:   jaxcnn.models.create_model({args.model!r}" + (f", {kw}" if kw else "") + ")",
        f"  wrote:   {out} (Orbax checkpoint) + jaxcnn_meta.json",
        f"  load:    jaxcnn.interop.load_variables({args.out!r}, {args.model!r})",
    ]
    if net.cfg is not None:
        c = net.cfg
        lines.append(
            f"  preprocess ({c.source} {c.weights}): resize {c.resize} {c.interpolation}, "
            f"crop {c.input_size[0]}, mean {c.mean}, std {c.std}"
        )
    _report(lines)
    return 0


def to_torch(args) -> int:
    from jaxcnn.interop import load_file, load_variables, save_file, to_torch_state_dict
    from jaxcnn.interop.files import read_meta

    meta = read_meta(args.src) if os.path.isdir(args.src) else {}
    kwargs = dict(meta.get("model_kwargs", {}))
    if args.num_classes is not None:
        kwargs["num_classes"] = args.num_classes
    variables = load_variables(args.src, args.model, **kwargs)
    source = None if args.source == "auto" else args.source
    if source is None and meta.get("source") not in (None, "variables", "jaxcnn"):
        source = meta["source"]
    reference = load_file(args.reference) if args.reference else None
    sd = to_torch_state_dict(args.model, variables, reference, source=source, **kwargs)
    save_file(sd, args.out)
    n = sum(int(np.prod(v.shape)) for v in sd.values())
    _report(
        [
            f"jaxcnn.convert: {args.model} from {args.src} -> {args.out}",
            f"  wrote:   {len(sd)} tensors ({n:,} values, buffers included)"
            + (f" in {args.reference}'s order" if reference is not None else ""),
            f"  names:   {source or 'the model reference library'}'s (e.g. {next(iter(sd))!r})",
        ]
    )
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m jaxcnn.convert", description=__doc__.split("\n")[0])
    p.add_argument("src", help="weights file, or (with --to torch) an Orbax directory")
    p.add_argument("out", help="new Orbax directory, or (with --to torch) a weights file")
    p.add_argument("--model", required=True, help="registered jaxcnn model name")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--in-channels", type=int, default=None)
    p.add_argument(
        "--source",
        default="auto",
        choices=["auto", "torchvision", "timm", "keras", "jaxcnn"],
        help="layout of the tensor names (auto: the one that names them)",
    )
    p.add_argument("--to", choices=["jaxcnn", "torch"], default="jaxcnn")
    p.add_argument("--reference", help="with --to torch: a state dict whose order to keep")
    args = p.parse_args(argv)
    try:
        return to_torch(args) if args.to == "torch" else to_jaxcnn(args)
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as e:
        print(f"jaxcnn.convert: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
