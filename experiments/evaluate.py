"""Evaluate trained runs, alone or as a soft-voting ensemble (mean of the members' softmax).

    python -m experiments.evaluate runs/lenet_s0                       # one run, test split
    python -m experiments.evaluate --ensemble runs/lenet_s0 runs/lenet_s1 runs/lenet_s2
    python -m experiments.evaluate --ensemble A B C --split=validation --json=out.json

Each argument is the --workdir of ``python -m experiments.train``; its newest checkpoint is
loaded (``--step`` for another). Members of an ensemble may be different models but must have
seen the same data: the same data keys of the config (dataset, splits, input size, transform,
normalisation) and the same evaluation transform derived from them (checked). ``--split``:
``test`` (reporting only), ``validation`` (the run's own or held-out split) or ``train``.
Prints accuracy and negative log-likelihood per member and for the ensemble; ``--json`` writes
them.
"""

from __future__ import annotations

from absl import app, flags, logging


def _define_flags():
    """The command line's flags (defined when run as a script, so that importing this
    module beside another experiment's never defines a flag twice)."""
    flags.DEFINE_bool("ensemble", False, "also evaluate the runs' ensemble")
    flags.DEFINE_enum("split", "test", ["test", "validation", "train"], "which split")
    flags.DEFINE_integer("step", None, "checkpoint step (default: each run's newest)")
    flags.DEFINE_integer("batch_size", 500, "evaluation batch size")
    flags.DEFINE_string("json", None, "write the results to this JSON file")


def evaluate_runs(run_dirs, split="test", ensemble=True, step=None, batch_size=500) -> dict:
    """Load ``run_dirs`` and evaluate each (and their ensemble) on ``split``."""
    from experiments import runs
    from jaxcnn.compress import Ensemble

    if not run_dirs:
        raise ValueError("give at least one run directory")
    if ensemble and len(run_dirs) < 2:
        raise ValueError(f"an ensemble needs >= 2 runs, got {len(run_dirs)}")
    configs = [runs.read_config(d) for d in run_dirs]
    for d, c in zip(run_dirs[1:], configs[1:]):
        diff = {k: (configs[0][k], c[k]) for k in runs.DATA_KEYS if configs[0][k] != c[k]}
        if diff:
            raise ValueError(
                f"{d} saw other data than {run_dirs[0]}: "
                + ", ".join(f"{k} {a!r} vs {b!r}" for k, (a, b) in diff.items())
            )
    data = runs.load_run_data(configs[0])
    for d, c in zip(run_dirs[1:], configs[1:]):
        if (c["model"], c["model_kwargs"]) == (configs[0]["model"], configs[0]["model_kwargs"]):
            continue  # same data keys, same model: the same transform
        pre = runs.run_preprocess(c, data)  # e.g. another model's default input size or mean
        diff = [
            f"{k} {getattr(data.pre, k)!r} vs {getattr(pre, k)!r}"
            for k in runs.EVAL_TRANSFORM_KEYS
            if getattr(pre, k) != getattr(data.pre, k)
        ]
        if diff:
            raise ValueError(
                f"{d} sees other inputs than {run_dirs[0]} (its model's defaults): "
                + ", ".join(diff)
            )
    loaded = [runs.load_run(d, step) for d in run_dirs]
    images, labels = data.get(split)
    res = Ensemble([(r.model, r.variables) for r in loaded]).evaluate(images, labels, batch_size)
    out = {
        "split": split,
        "dataset": data.name,
        "members": [
            {"run": r.directory, "model": r.config["model"], "step": r.step, **m}
            for r, m in zip(loaded, res["members"])
        ],
    }
    if ensemble:
        out["ensemble"] = {k: res[k] for k in ("accuracy", "nll", "count")}
    return out


def format_results(out: dict) -> str:
    lines = [f"{out['dataset']}, {out['split']} split ({out['members'][0]['count']} examples)"]
    lines.append(f"{'run':<40} {'model':<18} {'step':>6} {'accuracy':>9} {'nll':>8}")
    for m in out["members"]:
        name = m["run"].rstrip("/").split("/")[-1]
        lines.append(
            f"{name:<40} {m['model']:<18} {m['step']:>6} {m['accuracy']:>9.4f} {m['nll']:>8.4f}"
        )
    if "ensemble" in out:
        e = out["ensemble"]
        k = len(out["members"])
        lines.append(
            f"{f'ensemble of {k} (mean softmax)':<40} {'':<18} {'':>6} "
            f"{e['accuracy']:>9.4f} {e['nll']:>8.4f}"
        )
    return "\n".join(lines)


def main(argv):
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    out = evaluate_runs(
        argv[1:], flags.FLAGS.split, flags.FLAGS.ensemble, flags.FLAGS.step, flags.FLAGS.batch_size
    )
    print(format_results(out))
    if flags.FLAGS.json:
        from experiments.runs import save_json

        save_json(flags.FLAGS.json, out)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
