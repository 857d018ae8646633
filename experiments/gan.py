"""Train a DCGAN on real digits and judge it with a LeNet-5 trained on real digits.

    python -m experiments.gan                                  # configs/dcgan_mnist.py
    python -m experiments.gan --config experiments/configs/dcgan_mnist.py --config.epochs=5 \
        --workdir runs/gan --classifier_workdir runs/lenet_judge --resume

1. The judge: a LeNet-5 trained by ``jaxcnn.train.fit`` with ``configs/lenet_mnist.py`` (first
   8,000 test digits; ``classifier_epochs`` epochs) into ``--classifier_workdir``, or reused
   from there when it already holds a checkpoint.
2. The DCGAN (``dcgan_generator_<size>`` / ``dcgan_discriminator_<size>``) on all 10,000
   digits scaled to [-1, 1], with ``jaxcnn.train.gan``; after every epoch an 8x8 grid of
   samples from fixed noise (``samples/epoch_NNN.png``), the evaluation of
   ``num_eval_samples`` samples (``jaxcnn.train.gan_eval``) and a checkpoint.
3. Final grids (``samples_final.png``, ``samples_by_class.png``) and ``metrics.json``.
"""

import json
import os
import pathlib
import time

import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

_DEFAULT = str(pathlib.Path(__file__).parent / "configs" / "dcgan_mnist.py")
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT, "experiment config file")
_WORKDIR = flags.DEFINE_string("workdir", None, "output directory (default runs/<config name>)")
_CLS_DIR = flags.DEFINE_string(
    "classifier_workdir",
    None,
    "LeNet-5 judge directory (default <workdir>_judge); trained "
    "there unless it already holds a checkpoint",
)
_RESUME = flags.DEFINE_bool("resume", False, "continue from the newest GAN checkpoint")


def save_grid(images01, path, cols: int) -> None:
    """Tile ``(N, H, W, 1)`` images in [0, 1] into a grid PNG (1-pixel gaps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, h, w = images01.shape[:3]
    rows = -(-n // cols)
    grid = np.ones((rows * (h + 1) + 1, cols * (w + 1) + 1), np.float32)
    for i, img in enumerate(images01[..., 0]):
        r, c = divmod(i, cols)
        grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w] = img
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    plt.imsave(path, np.kron(grid, np.ones((3, 3))), cmap="gray", vmin=0, vmax=1)


def meets_target(ev) -> bool:
    """The issue's target for a set of samples: >= 80% confident, every class 5%-15%."""
    return bool(
        ev["confident_share"] >= 0.8
        and ev["min_class_share"] >= 0.05
        and ev["max_class_share"] <= 0.15
    )


def lr_scale(epoch: int, epochs: int, decay_start: int):
    """Learning-rate factor for a 0-based ``epoch``: 1 before ``decay_start`` (0: never), then
    linear towards 0 over the remaining epochs (``1 - (e - start + 1) / (epochs - start + 1)``)."""
    if not decay_start or epoch < decay_start:
        return None
    return 1.0 - (epoch - decay_start + 1) / (epochs - decay_start + 1)


def load_judge(workdir: str, c) -> "object":
    """Train (or reuse) the LeNet-5 judge; returns a ``gan_eval.Classifier``."""
    from experiments.configs import lenet_mnist
    from jaxcnn import models
    from jaxcnn.checkpoint import Checkpointer
    from jaxcnn.data import load_dataset, preprocess, split
    from jaxcnn.train.gan_eval import Classifier
    from jaxcnn.train.loop import fit

    cc = lenet_mnist.get_config()
    cc.data_dir, cc.epochs, cc.progress = c.data_dir, c.classifier_epochs, False
    ckpt_dir = os.path.join(workdir, "checkpoints")
    meta_path = os.path.join(workdir, "metrics.json")
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            trained = json.load(f).get("config", {}).get("epochs")
        if trained is not None and trained != cc.epochs:
            raise ValueError(
                f"the judge in {workdir} was trained for {trained} epochs, the config asks for "
                f"classifier_epochs={cc.epochs}: pass --config.classifier_epochs={trained} to "
                f"reuse it, or --classifier_workdir=<a new directory> to train a new one"
            )
    ckpt = Checkpointer(ckpt_dir, keep=1, keep_best=0)
    step = ckpt.latest_step()
    if step is None:
        print(f"training the LeNet-5 judge ({cc.epochs} epochs) in {workdir}", flush=True)
        ckpt.close()
        result = fit(cc, workdir)
        print(f"judge test accuracy {result['test_accuracy']:.4f}", flush=True)
        ckpt = Checkpointer(ckpt_dir, keep=1, keep_best=0)
        step = ckpt.latest_step()
    tree, step, _ = ckpt.restore(None)  # the saved tree as written: only the params are used
    ckpt.close()
    with open(os.path.join(workdir, "metrics.json")) as f:
        acc = json.load(f).get("final", {}).get("test_accuracy")
    # the standardisation fit() used: statistics of the judge's training split
    ds = load_dataset(cc.dataset, cc.data_dir or None)
    train_ds, _ = split(ds, cc.test_split, seed=None)
    _, _, (mean, std) = preprocess(train_ds, (28, 28), 1)
    model = models.create_model(cc.model, num_classes=10)
    print(f"LeNet-5 judge from {workdir} (step {step}, test accuracy {acc})", flush=True)
    return Classifier(model, {"params": tree["params"]}, mean, std), acc


