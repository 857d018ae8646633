"""Transfer-learning study: pretrain on some classes, transfer to others with few labels.

    python -m experiments.transfer --config experiments/configs/transfer_mnist.py --quick
    python -m experiments.transfer --config experiments/configs/transfer_mnist.py \
        --config.models='("resnet18_cifar",)' --workdir runs/transfer_resnet18

For each backbone in the config: pretrain on the source classes (cached as
``<workdir>/pretrained/<model>.msgpack``; a rerun reuses it), then for each number of labelled
target examples compare, with the same step budget and optimizer (Adam, cosine decay):

- ``scratch``: a fresh model, everything trains;
- ``feature_extractor``: frozen backbone; pooled last-stage features
  (``transfer.extract_features``) and a softmax-regression head (``transfer.fit_linear``);
- ``finetune``: new head, everything trains, learning rate ``lr * decay^(stages from head)``;
- ``gradual_unfreezing``: head only, then also the last backbone stage, then everything;
- ``lora``: rank-r LoRA on every conv/dense kernel but the head, base weights frozen (and their
  BatchNorm statistics), new head trained; merged into plain weights for evaluation.

Writes a Markdown table (accuracy, trainable parameters, wall time per run) to stdout and to
``<workdir>/results.md``, the records to ``results.json`` and ``accuracy.png``.
"""

from __future__ import annotations

import json
import os
import pathlib
import time

from absl import app, flags, logging
from ml_collections import config_flags

_DEFAULT = str(pathlib.Path(__file__).parent / "configs" / "transfer_mnist.py")
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT, "experiment config file")
_WORKDIR = flags.DEFINE_string("workdir", None, "output directory (default runs/<config name>)")
_QUICK = flags.DEFINE_bool("quick", False, "only the config's quick_models (LeNet-5)")

METHOD_NAMES = {
    "scratch": "from scratch",
    "feature_extractor": "feature extractor (frozen)",
    "finetune": "fine-tune, layer-wise LR",
    "gradual_unfreezing": "gradual unfreezing",
    "lora": "LoRA",
}


# ----------------------------------------------------------------------------------- data


def load_task(c):
    """Normalised arrays: source train/test (classes relabelled 0..k-1) and target pool/test."""
    import numpy as np

    from jaxcnn.data import load_dataset, preprocess, split

    ds = load_dataset(c.dataset, c.data_dir or None)
    train, test = split(
        ds, int(c.test_split) if c.test_split >= 1 else float(c.test_split), seed=None
    )

    def pick(d, classes):
        idx = np.flatnonzero(np.isin(d.labels, classes))
        sub = d.subset(idx)
        sub.labels = np.searchsorted(np.asarray(classes), sub.labels).astype(np.int32)
        return sub

    src_tr, src_te = pick(train, c.source_classes), pick(test, c.source_classes)
    tgt_pool, tgt_te = pick(train, c.target_classes), pick(test, c.target_classes)
    xs, ys, (mean, std) = preprocess(src_tr, tuple(c.input_size), c.channels)
    norm = lambda d: preprocess(d, tuple(c.input_size), c.channels, mean, std)[:2]  # noqa: E731
    return {
        "source_train": (xs, ys),
        "source_test": norm(src_te),
        "target_pool": norm(tgt_pool),
        "target_test": norm(tgt_te),
    }


def stream(n: int, batch_size: int, seed: int):
    """Index batches of a fixed size over ``n`` examples, reshuffled every pass."""
    import numpy as np

    rng = np.random.default_rng(seed)
    buf = np.empty(0, np.int64)
    while True:
        while len(buf) < batch_size:
            buf = np.concatenate([buf, rng.permutation(n)])
        yield buf[:batch_size]
        buf = buf[batch_size:]


# ----------------------------------------------------------------------------------- training


def train(state, x, y, steps, batch_size, seed, augment_shift, on_step=None):
    """``steps`` jitted steps on random batches of (x, y); returns the state."""
    import jax

    from jaxcnn.data import augment_batch
    from jaxcnn.train import make_train_step

    augment = (lambda k, im: augment_batch(k, im, augment_shift)) if augment_shift else None
    step_fn = make_train_step(augment=augment)
    for t, idx in zip(range(steps), stream(len(y), min(batch_size, len(y)), seed)):
        if on_step is not None:
            state = on_step(state, t)
        state, _ = step_fn(state, {"image": x[idx], "label": y[idx]})
    jax.block_until_ready(state.params)
    return state


def accuracy(state, x, y) -> float:
    from jaxcnn.train import make_eval_step
    from jaxcnn.train.loop import evaluate

    return evaluate(make_eval_step(num_classes=int(y.max()) + 1), state, x, y, 500)["accuracy"]


