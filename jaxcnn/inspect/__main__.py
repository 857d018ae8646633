"""Command line: ``python -m jaxcnn.inspect MODEL`` (or ``jaxcnn-inspect MODEL``).

Prints the per-layer summary and the receptive-field table of a registered model, and can
write pictures, fold its BatchNorms and export it::

    python -m jaxcnn.inspect resnet50 --depth 2
    python -m jaxcnn.inspect lenet5 --feature-maps docs/lenet5_maps.png --image camera
    python -m jaxcnn.inspect resnet18 --erf erf.png --fold-bn --export resnet18.stablehlo
    python -m jaxcnn.inspect vit_ti_16 --input-size 64 64 3 --pictures out/vit

``--pictures DIR`` writes ``feature_maps.png``, ``filters.png``, ``erf.png`` and, for ViT/Swin,
``attention.png`` into DIR.

Weights are random (``init``-like draws) unless the model is given variables through the
Python API: the pictures show what an untrained network computes.
"""

from __future__ import annotations

import argparse
import sys
import time


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jaxcnn.inspect",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help="registered model name (see jaxcnn.list_models())")
    p.add_argument(
        "--input-size",
        nargs=3,
        type=int,
        metavar=("H", "W", "C"),
        help="input size (default: the model's registered size)",
    )
    p.add_argument("--batch", type=int, default=1, help="batch size for shapes/FLOPs")
    p.add_argument("--num-classes", type=int, help="build the model with this many classes")
    p.add_argument("--depth", type=int, help="summary rows down to this nesting depth")
    p.add_argument("--no-flops", action="store_true", help="skip the per-layer FLOPs (faster)")
    p.add_argument("--no-summary", action="store_true", help="do not print the summary")
    p.add_argument(
        "--rf", action="store_true", help="print the receptive-field table (default unless --no-rf)"
    )
    p.add_argument("--no-rf", action="store_true", help="do not print receptive fields")
    p.add_argument(
        "--rf-depth",
        type=int,
        default=1,
        help="module-output receptive fields down to this depth (default 1)",
    )
    p.add_argument(
        "--pictures",
        metavar="DIR",
        help="write feature_maps.png, filters.png, "
        "erf.png (and attention.png for ViT/Swin) into DIR",
    )
    p.add_argument("--feature-maps", metavar="OUT.png", help="write feature maps of --layer")
    p.add_argument(
        "--layer",
        action="append",
        metavar="NAME",
        help="module path for --feature-maps (repeatable; default: a few spread over the depth)",
    )
    p.add_argument(
        "--image",
        default="astronaut",
        help="camera, astronaut, coffee, chelsea, rocket or an image file",
    )
    p.add_argument("--max-channels", type=int, default=16)
    p.add_argument("--filters", metavar="OUT.png", help="write the first conv's filters")
    p.add_argument("--erf", metavar="OUT.png", help="write the effective receptive field")
    p.add_argument(
        "--erf-layer",
        metavar="NAME",
        help="conv/pool row or module path (default: the last conv/pool with a local field)",
    )
    p.add_argument("--erf-samples", type=int, default=16)
    p.add_argument("--attention", metavar="OUT.png", help="write the attention rollout (ViT)")
    p.add_argument(
        "--fold-bn",
        action="store_true",
        help="fold conv->BatchNorm pairs; report parameters and timing",
    )
    p.add_argument("--export", metavar="OUT.stablehlo", help="write the serialized StableHLO")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from jaxcnn import inspect as ji
    from jaxcnn import models
    from jaxcnn.inspect._common import random_variables
    from jaxcnn.utils import abstract_init

    try:
        info = models.model_info(args.model)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    kwargs = {} if args.num_classes is None else {"num_classes": args.num_classes}
    size = tuple(args.input_size) if args.input_size else info.input_size
    shape = (args.batch, *size)
    probe = models.create_model(args.model)
    if hasattr(probe, "img_size") and tuple(size[:2]) != tuple(info.input_size[:2]):
        kwargs["img_size"] = tuple(size[:2])  # ViT: position embeddings for this grid
    model = models.create_model(args.model, **kwargs)
    try:
        if not args.no_summary:
            s = ji.summary(model, shape, depth=args.depth, flops=not args.no_flops)
            s.model_name = args.model
            print(s, end="\n\n")
        rf = None
        if not args.no_rf or args.rf:
            rf = ji.receptive_fields(model, (1, *size))
            rf.model_name = args.model
            print(rf)
            print(f"\nReceptive field at module outputs (depth {args.rf_depth}):")
            print(rf.module_table(args.rf_depth), end="\n\n")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    variables = None

    def weights():
        nonlocal variables
        if variables is None:
            variables = random_variables(abstract_init(model, (1, *size)), args.seed, stats=False)
        return variables

    if args.pictures:
        import os

        os.makedirs(args.pictures, exist_ok=True)
        join = lambda f: os.path.join(args.pictures, f)  # noqa: E731
        args.feature_maps = args.feature_maps or join("feature_maps.png")
        args.filters = args.filters or join("filters.png")
        if rf is None or any(r.size[0] is not None and r.axes[0] is not None for r in rf.rows):
            args.erf = args.erf or join("erf.png")
        if args.attention is None and (rf is None or rf.output.size[0] is None):
            args.attention = join("attention.png")
    image = None
    if args.feature_maps or args.attention:
        image = ji.sample_image(args.image, size[:2], size[2])
    if args.feature_maps:
        layers = args.layer or ji.default_layers(model, (1, *size))
        assert image is not None  # sampled above
        ji.plot_feature_maps(
            model,
            weights(),
            image,
            layers,
            args.feature_maps,
            args.max_channels,
            title=f"{args.model}: feature maps (random weights) of {args.image}",
        )
        print(f"feature maps of {', '.join(layers)} -> {args.feature_maps}")
    if args.filters:
        ji.plot_filters(model, weights(), args.filters, input_shape=(1, *size))
        print(f"first-layer filters -> {args.filters}")
    if args.erf:
        if rf is None:
            rf = ji.receptive_fields(model, (1, *size))
            rf.model_name = args.model
        erf = ji.effective_receptive_field(
            model, args.erf_layer, rf=rf, num_samples=args.erf_samples, seed=args.seed
        )
        erf.save_png(args.erf)
        print(f"{erf}\n  -> {args.erf}")
    if args.attention:
        assert image is not None  # sampled above
        try:
            ji.plot_attention(model, weights(), image, args.attention)
            print(f"attention map -> {args.attention}")
        except ValueError as e:
            print(f"attention: {e}", file=sys.stderr)
            if not args.pictures:
                return 2
    if args.fold_bn:
        report = ji.fold_report(model, (args.batch, *size))
        report.model_name = args.model
        print(report)
    if args.export:
        t = time.perf_counter()
        exp = ji.export_model(model, weights(), (args.batch, *size))
        ji.save_exported(exp, args.export)
        print(
            f"StableHLO ({', '.join(exp.platforms)}; input {exp.in_avals[0].str_short()}) "
            f"-> {args.export} ({time.perf_counter() - t:.1f} s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