def main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    import jax
    import jax.numpy as jnp

    from jaxcnn import models
    from jaxcnn.checkpoint import Checkpointer
    from jaxcnn.data import batches, load_dataset, num_batches
    from jaxcnn.train.gan import (
        create_gan_state,
        dcgan_optimizer,
        make_gan_train_step,
        make_generate,
        sample_latent,
        top_k_schedule,
    )
    from jaxcnn.train.gan_eval import evaluate_samples

    c = _CONFIG.value
    name = pathlib.Path(flags.FLAGS["config"].config_filename).stem
    workdir = _WORKDIR.value or os.path.join("runs", name)
    os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
    t_all = time.perf_counter()
    judge, judge_acc = load_judge(_CLS_DIR.value or workdir.rstrip("/") + "_judge", c)

    ds = load_dataset("mnist_idx", c.data_dir or None)
    real01 = (
        ds.images.astype(np.float32)[..., None] / 255.0
        if ds.images.ndim == 3
        else ds.images.astype(np.float32) / 255.0
    )
    pad = (c.image_size - 28) // 2
    x = np.pad(real01, ((0, 0), (pad, pad), (pad, pad), (0, 0))) * 2.0 - 1.0

    size = c.image_size
    g = models.create_model(
        f"dcgan_generator_{size}", width=c.width, latent_dim=c.latent_dim, out_channels=1
    )
    codes = int(c.get("info_codes", 0))
    conditional = bool(c.get("conditional", False))
    if conditional:  # AC-GAN: the code is the digit class, Q also learns it from real digits
        n_cls = int(ds.labels.max()) + 1
        if codes not in (0, n_cls):
            raise ValueError(
                f"conditional=True uses the {n_cls} digit classes as the code: "
                f"info_codes must be 0 or {n_cls}, got {codes}"
            )
        codes = n_cls
    d = models.create_model(
        f"dcgan_discriminator_{size}",
        width=c.get("d_width") or c.width,
        in_channels=1,
        num_classes=1 + codes,
    )
    tx = lambda lr: dcgan_optimizer(lr, c.beta1)  # noqa: E731
    ema = float(c.get("ema_decay", 0.0))
    d_lr = c.get("d_learning_rate", 0.0) or c.learning_rate  # two time-scales when they differ
    policy = tuple(p.strip() for p in c.get("augment", "").split(",") if p.strip())
    state = create_gan_state(
        g,
        d,
        tx(c.learning_rate),
        tx(d_lr),
        seed=c.seed,
        ema_decay=ema,
        num_codes=codes,
        info_weight=c.get("info_weight", 1.0),
        augment=policy,
    )
    n_g = sum(p.size for p in jax.tree.leaves(state.g_params))
    n_d = sum(p.size for p in jax.tree.leaves(state.d_params))
    print(
        f"DCGAN {size}x{size}, width {c.width}/{d.width}: G {n_g:,} / D {n_d:,} parameters; "
        f"{len(x):,} real digits",
        flush=True,
    )
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=c.keep_checkpoints, keep_best=0)
    history, metrics_path = [], os.path.join(workdir, "metrics.json")
    if _RESUME.value and ckpt.latest_step() is not None:
        state = ckpt.restore(state).state
        if os.path.exists(metrics_path):
            with open(metrics_path) as f:
                history = json.load(f).get("history", [])
        print(f"resumed at step {int(state.step)}", flush=True)

    step_fn = make_gan_train_step(c.label_smoothing)
    # samples for the grids and the evaluation: the averaged generator when ema_decay > 0
    gen = make_generate(train=c.sample_mode == "batch", ema=ema > 0)
    gen_raw = make_generate(train=c.sample_mode == "batch")
    key = jax.random.PRNGKey(c.seed + 1)
    # the grids: with an InfoGAN code, row r of the 8x8 grid (of the 10x10 by-code grid) has code r
    z_grid = sample_latent(
        jax.random.fold_in(key, 0),
        64,
        c.latent_dim,
        codes,
        jnp.arange(64) // 8 % max(codes, 1) if codes else None,
    )[0]
    z_eval, eval_codes = sample_latent(
        jax.random.fold_in(key, 1), c.num_eval_samples, c.latent_dim, codes
    )
    crop = lambda im: np.asarray(im)[:, pad : pad + 28, pad : pad + 28]  # noqa: E731

    def sample01(z, fn=gen):
        return crop((np.asarray(jax.device_get(fn(state, z))) + 1.0) / 2.0).clip(0, 1)

    def write(final=None):
        out = {
            "config": c.to_dict(),
            "generator_params": int(n_g),
            "discriminator_params": int(n_d),
            "judge_test_accuracy": judge_acc,
            "history": history,
        }
        if final:
            out["final"] = final
        with open(metrics_path + ".tmp", "w") as f:
            json.dump(out, f, indent=1)
        os.replace(metrics_path + ".tmp", metrics_path)

    steps_per_epoch = num_batches(len(x), c.batch_size, drop_remainder=True)
    labels = np.asarray(ds.labels, np.int32) if conditional else np.zeros(len(x), np.int32)
    real_out = judge(real01)  # the real images' logits and features, computed once
    for epoch in range(int(state.step) // steps_per_epoch, c.epochs):
        t0 = time.perf_counter()
        sums = None
        k = (
            top_k_schedule(epoch, c.batch_size, c.top_k_gamma, c.top_k_min)
            if c.get("top_k_gamma", 0)
            else None
        )
        scale = lr_scale(epoch, c.epochs, c.get("lr_decay_start", 0))
        for batch in batches(
            x, labels, c.batch_size, shuffle=True, seed=c.seed, epoch=epoch, drop_remainder=True
        ):
            state, m = step_fn(
                state,
                jnp.asarray(batch["image"]),
                k,
                scale,
                jnp.asarray(batch["label"]) if conditional else None,
            )
            sums = m if sums is None else jax.tree.map(jnp.add, sums, m)
        sums = {k: float(v) / steps_per_epoch for k, v in jax.device_get(sums).items()}
        save_grid(
            sample01(z_grid), os.path.join(workdir, "samples", f"epoch_{epoch + 1:03d}.png"), 8
        )
        ev = evaluate_samples(judge, sample01(z_eval), None, c.confidence, c.seed, real_out)
        keys = ("confident_share", "min_class_share", "max_class_share", "fd", "fd_real_baseline")
        rec = {
            "epoch": epoch + 1,
            "step": int(state.step),
            "top_k": k,
            "lr_scale": scale,
            **sums,
            **{k: ev[k] for k in keys},
        }
        if ema:  # the raw generator too, for comparison
            ev_raw = evaluate_samples(
                judge, sample01(z_eval, gen_raw), None, c.confidence, c.seed, real_out
            )
            rec.update({f"raw_{k}": ev_raw[k] for k in keys[:4]})
        rec["epoch_time_s"] = time.perf_counter() - t0
        history.append(rec)
        ckpt.save(int(state.step), state)
        write()
        print(
            f"epoch {epoch + 1:3d}/{c.epochs}  D {sums['d_loss']:.3f} G {sums['g_loss']:.3f} "
            f"D(x) {sums['d_real']:.2f} D(G(z)) {sums['d_fake']:.2f}  "
            + (f"info {sums['info_loss']:.3f}  " if codes else "")
            + f"confident "
            f"{ev['confident_share']:.3f} classes {ev['min_class_share']:.3f}-"
            f"{ev['max_class_share']:.3f}  FD {ev['fd']:.2f} (real {ev['fd_real_baseline']:.2f})"
            + (
                f"  [raw G: confident {rec['raw_confident_share']:.3f} FD {rec['raw_fd']:.2f}]"
                if ema
                else ""
            )
            + f"  ({rec['epoch_time_s']:.0f}s)",
            flush=True,
        )
    ckpt.close()
    # every epoch's time, this run's and the resumed ones' (with the per-epoch evaluation)
    train_time = sum(r.get("epoch_time_s", 0.0) for r in history)

    samples = sample01(z_eval)
    ev = evaluate_samples(judge, samples, None, c.confidence, c.seed, real_out)
    save_grid(samples[:100], os.path.join(workdir, "samples_final.png"), 10)
    pred = judge(samples)[0].argmax(-1)
    if conditional:  # how often the judge reads the digit that G was asked for
        ev["class_agreement"] = float(np.mean(pred == np.asarray(eval_codes)))
    by_class = [samples[pred == k][:10] for k in range(10)]
    rows = [np.concatenate([b, np.zeros((10 - len(b), 28, 28, 1), np.float32)]) for b in by_class]
    save_grid(np.concatenate(rows), os.path.join(workdir, "samples_by_class.png"), 10)
    if codes:  # one row per code value, 10 samples each
        z_code = sample_latent(
            jax.random.fold_in(key, 2),
            10 * codes,
            c.latent_dim,
            codes,
            jnp.arange(10 * codes) // 10,
        )[0]
        save_grid(sample01(z_code), os.path.join(workdir, "samples_by_code.png"), 10)
    ev["passed"] = meets_target(ev)
    n_sets = int(c.get("eval_sets", 0))
    if n_sets:  # the same figures on other sets of samples: how much the final one varies
        sets = [
            evaluate_samples(
                judge,
                sample01(
                    sample_latent(
                        jax.random.fold_in(key, 100 + i), c.num_eval_samples, c.latent_dim, codes
                    )[0]
                ),
                None,
                c.confidence,
                c.seed,
                real_out,
            )
            for i in range(n_sets)
        ]
        conf = np.array([s["confident_share"] for s in sets])
        ev["other_sets"] = {
            "num_sets": n_sets,
            "confident_mean": float(conf.mean()),
            "confident_std": float(conf.std(ddof=1)) if n_sets > 1 else 0.0,
            "confident_min": float(conf.min()),
            "confident_max": float(conf.max()),
            "min_class_share": float(min(s["min_class_share"] for s in sets)),
            "max_class_share": float(max(s["max_class_share"] for s in sets)),
            "fd_mean": float(np.mean([s["fd"] for s in sets])),
            "passed": sum(meets_target(s) for s in sets),
        }
    ev.update(
        epochs=len(history),
        steps=int(state.step),
        train_time_s=train_time,
        wall_time_s=time.perf_counter() - t_all,
    )
    write(ev)
    print(
        f"\n{ev['num_samples']} samples: {100 * ev['confident_share']:.1f}% with confidence >= "
        f"{c.confidence}; class shares {100 * ev['min_class_share']:.1f}%-"
        f"{100 * ev['max_class_share']:.1f}%; FD {ev['fd']:.2f} vs real-vs-real "
        f"{ev['fd_real_baseline']:.2f} (same sizes; halves {ev['fd_real_halves']:.2f}); "
        f"target {'met' if ev['passed'] else 'NOT met'}"
    )
    if conditional:
        print(
            f"conditional: the judge reads the requested digit in "
            f"{100 * ev['class_agreement']:.1f}% of the samples"
        )
    if n_sets:
        o = ev["other_sets"]
        print(
            f"{n_sets} other sets of {ev['num_samples']}: confident "
            f"{100 * o['confident_mean']:.1f}% +- {100 * o['confident_std']:.1f} "
            f"({100 * o['confident_min']:.1f}-{100 * o['confident_max']:.1f}%), class shares "
            f"{100 * o['min_class_share']:.1f}%-{100 * o['max_class_share']:.1f}%, "
            f"FD {o['fd_mean']:.2f}; target met on {o['passed']} of {n_sets}"
        )
    print(
        f"wrote {workdir}/samples/, samples_final.png, samples_by_class.png, metrics.json, "
        f"checkpoints/ ({ev['wall_time_s']:.0f}s wall)"
    )


if __name__ == "__main__":
    app.run(main)
