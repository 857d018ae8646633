"""GAN training: a ``GANState`` holding both networks and a jit-compiled adversarial step.

The step follows the DCGAN recipe (Radford et al., 2015; the PyTorch DCGAN tutorial):

1. **Discriminator step.** Draw ``z``, generate a fake batch (the generator in training mode,
   gradients stopped, its BatchNorm updates discarded), and minimise
   ``BCE(D(real), 1 - label_smoothing) + BCE(D(fake), 0)`` over D's parameters. Real and fake
   images go through D as *separate* batches (each normalised by its own batch statistics, as in
   the reference code); D's running statistics are updated by both passes.
2. **Generator step.** Draw a fresh ``z`` and minimise the non-saturating loss
   ``BCE(D(G(z)), 1) = -log D(G(z))`` over G's parameters only: D (already updated by step 1)
   runs in training mode but its parameters get no update and its BatchNorm updates are
   discarded, so D is unchanged by the G step; G's running statistics are updated.

Options from later work, all off by default: **top-k generator updates** (Sinha et al.
2020: ``step(state, real, k)`` averages G's loss over the ``k`` fakes D finds most realistic;
:func:`top_k_schedule` anneals ``k`` per epoch), an **InfoGAN categorical code** (Chen et al.
2016: ``create_gan_state(..., num_codes=10)``, a discriminator with ``1 + num_codes`` outputs,
latents from :func:`sample_latent`); with the real images' labels as well
(``step(state, real, k, lr_scale, labels)``), the class-conditional **AC-GAN** (Odena et al.
2017: the code is the class, and Q also learns it from the real images); and **DiffAugment**
(Zhao et al. 2020: ``create_gan_state(..., augment=("translation", "cutout"))``, the same
random augmentation of real and fake images before D). A moving average of G's weights
(``ema_decay``) is kept for sampling when asked.

:func:`d_step` and :func:`g_step` are the two halves (each changes only its own network);
:func:`gan_train_step` runs both and :func:`make_gan_train_step` jit-compiles that with the
state donated. Each network has its own optax optimizer (``GANState.g_tx``/``d_tx``; Adam with
``lr=2e-4, b1=0.5`` from the paper by default, :func:`dcgan_optimizer`).

``GANState`` is a ``flax.struct`` dataclass: its array fields (params, BatchNorm statistics,
optimizer states, step, RNG key) are the pytree that :class:`jaxcnn.checkpoint.Checkpointer`
saves and restores; the modules and optimizers are static fields.

    from jaxcnn import models
    from jaxcnn.train.gan import create_gan_state, make_gan_train_step, generate
    g = models.create_model("dcgan_generator_28", width=32)
    d = models.create_model("dcgan_discriminator_28", width=32)
    state = create_gan_state(g, d, seed=0)
    step = make_gan_train_step(label_smoothing=0.1)
    state, metrics = step(state, real_images)      # (B, 28, 28, 1) in [-1, 1]
    samples = generate(state, jax.random.normal(key, (64, state.latent_dim)))
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxcnn.data.pipeline import augment_batch

__all__ = [
    "GANState",
    "create_gan_state",
    "dcgan_optimizer",
    "d_step",
    "g_step",
    "gan_train_step",
    "make_gan_train_step",
    "generate",
    "make_generate",
    "top_k_mask",
    "top_k_schedule",
    "sample_latent",
    "diff_augment",
    "DIFF_AUGMENT_OPS",
]


@struct.dataclass
class GANState:
    """Generator and discriminator parameters, BatchNorm statistics, one optimizer state each,
    the step counter and a raw ``uint32[2]`` RNG key (noise for step ``s`` comes from
    ``fold_in(rng, s)``, so a resumed run draws the same noise as an uninterrupted one)."""

    step: jax.Array
    g_params: Any
    g_batch_stats: Any
    g_opt_state: Any
    d_params: Any
    d_batch_stats: Any
    d_opt_state: Any
    rng: jax.Array
    generator: nn.Module = struct.field(pytree_node=False)
    discriminator: nn.Module = struct.field(pytree_node=False)
    g_tx: optax.GradientTransformation = struct.field(pytree_node=False)
    d_tx: optax.GradientTransformation = struct.field(pytree_node=False)
    g_ema_params: Any = None  # exponential moving average of g_params (None: off)
    ema_decay: float = struct.field(pytree_node=False, default=0.0)
    num_codes: int = struct.field(pytree_node=False, default=0)  # InfoGAN categorical code
    info_weight: float = struct.field(pytree_node=False, default=1.0)
    augment: tuple = struct.field(pytree_node=False, default=())  # DiffAugment policy

    if TYPE_CHECKING:  # added by struct.dataclass, which flax's annotations do not show

        def replace(self, **changes: Any) -> GANState: ...

    @property
    def latent_dim(self) -> int:
        return self.generator.latent_dim

    @property
    def g_variables(self) -> dict:
        return {"params": self.g_params, "batch_stats": self.g_batch_stats}

    @property
    def g_ema_variables(self) -> dict:
        """The averaged generator (``g_ema_params``; the raw ``g_params`` when EMA is off)."""
        params = self.g_params if self.g_ema_params is None else self.g_ema_params
        return {"params": params, "batch_stats": self.g_batch_stats}

    @property
    def d_variables(self) -> dict:
        return {"params": self.d_params, "batch_stats": self.d_batch_stats}


def dcgan_optimizer(
    learning_rate: float = 2e-4, b1: float = 0.5, b2: float = 0.999
) -> optax.GradientTransformation:
    """Adam with the DCGAN paper's settings (lr 2e-4, beta1 0.5)."""
    return optax.adam(learning_rate, b1=b1, b2=b2)


