"""Magnitude pruning of a trained run: accuracy vs sparsity, one-shot and with fine-tuning.

    python -m experiments.prune runs/compress/lenet_s0 --sparsities=0.5,0.7,0.9 \
        --json=prune_lenet.json
    python -m experiments.prune runs/compress/resnet18 --finetune_steps=28 --json=prune_r18.json

For every sparsity (``--scope=global``: one threshold over all conv / dense kernels, or
``layer``: the same fraction in each), from the run's trained weights:

- ``one-shot``: prune, no training;
- ``one-shot + fine-tune``: prune, then ``--finetune_steps`` steps (default one epoch) with the
  masks fixed (``magnitude_pruning(masks=...)`` last in the optimizer chain);
- ``gradual``: ``--finetune_steps`` steps from the dense weights with the sparsity rising as
  Zhu & Gupta's cubic schedule over the first 75% of them, masks updated 8 times.

Fine-tuning is the run's classification task on the training engine (``jaxcnn.train.Trainer``)
with the run's optimizer at ``--lr_scale`` times its learning rate (cosine to 0), its
augmentation, normalisation and batch size, on the run's train split. Accuracies on the
validation and the held-out test split (nothing is selected on either), and the sparsity
counted from the zeros of the final weights, per layer and over all kernels.
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags, logging


def _define_flags():
    """The command line's flags (defined when run as a script, so that importing this
    module beside another experiment's never defines a flag twice)."""
    flags.DEFINE_list("sparsities", ["0.5", "0.7", "0.9"], "target sparsities")
    flags.DEFINE_enum("scope", "global", ["global", "layer"], "global or per-layer ranking")
    flags.DEFINE_integer("finetune_steps", 0, "fine-tuning steps (0: one epoch)")
    flags.DEFINE_float("lr_scale", 0.1, "fine-tuning lr = run's lr x this")
    flags.DEFINE_list(
        "methods", ["oneshot", "finetune", "gradual"], "which of oneshot, finetune, gradual"
    )
    flags.DEFINE_string("json", None, "write the results to this JSON file")


def accuracy(model, variables, images, labels, batch_size=500) -> float:
    f = jax.jit(lambda v, x: model.apply(v, x, train=False))
    correct = 0
    for i in range(0, len(labels), batch_size):
        logits = f(variables, jnp.asarray(images[i : i + batch_size]))
        correct += int(np.sum(np.asarray(logits).argmax(-1) == labels[i : i + batch_size]))
    return correct / len(labels)


def finetune(run, data, pruning_tx, steps: int, lr_scale: float, seed: int = 0) -> dict:
    """``steps`` training steps of the run's classification task on the engine
    (:class:`jaxcnn.train.Trainer`) from the run's weights, with ``pruning_tx`` last in the
    optimizer chain; returns the new variables.

    The run's config (optimizer, batch size, label smoothing, augmentation, normalisation) at
    ``lr_scale`` times its learning rate, cosine to 0 over the ``steps``; the train split is
    :class:`jaxcnn.data.Repeat`-ed to ``steps`` batches, so the budget is one epoch of the
    engine, evaluated on the validation split at its end.
    """
    import tempfile

    from jaxcnn import data as data_lib
    from jaxcnn.tasks import Classification
    from jaxcnn.train import Trainer

    class PrunedClassification(Classification):
        def build(self, ctx):
            super().build(ctx)
            self.tx = optax.chain(self.tx, pruning_tx)

        def finish(self, state, result, workdir):
            return None  # no pictures of an intermediate run

    c = run.config
    cfg = {
        **c,
        "learning_rate": c["learning_rate"] * lr_scale,
        "schedule": "cosine",
        "warmup_epochs": 0.0,
        "epochs": 1,
        "seed": seed,
        "init_from": "",
        "mean": data.pre.mean,  # the run's normalisation, not the statistics of the copy
        "std": data.pre.std,
        "early_stopping_patience": 0,
        "eval_every_steps": 0,
        "checkpoint_every_steps": 0,
        "keep_checkpoints": 1,
        "keep_best": 0,
        "progress": False,
    }
    sp = data.splits
    budget = data_lib.Repeat(sp.train, steps * c["batch_size"], seed=seed)
    splits = dataclasses.replace(sp, train=budget)
    task = PrunedClassification(splits=splits, variables=run.variables)
    with tempfile.TemporaryDirectory() as workdir:
        state = Trainer(task, cfg, workdir).run()["state"]
    v = {"params": jax.device_get(state.params)}
    if state.batch_stats:
        v["batch_stats"] = jax.device_get(state.batch_stats)
    return v


