"""``fit``: the training loop behind ``python -m experiments.train``.

Reads an ``ml_collections`` config (see ``experiments/configs/``), builds the data, model,
optimizer and ``TrainState``, trains with the jit-compiled step, evaluates every epoch, saves
checkpoints (resumable), and writes ``metrics.json``, ``curves.png`` and ``confusion.png`` to
the work directory.

Scale-out keys (``jaxcnn.train.mesh``, ``precision``, ``remat``): ``num_devices`` (0: every
device of every process; the global ``batch_size`` must divide by it), ``precision``
(``"float32"``, ``"bfloat16"``, ``"float16"`` with loss scaling), ``grad_accum_steps`` and
``remat`` (``"blocks"``, ``"dots"``, ``"full"``). The same config runs on 1 CPU, on all GPUs
of a VM, and on every host of a multi-host slice (each process started with the same command;
``jax.distributed`` is initialised from the environment): each process feeds only its rows of
every global batch, Orbax writes each checkpoint once, and only process 0 prints, shows the
progress bar and writes ``metrics.json`` and the plots.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxcnn import models
from jaxcnn.checkpoint import Checkpointer
from jaxcnn.data import augment_batch, batches, load_dataset, num_batches, preprocess, split
from jaxcnn.data.pipeline import prefetch_to_device
from jaxcnn.train import mesh as mesh_lib
from jaxcnn.train.optim import make_optimizer, make_schedule
from jaxcnn.train.plots import plot_confusion, plot_history
from jaxcnn.train.precision import get_policy, init_dynamic_scale
from jaxcnn.train.remat import check_remat, remat_blocks
from jaxcnn.train.state import create_train_state
from jaxcnn.train.steps import make_eval_step, make_train_step

__all__ = ["fit", "load_data", "evaluate", "DEFAULTS"]

log = logging.getLogger(__name__)

# Every key fit() reads, with its default; a config may set any subset.
DEFAULTS: dict[str, Any] = dict(
    model="lenet5_modern",
    model_kwargs={},
    dataset="digits",
    data_dir="",
    test_split=0.2,
    split_seed=0,
    num_train=0,
    input_size=(),
    batch_size=64,
    eval_batch_size=256,
    epochs=10,
    optimizer="adam",
    learning_rate=1e-3,
    schedule="cosine",
    warmup_epochs=0,
    weight_decay=0.0,
    grad_clip=0.0,
    label_smoothing=0.0,
    aux_weight=-1.0,
    augment_shift=0,
    augment_flip=False,
    seed=0,
    early_stopping_patience=0,
    checkpoint_every_steps=0,
    keep_checkpoints=2,
    keep_best=1,
    log_every_steps=20,
    progress=True,
    num_devices=0,
    precision="float32",
    grad_accum_steps=1,
    remat="",
)


def _cfg(config) -> dict:
    c = dict(DEFAULTS)
    given = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    unknown = sorted(set(given) - set(DEFAULTS) - {"description"})
    if unknown:
        import difflib

        hints = {k: difflib.get_close_matches(k, list(DEFAULTS), n=1) for k in unknown}
        raise ValueError(
            "unknown config keys: "
            + ", ".join(
                f"{k}" + (f" (did you mean {hints[k][0]}?)" if hints[k] else "") for k in unknown
            )
        )
    c.update(given)
    return c


def load_data(c: dict, info: models.ModelInfo):
    """Train and test arrays for config ``c``, fitted to the model's input size."""
    ds = load_dataset(c["dataset"], c["data_dir"] or None)
    test = c["test_split"]
    test = int(test) if test >= 1 else float(test)
    split_seed = None if c["split_seed"] is None or c["split_seed"] < 0 else c["split_seed"]
    train_ds, test_ds = split(ds, test, seed=split_seed, num_train=c["num_train"] or None)
    size = tuple(c["input_size"]) or info.input_size[:2]
    channels = c["model_kwargs"].get("in_channels", info.input_size[2])
    xtr, ytr, (mean, std) = preprocess(train_ds, size, channels)
    xte, yte, _ = preprocess(test_ds, size, channels, mean, std)
    return (xtr, ytr), (xte, yte), ds


