"""Step time of the recipe configs with and without their augmentations, and the input wait.

    python -m experiments.benchmark_recipes                      # the four recipe configs
    python -m experiments.benchmark_recipes --configs resnet18_cifar10 --steps 8
    python -m experiments.benchmark_recipes --quick              # tiny models, seconds

Each recipe config (``experiments/configs/<name>.py``) runs on the training engine with its
real model at its real input size, only the sizes overridden: the bundled digits (resized and
repeated to RGB, so the host-side transforms do the work of real images of that size), a batch
of ``--batch-size``, ``--workers`` input processes, two epochs of ``--steps`` steps. The
second epoch (compiled, pipeline started) is what is reported, from the engine's history:
seconds per step (``batch / train_images_per_s``) and ``train_data_wait_fraction``, the part of
the step time the training loop waited for the next batch. Each config runs twice: as written
(``recipe``) and with every augmentation key at its library default (``plain``: no
RandAugment/TrivialAugment, colour jitter, random erasing, Mixup or CutMix; the config's crop
and flip transform stays). A data-wait fraction near 0 means the host keeps up with the step.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import tempfile

from experiments.bench_common import machine_line

RECIPES = ("resnet18_cifar10", "resnet50_imagenet", "vit_s16_imagenet", "convnext_t_imagenet")

# --quick (and tests/test_recipes.py's end-to-end runs): small models for 32x32 inputs
QUICK_MODELS = {
    "resnet50_imagenet": {"num_filters": 16, "conv_impl": "xla"},
    "vit_s16_imagenet": {
        "img_size": 32,
        "patch_size": 8,
        "hidden_dim": 32,
        "depth": 2,
        "num_heads": 2,
        "mlp_dim": 64,
    },
    "convnext_t_imagenet": {"dims": (8, 16, 32, 64), "depths": (1, 1, 1, 1), "conv_impl": "xla"},
    "resnet18_cifar10": {"num_filters": 8},
}


def plain_overrides() -> dict:
    """Every augmentation key (policy, jitter, erasing, Mixup/CutMix) at its default."""
    from jaxcnn.tasks.classification import AUGMENT_FIELDS, MIXUP_FIELDS

    return {k: f.default for k, f in {**AUGMENT_FIELDS, **MIXUP_FIELDS}.items()}


def recipe_config(name: str, batch_size: int, steps: int, workers: int, quick: bool) -> dict:
    """The recipe config ``name`` with only its sizes overridden (and the digits as data)."""
    from experiments.cli import CONFIGS, load_config_file

    cfg = dict(load_config_file(str(CONFIGS / f"{name}.py")))
    size = tuple(cfg["input_size"])
    overrides = dict(
        dataset="digits",
        num_train=batch_size * steps,
        validation_split=batch_size,
        test_split=batch_size,
        batch_size=batch_size,
        eval_batch_size=batch_size,
        epochs=2,
        warmup_epochs=0.5,
        grad_accum_steps=1,
        channels=3,
        num_workers=workers,
        progress=False,
        keep_checkpoints=1,
    )
    if quick:
        size = (32, 32)
        overrides["model_kwargs"] = {**dict(cfg.get("model_kwargs", {})), **QUICK_MODELS[name]}
    overrides["input_size"] = size
    cfg.update(overrides)
    return cfg


def measure(cfg: dict, workdir: str) -> dict:
    """Train ``cfg`` (two epochs) and read the second epoch's throughput and input wait."""
    from jaxcnn.tasks import Classification
    from jaxcnn.train import Trainer

    res = Trainer(Classification(), cfg, workdir).run()
    hist = json.loads((pathlib.Path(workdir) / "metrics.json").read_text())["history"]
    last = hist[-1]
    rate = last["train_images_per_s"]
    return {
        "s_per_step": cfg["batch_size"] / rate,
        "images_per_s": rate,
        "data_wait_fraction": last["train_data_wait_fraction"],
        "compilations": res["compilations"]["train_step"],
    }


def run(names, batch_size: int, steps: int, workers: int, quick: bool) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            for variant in ("plain", "recipe"):
                cfg = recipe_config(name, batch_size, steps, workers, quick)
                if variant == "plain":
                    cfg.update(plain_overrides())
                out = measure(cfg, str(pathlib.Path(tmp) / f"{name}_{variant}"))
                row = {
                    "config": name,
                    "variant": variant,
                    "model": cfg["model"],
                    "input": "x".join(map(str, cfg["input_size"])),
                    "batch": batch_size,
                    **out,
                }
                rows.append(row)
                print(
                    f"{name:>22} {variant:>6}: {row['s_per_step']:.3f} s/step, data wait "
                    f"{row['data_wait_fraction']:.1%}",
                    flush=True,
                )
    return rows


def table(rows) -> str:
    by = {(r["config"], r["variant"]): r for r in rows}
    lines = [
        "| config | model, input, batch | s/step plain | s/step recipe | data wait plain "
        "| data wait recipe |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name in dict.fromkeys(r["config"] for r in rows):
        p, r = by[(name, "plain")], by[(name, "recipe")]
        lines.append(
            f"| `{name}` | `{r['model']}`, {r['input']}, {r['batch']} | {p['s_per_step']:.3f} | "
            f"{r['s_per_step']:.3f} | {p['data_wait_fraction']:.1%} | "
            f"{r['data_wait_fraction']:.1%} |"
        )
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", default=",".join(RECIPES), help="comma-separated recipe names")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=6, help="steps per epoch (2 epochs)")
    ap.add_argument("--workers", type=int, default=2, help="input worker processes")
    ap.add_argument("--quick", action="store_true", help="tiny models at 32x32 (a smoke test)")
    ap.add_argument("--json", help="write the rows here")
    a = ap.parse_args(argv)
    from jaxcnn.utils import enable_compilation_cache

    enable_compilation_cache()
    names = [n for n in a.configs.split(",") if n]
    unknown = sorted(set(names) - set(RECIPES))
    if unknown:
        ap.error(f"unknown recipe config(s) {unknown}; expected some of {', '.join(RECIPES)}")
    import jax

    machine = machine_line(jax=jax.__version__)
    print(machine, flush=True)
    rows = run(names, a.batch_size, a.steps, a.workers, a.quick)
    print("\n" + table(rows))
    if a.json:
        pathlib.Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(a.json).write_text(json.dumps({"machine": machine, "rows": rows}))
    return rows


if __name__ == "__main__":
    main()
