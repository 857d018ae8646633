"""DCGAN training on the :class:`jaxcnn.train.Trainer`: a generator and a discriminator
(``dcgan_generator_<image_size>`` / ``dcgan_discriminator_<image_size>``) trained on real
handwritten digits with :mod:`jaxcnn.train.gan` (one D update, then one G update per step; the
options there: top-k generator updates, an InfoGAN code, the class-conditional AC-GAN,
DiffAugment, a moving average of G for sampling).

The data: the MNIST test set (bundled in the package; ``data_dir`` for other IDX files, or
``num_digits`` for its first N digits), scaled to ``[-1, 1]`` and padded to ``image_size`` with
background. An epoch is one pass over the digits in the order
``default_rng([seed, epoch]).permutation(N)`` (the last ``N % batch_size`` dropped); the
iterator's position is saved in every checkpoint with the :class:`~jaxcnn.train.gan.GANState`,
and the noise of step ``s`` comes from the state's key folded with ``s``, so a run killed at any
point and resumed ends bit-identical to an uninterrupted one. The top-k fraction and the
learning-rate decay are per-epoch values looked up from the step on device, so the step is
compiled once.

Evaluation needs a **judge** (``GAN(judge=...)``): a classifier trained on real digits,
``judge(images01) -> (logits, features)`` (:data:`jaxcnn.train.gan_eval.Judge`; the
experiment's is a LeNet-5 trained by this engine, ``experiments/gan_judge.py``). With one:

- **validation** (every evaluation): ``num_eval_samples`` samples from one fixed noise set,
  judged against the real digits (:func:`jaxcnn.train.gan_eval.evaluate_samples`): the share of
  confident samples, the predicted-class spread and the Fréchet distance (``fd``) in the
  judge's features, beside the real-vs-real baseline. ``fd`` selects (lowest is best: best
  checkpoints, early stopping): it measures sample quality and coverage of the classes at once,
  where the confident share alone rewards a generator that collapses onto easy digits;
- **test** (at the end, on the last and on the selected state): the same figures on
  ``eval_sets`` other, fresh noise sets, never seen by the selection (their mean, spread and
  per-set values), so a checkpoint picked for its validation noise is reported on noise it was
  not picked on.

The real digits the distances are measured against are the training digits themselves (all the
bundled MNIST test set has; a generator's distribution is compared with the one it learns, as
FID is), split in two seeded halves: ``fd`` against half A, the baseline of the same size from
half B. Without a judge there are no metrics and no selection (``selection`` is None): the
validation pass only draws the sample grid.

Pictures (process 0): ``samples/epoch_NNN.png`` (an 8x8 grid from fixed noise at every
evaluation), and at the end ``samples_final.png`` (10x10 of the validation samples),
``samples_by_class.png`` (one row per digit the judge reads), ``samples_by_code.png`` (one row
per code value, with a code) and ``curves.png``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn import models
from jaxcnn.data import default_mnist_dir, load_idx_folder
from jaxcnn.data.iterators import EpochOrder
from jaxcnn.train import config as config_lib
from jaxcnn.train.config import ConfigError, Field
from jaxcnn.train.gan import (
    DIFF_AUGMENT_OPS,
    create_gan_state,
    dcgan_optimizer,
    gan_train_step,
    make_generate,
    sample_latent,
    top_k_schedule,
)
from jaxcnn.train.gan_eval import Judge, evaluate_samples
from jaxcnn.train.trainer import Context, Task

__all__ = ["GAN", "GAN_FIELDS", "DigitBatches", "lr_scale", "save_grid"]

NUM_DIGIT_CLASSES = 10
SIZES = (28, 32, 64)
# the fixed noise sets: fold_in(PRNGKey(seed + 1), which)
_GRID, _VALIDATION, _BY_CODE, _TEST = 0, 1, 2, 100


def _policy(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def _augment(v) -> str | None:
    bad = sorted(set(_policy(v)) - set(DIFF_AUGMENT_OPS))
    return None if not bad else f"'' or a comma-separated list of {', '.join(DIFF_AUGMENT_OPS)}"


def _image_size(v) -> str | None:
    return None if v in SIZES else "one of " + ", ".join(map(str, SIZES))


def _in_closed_unit(v) -> str | None:
    return None if 0.0 <= v <= 1.0 else "in [0, 1]"


def _in_open_closed_unit(v) -> str | None:
    return None if 0.0 < v <= 1.0 else "in (0, 1]"


GAN_FIELDS: dict[str, Field | None] = {
    "model": Field(
        "dcgan",
        "the networks: dcgan (dcgan_generator_<image_size> / dcgan_discriminator_<image_size>)",
        config_lib._one_of("dcgan"),
    ),
    "image_size": Field(32, "28, 32 or 64 (the 28x28 digits padded with background)", _image_size),
    "width": Field(64, "the generator's width (ngf; the paper's 64)", config_lib._at_least(1)),
    "d_width": Field(
        0, "the discriminator's width (ndf; 0: the generator's)", config_lib._at_least(0)
    ),
    "latent_dim": Field(100, "length of the noise vector z", config_lib._at_least(2)),
    "model_kwargs": Field(
        {}, "keyword arguments for both networks' create_model (e.g. conv_impl='xla')"
    ),
    "data_dir": Field("", "folder of MNIST IDX files ('': the bundled or shared MNIST test set)"),
    "num_digits": Field(
        0, "train on the first N digits only (0: all 10,000)", config_lib._at_least(0)
    ),
    "batch_size": Field(64, "global training batch size (real digits)", config_lib._at_least(1)),
    "epochs": Field(25, "passes over the real digits", config_lib._at_least(1), resume_ok=True),
    "learning_rate": Field(
        2e-4,
        "Adam learning rate of G (and of D unless d_learning_rate)",
        config_lib._positive_finite,
    ),
    "d_learning_rate": Field(
        0.0,
        "> 0: D's own learning rate (two time-scale update rule, TTUR)",
        config_lib._finite_at_least(0.0),
    ),
    "beta1": Field(0.5, "Adam's beta1 for both networks (the paper's 0.5)", config_lib._in_unit),
    "lr_decay_start": Field(
        0,
        "> 0: from this epoch (0-based) both learning rates decay linearly to ~0 (0: constant)",
        config_lib._at_least(0),
    ),
    "label_smoothing": Field(
        0.0, "one-sided: D's target for real digits is 1 - this", config_lib._in_unit
    ),
    "top_k_gamma": Field(
        0.0,
        "> 0: top-k generator updates, k = max(gamma**epoch, top_k_min) * batch (0: off)",
        _in_closed_unit,
    ),
    "top_k_min": Field(0.5, "the smallest top-k fraction of the batch", _in_open_closed_unit),
    "info_codes": Field(
        0,
        "> 0: an InfoGAN categorical code of this many values (D gets 1 + n outputs)",
        config_lib._at_least(0),
    ),
    "info_weight": Field(
        1.0, "weight of the code's cross-entropy (InfoGAN, AC-GAN)", config_lib._finite_at_least(0)
    ),
    "conditional": Field(
        False, "class-conditional AC-GAN: the code is the digit's class, learnt from the labels"
    ),
    "augment": Field(
        "", "DiffAugment policy for D's inputs, e.g. 'translation,cutout' ('': none)", _augment
    ),
    "ema_decay": Field(
        0.0,
        "> 0: sample from an exponential moving average of G's weights (0: the raw G)",
        config_lib._in_unit,
    ),
    "sample_mode": Field(
        "batch",
        "G's BatchNorm when sampling: batch (statistics of the sample batch) or running",
        config_lib._one_of("batch", "running"),
    ),
    "num_eval_samples": Field(
        1000, "samples per evaluation set (validation and each test set)", config_lib._at_least(2)
    ),
    "eval_sets": Field(
        10,
        "test: this many fresh noise sets, judged at the end (0: no test split)",
        config_lib._at_least(0),
        resume_ok=True,
    ),
    "confidence": Field(
        0.9, "a sample is confident when the judge's top probability >= this", _in_open_closed_unit
    ),
    # what this task does not read: an error when set, rather than silently ignored
    "init_from": None,
    "eval_batch_size": None,
    "optimizer": None,
    "schedule": None,
    "warmup_epochs": None,
    "weight_decay": None,
    "grad_clip": None,
    "precision": None,
    "grad_accum_steps": None,
    "remat": None,
}


def lr_scale(epoch: int, epochs: int, decay_start: int) -> float:
    """Learning-rate factor for a 0-based ``epoch``: 1 before ``decay_start`` (0: never), then
    linear towards 0 over the remaining epochs (``1 - (e - start + 1) / (epochs - start + 1)``)."""
    if not decay_start or epoch < decay_start:
        return 1.0
    return 1.0 - (epoch - decay_start + 1) / (epochs - decay_start + 1)


class DigitBatches(EpochOrder):
    """Endless training batches ``{"image", "label", "id"}`` of in-memory images, in the order
    of the data iterators (:class:`jaxcnn.data.iterators.EpochOrder`): epoch ``e`` visits
    ``default_rng([seed, e]).permutation(N)`` in global batches of ``global_batch_size`` (the
    last ``N % global_batch_size`` dropped); this process yields ``rows`` of each global
    batch. ``get_state()``/``state=`` resume exactly (the state is the number of global batches
    drawn, and what it must match)."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        global_batch_size: int,
        seed: int = 0,
        *,
        rows: slice | None = None,
        state: dict | None = None,
    ):
        self.images, self.labels = images, labels
        n, batch = len(images), int(global_batch_size)
        if batch > n:
            raise ValueError(f"batch size {batch} is larger than the {n} examples")
        super().__init__(n, batch, seed)
        self.rows = rows if rows is not None else slice(0, self.batch)
        self.next = 0
        if state is not None:
            self.set_state(state)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        idx = self.global_batch(self.next)[1][self.rows]
        self.next += 1
        return {"image": self.images[idx], "label": self.labels[idx], "id": idx.astype(np.int64)}

    def get_state(self) -> dict:
        return {
            "next_batch": self.next,
            "seed": self.seed,
            "global_batch_size": self.batch,
            "num_examples": self.n,
        }

    def set_state(self, state: dict) -> None:
        want = {"seed": self.seed, "global_batch_size": self.batch, "num_examples": self.n}
        diff = {k: (state.get(k), v) for k, v in want.items() if state.get(k) != v}
        if diff:
            raise ValueError(
                "digit iterator state does not match: "
                + ", ".join(f"{k} saved {a!r} vs now {b!r}" for k, (a, b) in diff.items())
            )
        self.next = int(state["next_batch"])


