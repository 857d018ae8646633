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

Fine-tuning uses the run's optimizer at ``--lr_scale`` times its learning rate (cosine to 0),
its augmentation and batch size, on the run's train split. Accuracies on the validation and
the held-out test split (nothing is selected on either), and the sparsity counted from the
zeros of the final weights, per layer and over all kernels.

Fine-tuning uses today's step function (``jaxcnn.train.make_train_step``) and batches
(``jaxcnn.data.batches``); ``finetune`` is the one function to move onto the new Trainer.
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags, logging

_SPARSITIES = flags.DEFINE_list("sparsities", ["0.5", "0.7", "0.9"], "target sparsities")
_SCOPE = flags.DEFINE_enum("scope", "global", ["global", "layer"], "global or per-layer ranking")
_STEPS = flags.DEFINE_integer("finetune_steps", 0, "fine-tuning steps (0: one epoch)")
_LR_SCALE = flags.DEFINE_float("lr_scale", 0.1, "fine-tuning lr = run's lr x this")
_METHODS = flags.DEFINE_list(
    "methods", ["oneshot", "finetune", "gradual"], "which of oneshot, finetune, gradual"
)
_JSON = flags.DEFINE_string("json", None, "write the results to this JSON file")


def accuracy(model, variables, images, labels, batch_size=500) -> float:
    f = jax.jit(lambda v, x: model.apply(v, x, train=False))
    correct = 0
    for i in range(0, len(labels), batch_size):
        logits = f(variables, jnp.asarray(images[i : i + batch_size]))
        correct += int(np.sum(np.asarray(logits).argmax(-1) == labels[i : i + batch_size]))
    return correct / len(labels)


def finetune(run, data, pruning_tx, steps: int, lr_scale: float, seed: int = 0) -> dict:
    """``steps`` training steps from the run's weights with ``pruning_tx`` last in the chain;
    returns the new variables."""
    from jaxcnn.data import augment_batch, batches
    from jaxcnn.train import create_train_state, make_train_step
    from jaxcnn.train.optim import make_optimizer

    c = run.config
    lr = optax.cosine_decay_schedule(c["learning_rate"] * lr_scale, max(steps, 1))
    tx = optax.chain(make_optimizer(c["optimizer"], lr, c["weight_decay"]), pruning_tx)
    # a copy: the train step donates the state's buffers, the run's variables stay usable
    variables = jax.tree.map(jnp.copy, run.variables)
    state = create_train_state(run.model, tx, (1, *run.input_shape), seed=seed, variables=variables)
    augment = None
    if c["augment_shift"] or c["augment_flip"]:
        augment = lambda k, x: augment_batch(k, x, c["augment_shift"], c["augment_flip"])  # noqa
    step = make_train_step(c["label_smoothing"], augment=augment)
    xtr, ytr = data.train
    done, epoch = 0, 0
    while done < steps:
        for batch in batches(
            xtr, ytr, c["batch_size"], shuffle=True, seed=seed + 1, epoch=epoch, drop_remainder=True
        ):
            state, _ = step(state, batch)
            done += 1
            if done >= steps:
                break
        epoch += 1
    v = {"params": state.params}
    if state.batch_stats:
        v["batch_stats"] = state.batch_stats
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
    steps = steps or len(data.train[1]) // run.config["batch_size"]
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
    import dataclasses

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
    sparsities = [float(s) for s in _SPARSITIES.value]
    t0, load0 = time.perf_counter(), os.getloadavg()
    out = prune_run(argv[1], sparsities, _SCOPE.value, _STEPS.value, _LR_SCALE.value,
                    _METHODS.value)  # fmt: skip
    out["time_s"], out["loadavg"] = time.perf_counter() - t0, [load0, os.getloadavg()]
    print(markdown(out))
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(out, f, indent=1)
        print(f"wrote {_JSON.value}")


if __name__ == "__main__":
    app.run(main)