def prune_run(run_dir, sparsities, scope, steps, lr_scale, methods) -> dict:
    from experiments import runs
    from jaxcnn.compress import (
        apply_masks,
        magnitude_masks,
        magnitude_pruning,
        polynomial_sparsity,
        sparsity_report,
    )

    run = runs.load_run(run_dir)
    data = runs.load_run_data(run.config)
    steps = steps or len(data.splits.train) // run.config["batch_size"]
    xva, yva = data.get("validation")
    xte, yte = data.test

    def scores(variables):
        rep = sparsity_report(variables["params"])
        return {
            "validation_accuracy": accuracy(run.model, variables, xva, yva),
            "test_accuracy": accuracy(run.model, variables, xte, yte),
            "sparsity": rep["sparsity"],
            "zeros": rep["zeros"],
            "size": rep["size"],
            "layers": {k: v["sparsity"] for k, v in rep["layers"].items()},
        }

    out = {
        "run": run.directory,
        "model": run.config["model"],
        "scope": scope,
        "finetune_steps": steps,
        "lr_scale": lr_scale,
        "dense": scores(run.variables),
        "results": [],
    }
    for s in sparsities:
        masks = magnitude_masks(run.variables["params"], s, scope=scope)
        pruned = {**run.variables, "params": apply_masks(run.variables["params"], masks)}
        rec = {"target": s}
        if "oneshot" in methods:
            rec["oneshot"] = scores(pruned)
        if "finetune" in methods:
            t = time.perf_counter()
            tx = magnitude_pruning(masks=masks)
            ft = finetune(runs_with(run, pruned), data, tx, steps, lr_scale)
            rec["finetune"] = {**scores(ft), "time_s": time.perf_counter() - t}
        if "gradual" in methods:
            t = time.perf_counter()
            sched = polynomial_sparsity(s, begin_step=0, end_step=max(int(0.75 * steps), 1))
            tx = magnitude_pruning(sched, scope=scope, update_every=max(sched.end_step // 8, 1))
            gr = finetune(run, data, tx, steps, lr_scale)
            rec["gradual"] = {**scores(gr), "time_s": time.perf_counter() - t}
        out["results"].append(rec)
        print(summary_line(out["model"], rec), flush=True)
    return out


def runs_with(run, variables):
    return dataclasses.replace(run, variables=variables)


def summary_line(model, rec) -> str:
    parts = [f"{model} {100 * rec['target']:.0f}%:"]
    for k in ("oneshot", "finetune", "gradual"):
        if k in rec:
            r = rec[k]
            parts.append(
                f"{k} val {100 * r['validation_accuracy']:.2f} test {100 * r['test_accuracy']:.2f}"
                f" (sparsity {100 * r['sparsity']:.2f}%)"
            )
    return "  ".join(parts)


def markdown(out: dict) -> str:
    d = out["dense"]
    lines = [
        "| sparsity | one-shot | one-shot + fine-tune | gradual (fine-tune) | achieved |",
        "|---|---|---|---|---|",
        f"| 0% (dense) | {100 * d['test_accuracy']:.2f}% | | | |",
    ]
    for rec in out["results"]:
        cells = []
        for k in ("oneshot", "finetune", "gradual"):
            r = rec.get(k)
            cells.append(
                f"{100 * r['test_accuracy']:.2f}% (val {100 * r['validation_accuracy']:.2f})"
                if r
                else ""
            )
        achieved = {f"{100 * rec[k]['sparsity']:.2f}%" for k in ("oneshot", "finetune", "gradual")
                    if k in rec}  # fmt: skip
        lines.append(f"| {100 * rec['target']:.0f}% | " + " | ".join(cells) + " | "
                     + ", ".join(sorted(achieved)) + " |")  # fmt: skip
    return "\n".join(lines)


def main(argv):
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    if len(argv) != 2:
        raise app.UsageError("give one run directory")
    sparsities = [float(s) for s in flags.FLAGS.sparsities]
    t0, load0 = time.perf_counter(), os.getloadavg()
    f = flags.FLAGS
    out = prune_run(argv[1], sparsities, f.scope, f.finetune_steps, f.lr_scale, f.methods)
    out["time_s"], out["loadavg"] = time.perf_counter() - t0, [load0, os.getloadavg()]
    print(markdown(out))
    if flags.FLAGS.json:
        from experiments.runs import save_json

        save_json(flags.FLAGS.json, out)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