class GAN(Task):
    """A DCGAN (and its InfoGAN / AC-GAN / DiffAugment options) on real digits (see the module
    docstring).

    ``judge``: a classifier of real digits, ``judge(images01) -> (logits, features)``; or
    ``load_judge(ctx)``, called in :meth:`build` once the config is validated (the experiment
    trains or reads its LeNet-5 there). A judge's ``info`` attribute (a dict), if any, goes to
    ``metrics.json``. With neither, the run records only the training losses and the grids.
    """

    name = "gan"
    fields = GAN_FIELDS

    def __init__(
        self,
        judge: Judge | None = None,
        *,
        load_judge: Callable[[Context], Judge] | None = None,
    ):
        self.judge, self._load_judge = judge, load_judge
        judged = judge is not None or load_judge is not None
        self.selection = ("fd", "min") if judged else None

    # -- set-up ------------------------------------------------------------------------------
    def build(self, ctx: Context) -> None:
        cfg = self.cfg = ctx.cfg
        self.ctx = ctx
        codes = cfg["info_codes"]
        if cfg["conditional"]:  # AC-GAN: the code is the digit's class
            if codes not in (0, NUM_DIGIT_CLASSES):
                raise ConfigError(
                    f"conditional=True uses the {NUM_DIGIT_CLASSES} digit classes as the code: "
                    f"info_codes must be 0 or {NUM_DIGIT_CLASSES}, got {codes}"
                )
            codes = NUM_DIGIT_CLASSES
        if codes >= cfg["latent_dim"]:
            raise ConfigError(
                f"config keys 'info_codes'/'latent_dim': the code is part of the latent vector, "
                f"so info_codes < latent_dim; got {codes} >= {cfg['latent_dim']}"
            )
        if self.selection is None and cfg["early_stopping_patience"]:
            raise ConfigError(
                "early_stopping_patience needs a judge (no validation metrics without one)"
            )
        self.codes, self.conditional = codes, bool(cfg["conditional"])
        size = cfg["image_size"]
        kw = cfg["model_kwargs"]
        try:
            self.generator = models.create_model(
                f"dcgan_generator_{size}",
                width=cfg["width"],
                latent_dim=cfg["latent_dim"],
                out_channels=1,
                **kw,
            )
            self.discriminator = models.create_model(
                f"dcgan_discriminator_{size}",
                width=cfg["d_width"] or cfg["width"],
                in_channels=1,
                num_classes=1 + codes,
                **kw,
            )
        except TypeError as e:  # a keyword one of the networks does not take
            raise ConfigError(f"config key 'model_kwargs' {kw!r}: {e}") from None
        folder = cfg["data_dir"] or default_mnist_dir()
        images, labels = load_idx_folder(folder)
        if cfg["num_digits"]:
            if cfg["num_digits"] > len(images):
                raise ConfigError(
                    f"config key 'num_digits': {cfg['num_digits']} > the {len(images)} digits "
                    f"in {folder}"
                )
            images, labels = images[: cfg["num_digits"]], labels[: cfg["num_digits"]]
        if cfg["batch_size"] > len(images):
            raise ConfigError(
                f"batch_size {cfg['batch_size']} is larger than the {len(images)} real digits"
            )
        self.source = str(folder)
        self.real01 = images.astype(np.float32)[..., None] / 255.0  # (N, 28, 28, 1) in [0, 1]
        self.labels = labels.astype(np.int32)
        self.pad = (size - 28) // 2
        p = ((0, 0), (self.pad, self.pad), (self.pad, self.pad), (0, 0))
        self.x = np.pad(self.real01, p) * 2.0 - 1.0
        self.steps_per_epoch = len(self.x) // cfg["batch_size"]

        # the judge last: the checks above come before it is trained
        if self._load_judge is not None:
            self.judge = self._load_judge(ctx)
        # per-epoch values, looked up from the step on device (one compilation)
        epochs, batch = cfg["epochs"], cfg["batch_size"]
        gamma, k_min, start = cfg["top_k_gamma"], cfg["top_k_min"], cfg["lr_decay_start"]
        self._top_k = (
            np.array([top_k_schedule(e, batch, gamma, k_min) for e in range(epochs)], np.int32)
            if gamma
            else None
        )
        self._lr_scale = (
            np.array([lr_scale(e, epochs, start) for e in range(epochs)], np.float32)
            if start
            else None
        )
        ema = cfg["ema_decay"] > 0
        self._gen = make_generate(train=cfg["sample_mode"] == "batch", ema=ema)
        self._gen_raw = make_generate(train=cfg["sample_mode"] == "batch") if ema else None
        key = jax.random.PRNGKey(cfg["seed"] + 1)
        self._key = key
        # the grid: with a code, row r of the 8x8 grid has code r
        grid_codes = jnp.arange(64) // 8 % max(codes, 1) if codes else None
        self._z_grid = sample_latent(
            jax.random.fold_in(key, _GRID), 64, cfg["latent_dim"], codes, grid_codes
        )[0]
        self._z_val, self._val_codes = sample_latent(
            jax.random.fold_in(key, _VALIDATION), cfg["num_eval_samples"], cfg["latent_dim"], codes
        )
        # the real digits through the judge, once
        self._real_out = None if self.judge is None else self.judge(self.real01)

    def facts(self) -> dict:
        size = self.cfg["image_size"]
        g = models.count_params(self.generator, (1, self.cfg["latent_dim"]))
        d = models.count_params(self.discriminator, (1, size, size, 1))
        return {
            "input_shape": [size, size, 1],
            "num_train": int(len(self.x)),
            "num_codes": int(self.codes),
            "generator_params": int(g),
            "discriminator_params": int(d),
            "params": int(g + d),
        }

    def describe(self) -> dict:
        seed, n = self.cfg["seed"], self.cfg["num_eval_samples"]
        out: dict[str, Any] = {
            "dataset": f"real digits: MNIST test set, {len(self.x)} images ({self.source})",
            "splits": {
                "train": f"every real digit, epoch order default_rng([{seed}, epoch])",
            },
        }
        if self.judge is not None:
            out["splits"].update(
                validation=f"{n} samples from fixed noise fold_in(PRNGKey({seed + 1}), "
                f"{_VALIDATION}), judged against the real digits",
                test=f"{self.cfg['eval_sets']} sets of {n} samples from fresh noise "
                f"fold_in(PRNGKey({seed + 1}), {_TEST} + i), never used for selection",
            )
            out["judge"] = dict(getattr(self.judge, "info", None) or {})
        return out

    def init_state(self):
        cfg = self.cfg
        tx_g = dcgan_optimizer(cfg["learning_rate"], cfg["beta1"])
        tx_d = dcgan_optimizer(cfg["d_learning_rate"] or cfg["learning_rate"], cfg["beta1"])
        return create_gan_state(
            self.generator,
            self.discriminator,
            tx_g,
            tx_d,
            seed=cfg["seed"],
            ema_decay=cfg["ema_decay"],
            num_codes=self.codes,
            info_weight=cfg["info_weight"],
            augment=_policy(cfg["augment"]),
        )

    # -- training ----------------------------------------------------------------------------
    def step_fn(self, state, batch):
        epoch = jnp.minimum(state.step // self.steps_per_epoch, self.cfg["epochs"] - 1)
        k = None if self._top_k is None else jnp.asarray(self._top_k)[epoch]
        scale = None if self._lr_scale is None else jnp.asarray(self._lr_scale)[epoch]
        labels = batch["label"] if self.conditional else None
        state, m = gan_train_step(
            state,
            batch["image"],
            k,
            scale,
            labels,
            label_smoothing=self.cfg["label_smoothing"],
        )
        return state, {**m, "count": jnp.ones((), jnp.float32)}

    def train_batches(self, data_state):
        bs = self.cfg["batch_size"]
        return DigitBatches(
            self.x,
            self.labels,
            bs,
            self.cfg["seed"],
            rows=self.ctx.dp.process_rows(bs),
            state=data_state,
        )

    # -- evaluation --------------------------------------------------------------------------
    def splits(self) -> tuple[str, ...]:
        if self.judge is None:
            return ("validation",)  # the grid only
        return ("validation", "test") if self.cfg["eval_sets"] else ("validation",)

    def sample01(self, state, z, raw: bool = False) -> np.ndarray:
        """Samples of ``state``'s generator (the averaged one, unless ``raw``) for noise ``z``,
        cropped to 28x28, in ``[0, 1]``."""
        fn = self._gen_raw if raw and self._gen_raw is not None else self._gen
        x = np.asarray(jax.device_get(fn(state, z)))
        p = self.pad
        return ((x[:, p : p + 28, p : p + 28] + 1.0) / 2.0).clip(0.0, 1.0)

    def _judge_set(self, samples, codes=None) -> dict:
        judge = self.judge
        if judge is None:
            raise ValueError("the GAN task has no judge: construct it with GAN(judge=...)")
        ev = evaluate_samples(
            judge, samples, None, self.cfg["confidence"], self.cfg["seed"], self._real_out
        )
        if self.conditional and codes is not None:  # the judge reads the digit G was asked for
            pred = judge(samples)[0].argmax(-1)
            ev["class_agreement"] = float(np.mean(pred == np.asarray(codes)))
        return ev

    def evaluate(self, state, split: str) -> dict:
        host = jax.device_get(state)  # this process only: no collective on global arrays
        if split == "validation":
            if self.ctx.main:
                step = int(host.step)
                spe = self.steps_per_epoch
                name = f"epoch_{step // spe:03d}" if step % spe == 0 else f"step_{step:07d}"
                save_grid(
                    self.sample01(host, self._z_grid),
                    os.path.join(self.ctx.workdir, "samples", f"{name}.png"),
                    8,
                )
            if self.judge is None:
                return {}
            ev = self._judge_set(self.sample01(host, self._z_val), self._val_codes)
            keys = (
                "confident_share",
                "mean_confidence",
                "min_class_share",
                "max_class_share",
                "class_share",
                "fd",
                "fd_real_baseline",
                "class_agreement",
            )
            out = {k: ev[k] for k in keys if k in ev}
            if self._gen_raw is not None:  # the raw generator too, for comparison
                raw = self._judge_set(self.sample01(host, self._z_val, raw=True))
                out.update(
                    {
                        f"raw_{k}": raw[k]
                        for k in ("confident_share", "min_class_share", "max_class_share", "fd")
                    }
                )
            return out
        return self._test(host)

    def _test(self, host) -> dict:
        cfg = self.cfg
        sets = []
        for i in range(cfg["eval_sets"]):
            z, codes = sample_latent(
                jax.random.fold_in(self._key, _TEST + i),
                cfg["num_eval_samples"],
                cfg["latent_dim"],
                self.codes,
            )
            sets.append(self._judge_set(self.sample01(host, z), codes))
        conf = np.array([s["confident_share"] for s in sets])
        fd = np.array([s["fd"] for s in sets])
        out = {
            "num_sets": len(sets),
            "num_samples": cfg["num_eval_samples"],
            "confident_share": float(conf.mean()),
            "confident_std": float(conf.std(ddof=1)) if len(sets) > 1 else 0.0,
            "confident_min": float(conf.min()),
            "confident_max": float(conf.max()),
            "min_class_share": float(min(s["min_class_share"] for s in sets)),
            "max_class_share": float(max(s["max_class_share"] for s in sets)),
            "fd": float(fd.mean()),
            "fd_min": float(fd.min()),
            "fd_max": float(fd.max()),
            "fd_real_baseline": sets[0]["fd_real_baseline"],
            "fd_real_halves": sets[0]["fd_real_halves"],
            "real_confident_share": sets[0]["real_confident_share"],
            "set_confident_share": conf.tolist(),
            "set_min_class_share": [s["min_class_share"] for s in sets],
            "set_max_class_share": [s["max_class_share"] for s in sets],
            "set_fd": fd.tolist(),
        }
        if self.conditional:
            out["class_agreement"] = float(np.mean([s["class_agreement"] for s in sets]))
        return out

    def finish(self, state, result: dict, workdir: str) -> dict | None:
        from jaxcnn.train.plots import can_plot, plot_run_curves

        if can_plot("curves.png"):  # the sample grids below are drawn with Pillow
            plot_run_curves(workdir, ("d_loss", "g_loss", "confident_share", "fd"))
        host = jax.device_get(state)
        samples = self.sample01(host, self._z_val)
        save_grid(samples[:100], os.path.join(workdir, "samples_final.png"), 10)
        if self.judge is not None:  # one row per digit the judge reads, up to 10 each
            pred = self.judge(samples)[0].argmax(-1)
            rows = []
            for k in range(NUM_DIGIT_CLASSES):
                b = samples[pred == k][:10]
                rows.append(np.concatenate([b, np.zeros((10 - len(b), 28, 28, 1), np.float32)]))
            save_grid(np.concatenate(rows), os.path.join(workdir, "samples_by_class.png"), 10)
        if self.codes:  # one row per code value, 10 samples each
            z = sample_latent(
                jax.random.fold_in(self._key, _BY_CODE),
                10 * self.codes,
                self.cfg["latent_dim"],
                self.codes,
                jnp.arange(10 * self.codes) // 10,
            )[0]
            save_grid(self.sample01(host, z), os.path.join(workdir, "samples_by_code.png"), 10)
        return None


def save_grid(images01, path, cols: int, scale: int = 3) -> None:
    """Tile ``(N, H, W, 1)`` images in ``[0, 1]`` into a grayscale PNG grid, ``cols`` per row
    with 1-pixel white gaps, each pixel drawn ``scale`` x ``scale``."""
    from PIL import Image

    images01 = np.asarray(images01, np.float32)
    n, h, w = images01.shape[:3]
    rows = -(-n // cols)
    grid = np.ones((rows * (h + 1) + 1, cols * (w + 1) + 1), np.float32)
    for i, img in enumerate(images01[..., 0]):
        r, c = divmod(i, cols)
        grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w] = img
    grid = np.kron(grid, np.ones((scale, scale), np.float32))
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    Image.fromarray(np.rint(grid.clip(0, 1) * 255).astype(np.uint8), "L").save(path)