def create_gan_state(
    generator: nn.Module,
    discriminator: nn.Module,
    g_tx: optax.GradientTransformation | None = None,
    d_tx: optax.GradientTransformation | None = None,
    seed: int = 0,
    ema_decay: float = 0.0,
    num_codes: int = 0,
    info_weight: float = 1.0,
    augment=(),
) -> GANState:
    """Initialise both networks (D on images of the generator's output shape) and optimizers.

    ``ema_decay`` in ``(0, 1)`` also keeps an exponential moving average of the generator's
    parameters (``g_ema <- d * g_ema + (1 - d) * g`` after every step; Yazici et al. 2019,
    "The unusual effectiveness of averaging in GAN training"): sample with ``ema=True``.

    ``num_codes > 0`` trains an InfoGAN (Chen et al. 2016) with the same networks: the last
    ``num_codes`` entries of G's latent vector are a one-hot categorical code drawn uniformly
    (:func:`sample_latent`), the discriminator has ``1 + num_codes`` outputs (``num_classes``):
    the real/fake logit, then the logits of ``Q(code | image)``, and both networks also minimise
    ``info_weight * CE(Q(G(z, c)), c)`` (the mutual-information bound). Unsupervised: on
    digits the codes come to pick the digit, so samples stop falling between classes.

    ``augment``: a DiffAugment policy (Zhao et al. 2020), e.g. ``("translation", "cutout")``:
    every image D sees, real or fake, in both steps, is augmented first (see
    :func:`diff_augment`), which keeps D from memorising a small training set."""
    augment = tuple(augment or ())
    unknown = sorted(set(augment) - set(DIFF_AUGMENT_OPS))
    if unknown:
        raise ValueError(
            f"unknown DiffAugment operation(s) {unknown}: expected some of {list(DIFF_AUGMENT_OPS)}"
        )
    if not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1) (0 turns the average off), got {ema_decay}")
    d_out = getattr(discriminator, "num_classes", 1)
    if d_out != 1 + num_codes:
        raise ValueError(
            f"the discriminator must have 1 + num_codes = {1 + num_codes} outputs (real/fake"
            + (f", then {num_codes} code logits" if num_codes else "")
            + f"), got num_classes="
            f"{d_out}: create it with num_classes={1 + num_codes}"
        )
    if not 0 <= num_codes < generator.latent_dim:
        raise ValueError(
            f"num_codes must be in [0, latent_dim={generator.latent_dim}) (the "
            f"code is part of the latent vector), got {num_codes}"
        )
    g_tx = g_tx or dcgan_optimizer()
    d_tx = d_tx or dcgan_optimizer()
    kg, kd, krng = jax.random.split(jax.random.PRNGKey(seed), 3)
    z = jnp.zeros((1, generator.latent_dim), jnp.float32)
    g_vars = jax.jit(lambda k: generator.init(k, z, train=False))(kg)
    img = jax.eval_shape(lambda v: generator.apply(v, z, train=False), g_vars)
    d_vars = jax.jit(lambda k: discriminator.init(k, jnp.zeros(img.shape, img.dtype), train=False))(
        kd
    )
    return GANState(
        step=jnp.zeros((), jnp.int32),
        g_params=g_vars["params"],
        g_batch_stats=g_vars.get("batch_stats", {}),
        g_opt_state=g_tx.init(g_vars["params"]),
        d_params=d_vars["params"],
        d_batch_stats=d_vars.get("batch_stats", {}),
        d_opt_state=d_tx.init(d_vars["params"]),
        rng=krng,
        g_ema_params=jax.tree.map(jnp.copy, g_vars["params"]) if ema_decay else None,
        generator=generator,
        discriminator=discriminator,
        g_tx=g_tx,
        d_tx=d_tx,
        ema_decay=float(ema_decay),
        num_codes=int(num_codes),
        info_weight=float(info_weight),
        augment=augment,
    )