def evaluate(eval_step, state, images, labels, batch_size, dp=None) -> dict:
    """Loss, accuracy and confusion matrix over a whole array (padded, masked batches);
    data-parallel over ``dp`` (a ``mesh.DataParallel``) if given."""
    acc = None
    it = (
        dp.batches(images, labels, batch_size)
        if dp is not None
        else prefetch_to_device(batches(images, labels, batch_size))
    )
    for batch in it:
        m = eval_step(state, batch)
        acc = m if acc is None else jax.tree.map(jnp.add, acc, m)
    acc = jax.device_get(acc)
    n = float(acc["count"])
    return {
        "loss": float(acc["loss_sum"]) / n,
        "accuracy": float(acc["correct"]) / n,
        "confusion": np.asarray(acc["confusion"]).astype(int),
    }


def fit(config, workdir: str, resume: bool = False, stop_at_step: int | None = None) -> dict:
    """Train as ``config`` says; returns the final metrics (also in ``workdir/metrics.json``).

    ``resume=True`` continues from the newest checkpoint in ``workdir/checkpoints``.
    ``stop_at_step`` stops after that many steps (after saving), as if the run were preempted.
    """
    c = _cfg(config)
    mesh_lib.initialize_distributed()  # no-op unless JAX_COORDINATOR_ADDRESS etc. are set
    main = mesh_lib.is_main_process()
    policy = get_policy(c["precision"])
    remat = check_remat(c["remat"])
    dp = mesh_lib.setup(c)  # ValueError now if the batch sizes do not divide by the devices
    os.makedirs(workdir, exist_ok=True)
    info = models.model_info(c["model"])
    (xtr, ytr), (xte, yte), ds = load_data(c, info)
    model = models.create_model(
        c["model"], num_classes=ds.num_classes, **{**policy.model_kwargs, **c["model_kwargs"]}
    )
    if remat == "blocks":
        model = remat_blocks(model)
    steps_per_epoch = num_batches(len(ytr), c["batch_size"], drop_remainder=True)
    if steps_per_epoch == 0:
        raise ValueError(
            f"batch_size {c['batch_size']} is larger than the {len(ytr)} training examples"
        )
    total = steps_per_epoch * c["epochs"]
    lr = make_schedule(
        c["schedule"], c["learning_rate"], total, int(c["warmup_epochs"] * steps_per_epoch)
    )
    tx = make_optimizer(c["optimizer"], lr, c["weight_decay"], grad_clip=c["grad_clip"] or None)
    state = dp.replicate(
        create_train_state(
            model, tx, (1, *xtr.shape[1:]), seed=c["seed"], dynamic_scale=init_dynamic_scale(policy)
        )
    )

    aux_weight = c["aux_weight"] if c["aux_weight"] >= 0 else info.extra.get("aux_weight", 0.0)
    if aux_weight and not c["model_kwargs"].get("aux_logits", True):
        aux_weight = 0.0
    augment = None
    if c["augment_shift"] or c["augment_flip"]:
        augment = lambda k, x: augment_batch(k, x, c["augment_shift"], c["augment_flip"])  # noqa
    train_step = make_train_step(
        c["label_smoothing"],
        aux_weight,
        augment=augment,
        mesh=dp,
        grad_accum_steps=int(c["grad_accum_steps"]),
        remat=None if remat == "blocks" else remat,
    )
    eval_step = make_eval_step(num_classes=ds.num_classes, mesh=dp)

    ckpt = Checkpointer(
        os.path.join(workdir, "checkpoints"),
        keep=c["keep_checkpoints"],
        keep_best=c["keep_best"],
        best_metric="test_accuracy",
    )
    history: list[dict] = []
    metrics_path = os.path.join(workdir, "metrics.json")
    if resume and ckpt.latest_step() is not None:
        state, step, _ = ckpt.restore(state)
        if os.path.exists(metrics_path):
            with open(metrics_path) as f:
                history = [
                    h
                    for h in json.load(f).get("history", [])
                    if h["epoch"] * steps_per_epoch <= step
                ]
        log.info("resumed from step %d", step)
        if main:
            print(f"Resumed from checkpoint at step {step} in {ckpt.directory}")

    def write(final=None, confusion=None):
        if not main:  # metrics and plots come from process 0 only
            return
        out = {
            "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in c.items()},
            "model": c["model"],
            "params": models.count_params(model, (1, *xtr.shape[1:])),
            "num_train": int(len(ytr)),
            "num_test": int(len(yte)),
            "history": history,
        }
        if final:
            out["final"] = final
        if confusion is not None:
            out["confusion"] = confusion.tolist()
        tmp = metrics_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(out, f, indent=1)
        os.replace(tmp, metrics_path)

    step = int(state.step)
    best, bad_epochs, stopped_early = -1.0, 0, False
    t_start = time.perf_counter()
    for epoch in range(step // steps_per_epoch, c["epochs"]):
        t0 = time.perf_counter()
        start = step - epoch * steps_per_epoch
        it = dp.batches(
            xtr,
            ytr,
            c["batch_size"],
            shuffle=True,
            seed=c["seed"],
            epoch=epoch,
            drop_remainder=True,
            start=start,
        )
        bar = tqdm(
            it,
            total=steps_per_epoch - start,
            leave=False,
            desc=f"epoch {epoch + 1}/{c['epochs']}",
            disable=not (c["progress"] and main),
        )
        sums = None
        for batch in bar:
            state, m = train_step(state, batch)
            sums = m if sums is None else jax.tree.map(jnp.add, sums, m)
            step += 1
            if c["log_every_steps"] and step % c["log_every_steps"] == 0 and c["progress"] and main:
                s = jax.device_get(sums)  # the only host sync inside an epoch
                bar.set_postfix(
                    loss=f"{s['loss_sum'] / s['count']:.4f}", acc=f"{s['correct'] / s['count']:.4f}"
                )
            if (
                c["checkpoint_every_steps"]
                and step % c["checkpoint_every_steps"] == 0
                and step % steps_per_epoch
            ):
                ckpt.save(step, state)
            if stop_at_step is not None and step >= stop_at_step:
                break
        bar.close()
        if stop_at_step is not None and step >= stop_at_step and step % steps_per_epoch:
            ckpt.save(step, state)
            ckpt.close()
            write()
            return {"stopped_at_step": step}
        s = jax.device_get(sums)
        ev = evaluate(eval_step, state, xte, yte, c["eval_batch_size"], dp)
        rec = {
            "epoch": epoch + 1,
            "step": step,
            "train_loss": float(s["loss_sum"] / s["count"]),
            "train_accuracy": float(s["correct"] / s["count"]),
            "test_loss": ev["loss"],
            "test_accuracy": ev["accuracy"],
            "epoch_time_s": time.perf_counter() - t0,
        }
        history.append(rec)
        ckpt.save(step, state, metrics={"test_accuracy": ev["accuracy"], "test_loss": ev["loss"]})
        write()
        msg = (
            f"epoch {epoch + 1:3d}/{c['epochs']}  train loss {rec['train_loss']:.4f} "
            f"acc {rec['train_accuracy']:.4f}  test loss {ev['loss']:.4f} "
            f"acc {ev['accuracy']:.4f}  ({rec['epoch_time_s']:.1f}s)"
        )
        if main:
            print(msg, flush=True)
        if stop_at_step is not None and step >= stop_at_step:
            ckpt.close()
            return {"stopped_at_step": step}
        if c["early_stopping_patience"]:
            if ev["accuracy"] > best:
                best, bad_epochs = ev["accuracy"], 0
            else:
                bad_epochs += 1
                if bad_epochs >= c["early_stopping_patience"]:
                    if main:
                        print(f"early stopping: no test-accuracy gain in {bad_epochs} epochs")
                    stopped_early = True
                    break
    ckpt.close()
    ev = evaluate(eval_step, state, xte, yte, c["eval_batch_size"], dp)
    final = {
        "test_accuracy": ev["accuracy"],
        "test_loss": ev["loss"],
        "epochs_run": len(history),
        "steps": int(state.step),
        "train_time_s": time.perf_counter() - t_start,
        "stopped_early": stopped_early,
        "compilations": {
            "train_step": train_step._cache_size(),
            "eval_step": eval_step._cache_size(),
        },
    }
    write(final, ev["confusion"])
    if history and main:
        plot_history(history, os.path.join(workdir, "curves.png"))
    if main:
        plot_confusion(
            ev["confusion"],
            os.path.join(workdir, "confusion.png"),
            ds.class_names,
            f"{c['model']} on {ds.name}: test accuracy {ev['accuracy']:.4f}",
        )
    final["state"] = state
    return final