def pretrain(c, name, opts, data, workdir):
    """The backbone trained on the source classes, cached in ``workdir/pretrained``."""
    import jax
    import optax
    from flax import serialization

    from jaxcnn import models
    from jaxcnn.train import create_train_state

    xs, ys = data["source_train"]
    k = len(c.source_classes)
    model = models.create_model(name, num_classes=k, **opts.kwargs)
    shape = (1, *xs.shape[1:])
    meta = {
        "model": name,
        "kwargs": dict(opts.kwargs),
        "classes": list(c.source_classes),
        "dataset": c.dataset,
        "epochs": opts.pretrain_epochs,
        "batch_size": opts.pretrain_batch_size,
        "lr": opts.pretrain_lr,
        "seed": c.seed,
        "input_size": list(c.input_size),
    }
    path = pathlib.Path(workdir) / "pretrained" / f"{name}.msgpack"
    template = jax.eval_shape(lambda: model.init(jax.random.key(0), jax.numpy.zeros(shape)))
    if path.exists() and path.with_suffix(".json").exists():
        saved = json.loads(path.with_suffix(".json").read_text())
        if saved.get("meta") == meta:
            variables = serialization.from_bytes(template, path.read_bytes())
            print(
                f"{name}: pretrained backbone loaded from {path} (source accuracy "
                f"{saved['source_accuracy']:.4f})",
                flush=True,
            )
            return model, variables
    steps = opts.pretrain_epochs * (len(ys) // opts.pretrain_batch_size)
    tx = optax.adam(optax.cosine_decay_schedule(opts.pretrain_lr, steps))
    t0 = time.perf_counter()
    state = create_train_state(model, tx, shape, seed=c.seed)
    state = train(state, xs, ys, steps, opts.pretrain_batch_size, c.seed, c.augment_shift)
    acc = accuracy(state, *data["source_test"])
    secs = time.perf_counter() - t0
    print(
        f"{name}: pretrained on classes {list(c.source_classes)} ({len(ys)} images, {steps} "
        f"steps, {secs:.0f}s): source test accuracy {acc:.4f}",
        flush=True,
    )
    variables = jax.device_get(state.variables)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(serialization.to_bytes(variables))
    path.with_suffix(".json").write_text(
        json.dumps({"meta": meta, "source_accuracy": acc, "pretrain_time_s": secs}, indent=1)
    )
    return model, variables


def run_method(method, c, name, opts, pretrained, data, n, seed):
    """One transfer run; returns (accuracy, trainable parameters)."""
    import jax
    import numpy as np
    import optax

    from jaxcnn import models, transfer
    from jaxcnn.train import create_train_state

    xp, yp = data["target_pool"]
    order = np.random.default_rng(seed).permutation(len(yp))[:n]  # nested: 50 in 200 in 1000
    x, y = xp[order], yp[order]
    xt, yt = data["target_test"]
    k = len(c.target_classes)
    model = models.create_model(name, num_classes=k, **opts.kwargs)
    shape = (1, *x.shape[1:])
    tx = optax.adam(optax.cosine_decay_schedule(opts.lr, opts.steps))

    def run(state, on_step=None):
        return train(
            state,
            x,
            y,
            opts.steps,
            opts.batch_size,  # noqa
            seed,
            c.augment_shift,
            on_step,
        )

    if method == "scratch":
        state = run(create_train_state(model, tx, shape, seed=seed))
        return accuracy(state, xt, yt), models.count_params(model, shape)
    variables = transfer.replace_head(pretrained, model, shape, seed=seed)
    names = transfer.stages(model, shape)
    if method == "feature_extractor":
        (f,) = transfer.extract_features(model, variables, x, stages=[-1])
        (ft,) = transfer.extract_features(model, variables, xt, stages=[-1])
        head = transfer.fit_linear(f, y, k, steps=c.probe_steps, seed=seed)
        return transfer.linear_accuracy(head, ft, yt), transfer.count_params(head)
    if method == "finetune":
        labels = transfer.label_params(variables["params"], transfer.stage_rules(names))
        state = transfer.create_state(
            model,
            variables,
            tx,
            labels,
            seed=seed,
            lr_scales=transfer.layerwise_decay(names, c.layer_decay),
        )
        state = run(state)
        return accuracy(state, xt, yt), transfer.count_trainable(state.params, labels)
    if method == "gradual_unfreezing":
        starts = [int(round(f * opts.steps)) for f in c.unfreeze_at]
        phases = list(zip(starts, [["head"], [names[-2]], [".*"]]))
        unfreeze = transfer.GradualUnfreezing(phases, tx, model.apply, variables)
        state = run(unfreeze.init_state(model, variables, seed=seed), unfreeze.update)
        return accuracy(state, xt, yt), transfer.count_params(variables["params"])
    if method == "lora":
        lora = transfer.LoRA(rank=c.lora_rank, alpha=c.lora_alpha, exclude=("head",))
        params = lora.init(jax.random.key(seed), variables["params"])
        labels = transfer.label_params(
            params, [(".*/lora_[ab]", "lora"), ("head", "head"), (".*", None)]
        )
        state = transfer.create_state(
            model,
            {**variables, "params": params},
            tx,
            labels,
            lr_scales={"lora": c.lora_lr_multiplier},
            seed=seed,
            apply_fn=lora.wrap(model.apply),
        )
        state = run(state)
        merged = state.replace(params=lora.merge(state.params), apply_fn=model.apply)
        return accuracy(merged, xt, yt), transfer.count_trainable(state.params, labels)
    raise ValueError(f"unknown method {method!r}; expected one of {list(METHOD_NAMES)}")


# ----------------------------------------------------------------------------------- report


def _mean(records, key):
    import numpy as np

    v = np.array([r[key] for r in records], float)
    return float(v.mean()), float(v.std()) if len(v) > 1 else None


def table(records, models_run, counts) -> str:
    """One Markdown table per model; accuracy is the mean over seeds (± std when several),
    time the mean wall time of one run (compilation included)."""
    lines = []
    for name in models_run:
        rows = [r for r in records if r["model"] == name]
        if not rows:
            continue
        lines += [
            f"**{name}** (pretrained on source classes: test accuracy "
            f"{rows[0]['source_accuracy']:.4f})",
            "",
            "| method | trainable params | "
            + " | ".join(f"acc @{n}" for n in counts)
            + " | "
            + " | ".join(f"time @{n} (s)" for n in counts)
            + " |",
            "|---|---:|" + "---:|" * (2 * len(counts)),
        ]
        for m in dict.fromkeys(r["method"] for r in rows):
            runs = {n: [r for r in rows if r["method"] == m and r["labels"] == n] for n in counts}
            tp = sorted({r["trainable_params"] for rs in runs.values() for r in rs})

            def acc(rs):
                if not rs:
                    return "-"
                mean, std = _mean(rs, "accuracy")
                return f"{mean:.3f}" + (f" ± {std:.3f}" if std is not None else "")

            lines.append(
                f"| {METHOD_NAMES.get(m, m)} | {', '.join(f'{t:,}' for t in tp)} | "
                + " | ".join(acc(runs[n]) for n in counts)
                + " | "
                + " | ".join(
                    f"{_mean(runs[n], 'time_s')[0]:.1f}" if runs[n] else "-" for n in counts
                )
                + " |"
            )
        lines.append("")
    return "\n".join(lines)


def plot(records, models_run, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(models_run), figsize=(5.5 * len(models_run), 4), squeeze=False)
    for ax, name in zip(axes[0], models_run):
        rows = [r for r in records if r["model"] == name]
        for m in dict.fromkeys(r["method"] for r in rows):
            ns = sorted({r["labels"] for r in rows if r["method"] == m})
            pts = [
                (
                    n,
                    _mean([r for r in rows if r["method"] == m and r["labels"] == n], "accuracy")[
                        0
                    ],
                )
                for n in ns
            ]
            ax.plot(*zip(*pts), marker="o", label=METHOD_NAMES.get(m, m))
        ax.set_xscale("log")
        ax.set_xlabel("labelled target examples")
        ax.set_ylabel("test accuracy (digits 5-9)")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    c = _CONFIG.value
    name = pathlib.Path(flags.FLAGS["config"].config_filename).stem
    workdir = _WORKDIR.value or os.path.join("runs", name)
    os.makedirs(workdir, exist_ok=True)
    models_run = list(c.quick_models if _QUICK.value else c.models)
    if c.compilation_cache:  # runs differing only in data/seed reuse compiled steps
        import jax

        jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, c.compilation_cache))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    t_all = time.perf_counter()
    data = load_task(c)
    print(
        f"source: {len(data['source_train'][1])} train / {len(data['source_test'][1])} test; "
        f"target pool {len(data['target_pool'][1])}, target test "
        f"{len(data['target_test'][1])}",
        flush=True,
    )
    records = []
    for mname in models_run:
        opts = c.model_options[mname]
        model, pretrained = pretrain(c, mname, opts, data, workdir)
        src_acc = json.loads((pathlib.Path(workdir) / "pretrained" / f"{mname}.json").read_text())[
            "source_accuracy"
        ]
        for n in c.label_counts:
            for method in c.methods:
                for seed in opts.get("seeds") or c.seeds:  # a labelled subset + init each
                    t0 = time.perf_counter()
                    acc, trainable = run_method(method, c, mname, opts, pretrained, data, n, seed)
                    rec = {
                        "model": mname,
                        "method": method,
                        "labels": n,
                        "seed": seed,
                        "accuracy": acc,
                        "trainable_params": int(trainable),
                        "time_s": time.perf_counter() - t0,
                        "source_accuracy": src_acc,
                    }
                    records.append(rec)
                    print(
                        f"{mname:>16} {n:>5} labels  {METHOD_NAMES[method]:<28} seed {seed} "
                        f"acc {acc:.4f}  trainable {trainable:>10,}  {rec['time_s']:.1f}s",
                        flush=True,
                    )
    total = time.perf_counter() - t_all
    md = table(records, models_run, list(c.label_counts))
    md += (
        f"\nTotal wall time {total:.0f}s (data loading, pretraining unless cached, "
        f"{len(records)} transfer runs).\n"
    )
    print("\n" + md)
    (pathlib.Path(workdir) / "results.md").write_text(md)
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(
            {"config": c.to_dict(), "records": records, "total_time_s": total},
            f,
            indent=1,
            default=list,
        )
    plot(records, models_run, os.path.join(workdir, "accuracy.png"))
    print(f"wrote {workdir}/results.md, results.json, accuracy.png")


if __name__ == "__main__":
    app.run(main)