DIFF_AUGMENT_OPS = ("translation", "cutout")


def diff_augment(key, x, policy=("translation", "cutout")):
    """Differentiable augmentation (Zhao et al. 2020, "DiffAugment"), per image, jit-able and
    differentiable in ``x`` (NHWC): ``"translation"`` shifts by up to 1/8 of the side with zero
    fill; ``"cutout"`` zeroes a square of half the side at a random centre (clipped at the
    borders). Both as in the reference code (zero = mid-grey for images in ``[-1, 1]``)."""
    n, h, w, _ = x.shape
    k_t, k_c = jax.random.split(key)
    if "translation" in policy:
        x = augment_batch(k_t, x, max_shift=int(min(h, w) * 0.125 + 0.5))
    if "cutout" in policy:
        ch, cw = int(h * 0.5 + 0.5), int(w * 0.5 + 0.5)
        ky, kx = jax.random.split(k_c)
        cy = jax.random.randint(ky, (n, 1, 1, 1), 0, h + (1 - ch % 2))
        cx = jax.random.randint(kx, (n, 1, 1, 1), 0, w + (1 - cw % 2))
        rows = jnp.arange(h).reshape(1, h, 1, 1)
        cols = jnp.arange(w).reshape(1, 1, w, 1)
        inside = (
            (rows >= cy - ch // 2)
            & (rows < cy - ch // 2 + ch)
            & (cols >= cx - cw // 2)
            & (cols < cx - cw // 2 + cw)
        )
        x = x * (1 - inside).astype(x.dtype)
    return x


def _step_key(state: GANState, which: int):
    """The key for random draw ``which`` of step ``state.step`` (the same on a resumed run)."""
    return jax.random.fold_in(jax.random.fold_in(state.rng, state.step), which)


def _augment(state: GANState, x, which: int):
    """``x`` through the state's DiffAugment policy (unchanged without one)."""
    if not state.augment:
        return x
    return diff_augment(_step_key(state, 10 + which), x, state.augment)


def _bce(logits, target: float):
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, jnp.full_like(logits, target)))


def sample_latent(key, n: int, latent_dim: int, num_codes: int = 0, codes=None):
    """``(z, codes)``: ``n`` latent vectors for a generator. Without codes (``num_codes=0``)
    ``z ~ N(0, I)`` and ``codes`` is ``None``; with an InfoGAN code the last ``num_codes``
    entries are ``one_hot(codes)``, ``codes`` uniform in ``[0, num_codes)`` unless given."""
    if not num_codes:
        return jax.random.normal(key, (n, latent_dim), jnp.float32), None
    kz, kc = jax.random.split(key)
    if codes is None:
        codes = jax.random.randint(kc, (n,), 0, num_codes)
    noise = jax.random.normal(kz, (n, latent_dim - num_codes), jnp.float32)
    return jnp.concatenate([noise, jax.nn.one_hot(codes, num_codes)], axis=-1), codes


def _noise(state: GANState, n: int, which: int):
    return sample_latent(_step_key(state, which), n, state.latent_dim, state.num_codes)


def _split_logits(state: GANState, logits):
    """D's outputs -> (real/fake logits ``(N, 1)``, code logits ``(N, num_codes)`` or None)."""
    if not state.num_codes:
        return logits, None
    return logits[:, :1], logits[:, 1:]


def _info_loss(code_logits, codes):
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(code_logits, codes))


def _run_g(state: GANState, params, z):
    """Generator in training mode; returns (images, new batch_stats)."""
    out, upd = state.generator.apply(
        {"params": params, "batch_stats": state.g_batch_stats},
        z,
        train=True,
        mutable=["batch_stats"],
    )
    return out, upd["batch_stats"]


def _run_d(state: GANState, params, batch_stats, x):
    """Discriminator in training mode; returns (logits, new batch_stats)."""
    out, upd = state.discriminator.apply(
        {"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
    )
    return out, upd["batch_stats"]


def _scaled(updates, lr_scale):
    """Optimizer updates times ``lr_scale`` (for Adam/SGD: the learning rate times it)."""
    if lr_scale is None:
        return updates
    return jax.tree.map(lambda u: u * jnp.asarray(lr_scale, u.dtype), updates)


def d_step(state: GANState, real, lr_scale=None, real_codes=None, *, label_smoothing: float = 0.0):
    """Update the discriminator only (G's parameters and statistics are left as they are).

    ``real``: images ``(B, H, W, C)`` scaled to ``[-1, 1]``. ``label_smoothing`` makes the real
    target ``1 - label_smoothing`` (one-sided, Salimans et al. 2016). ``real_codes`` (integer
    ``(B,)``, with a code): the real images' classes, and Q also learns to read them from the
    real images (``info_weight * CE(Q(real), class)``): the AC-GAN of Odena et al. 2017, a
    class-conditional GAN. Returns ``(state, {"d_loss", "d_real", "d_fake"})`` with D's mean
    probabilities on real and fake.
    """
    if real_codes is not None and not state.num_codes:
        raise ValueError(
            "real_codes (class labels, AC-GAN) need a GAN with a code: "
            "create_gan_state(..., num_codes=<number of classes>)"
        )
    z, codes = _noise(state, real.shape[0], 0)
    fake, _ = _run_g(state, state.g_params, z)  # G's statistics updates are discarded here
    fake = jax.lax.stop_gradient(fake).astype(real.dtype)

    def loss_fn(d_params):
        lr, stats = _run_d(state, d_params, state.d_batch_stats, _augment(state, real, 0))
        lf, stats = _run_d(state, d_params, stats, _augment(state, fake, 1))
        (lr, qr), (lf, qf) = _split_logits(state, lr), _split_logits(state, lf)
        loss = _bce(lr, 1.0 - label_smoothing) + _bce(lf, 0.0)
        if qf is not None:  # InfoGAN: Q learns to read the code back from the fakes
            loss = loss + state.info_weight * _info_loss(qf, codes)
        if real_codes is not None:  # AC-GAN: and the class from the real images
            loss = loss + state.info_weight * _info_loss(qr, real_codes)
        return loss, (stats, lr, lf)

    (loss, (stats, lr, lf)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.d_params)
    updates, opt_state = state.d_tx.update(grads, state.d_opt_state, state.d_params)
    updates = _scaled(updates, lr_scale)
    state = state.replace(
        d_params=optax.apply_updates(state.d_params, updates),
        d_opt_state=opt_state,
        d_batch_stats=stats,
    )
    return state, {
        "d_loss": loss,
        "d_real": jnp.mean(nn.sigmoid(lr)),
        "d_fake": jnp.mean(nn.sigmoid(lf)),
    }


def top_k_mask(scores, k):
    """``True`` for the ``k`` highest ``scores`` (a 1-D array; ``k`` may be a traced integer,
    clipped to ``[1, len(scores)]``; ties are broken by position)."""
    n = scores.shape[0]
    k = jnp.clip(jnp.asarray(k, jnp.int32), 1, n)
    order = jnp.argsort(-scores, stable=True)
    rank = jnp.zeros((n,), jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
    return rank < k


def g_step(state: GANState, batch_size: int, top_k=None, lr_scale=None):
    """Update the generator only, with the non-saturating loss ``-log D(G(z))``.

    D runs in training mode (batch statistics) but neither its parameters nor its running
    statistics change. ``top_k`` (an integer, may be traced): average the loss over the ``k``
    fakes D scores highest only (Sinha et al. 2020, "Top-k training of GANs": the worst samples'
    gradients point G the wrong way; anneal ``k`` from the batch size to about half of it,
    :func:`top_k_schedule`). Returns ``(state, {"g_loss", "d_gen"})`` (``g_loss`` the adversarial
    part; with an InfoGAN code also ``"info_loss"``, the code's cross-entropy).
    """
    z, codes = _noise(state, batch_size, 1)

    def loss_fn(g_params):
        fake, g_stats = _run_g(state, g_params, z)
        logits, q = _split_logits(
            state, _run_d(state, state.d_params, state.d_batch_stats, _augment(state, fake, 2))[0]
        )
        if top_k is None:
            adv = _bce(logits, 1.0)
        else:
            per = jnp.mean(
                optax.sigmoid_binary_cross_entropy(logits, jnp.ones_like(logits)),
                axis=tuple(range(1, logits.ndim)),
            )
            mask = top_k_mask(-jax.lax.stop_gradient(per), top_k)  # most realistic first
            adv = jnp.sum(per * mask) / jnp.sum(mask)
        info = _info_loss(q, codes) if q is not None else jnp.zeros(())
        return adv + state.info_weight * info, (g_stats, logits, adv, info)

    (_, (stats, logits, loss, info)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.g_params
    )
    updates, opt_state = state.g_tx.update(grads, state.g_opt_state, state.g_params)
    updates = _scaled(updates, lr_scale)
    state = state.replace(
        g_params=optax.apply_updates(state.g_params, updates),
        g_opt_state=opt_state,
        g_batch_stats=stats,
    )
    metrics = {"g_loss": loss, "d_gen": jnp.mean(nn.sigmoid(logits))}
    if state.num_codes:
        metrics["info_loss"] = info
    return state, metrics


def top_k_schedule(
    epoch: int, batch_size: int, gamma: float = 0.99, min_fraction: float = 0.5
) -> int:
    """Sinha et al.'s ``k`` for an epoch (0-based): ``max(gamma**epoch, min_fraction) * batch``
    (the paper: ``gamma`` 0.99, ``min_fraction`` 0.5 to 0.75)."""
    return max(int(batch_size * gamma**epoch), int(batch_size * min_fraction), 1)


def gan_train_step(
    state: GANState,
    real,
    top_k=None,
    lr_scale=None,
    real_codes=None,
    *,
    label_smoothing: float = 0.0,
):
    """One D update then one G update on a batch of real images; increments ``step``.
    ``top_k``: see :func:`g_step` (``None``: every fake counts). ``lr_scale`` (a float, may be
    traced): both networks' optimizer updates are multiplied by it, i.e. for Adam the learning
    rate, without changing the optimizer state's structure (a schedule per epoch that a run
    resumed from an older checkpoint can take up). ``real_codes``: the real images' classes
    for a class-conditional AC-GAN (see :func:`d_step`)."""
    state, dm = d_step(state, real, lr_scale, real_codes, label_smoothing=label_smoothing)
    state, gm = g_step(state, real.shape[0], top_k, lr_scale)
    if state.g_ema_params is not None:  # g_ema <- decay * g_ema + (1 - decay) * g
        state = state.replace(
            g_ema_params=optax.incremental_update(
                state.g_params, state.g_ema_params, 1.0 - state.ema_decay
            )
        )
    return state.replace(step=state.step + 1), {**dm, **gm}


def make_gan_train_step(label_smoothing: float = 0.0):
    """``gan_train_step`` under one ``jax.jit`` with the state donated: call it as
    ``step(state, real)`` or ``step(state, real, k)`` (top-k generator updates; ``k`` a Python or
    JAX integer, traced, so a new ``k`` each epoch does not recompile), ``step(state, real, k,
    lr_scale, labels)`` for an AC-GAN."""
    return jax.jit(
        functools.partial(gan_train_step, label_smoothing=label_smoothing), donate_argnums=0
    )


def generate(state: GANState, z, train: bool = False, ema: bool = False):
    """Images in ``[-1, 1]`` from noise ``z`` ``(N, latent_dim)``.

    ``train=False`` normalises with G's running statistics (deterministic per sample);
    ``train=True`` with the statistics of the batch ``z`` itself (no state is changed).
    ``ema=True`` uses the averaged generator parameters (``create_gan_state(ema_decay=...)``;
    the running statistics were gathered with the raw ones, so pair it with ``train=True``)."""
    variables = state.g_ema_variables if ema else state.g_variables
    if train:
        return _run_g(state, variables["params"], z)[0]
    return state.generator.apply(variables, z, train=False)


@functools.lru_cache(maxsize=None)
def make_generate(train: bool = False, ema: bool = False):
    """A jitted :func:`generate` (cached per mode)."""
    return jax.jit(functools.partial(generate, train=train, ema=ema))
