"""Mixup and CutMix as on-device batch operations with soft targets (timm's ``Mixup``).

Per batch, as timm's ``mode="batch"``: with probability ``prob`` the batch is mixed; if both
alphas are set, CutMix is chosen with probability ``switch_prob``, else Mixup; the mixing weight
``lam`` is drawn from ``Beta(alpha, alpha)`` of the chosen method. Example ``i`` is mixed with
example ``B - 1 - i`` (the batch reversed, as timm's ``x.flip(0)``). Mixup blends whole images,
``lam * x + (1 - lam) * x_rev``; CutMix pastes a box of area ``(1 - lam)`` from ``x_rev`` at a
uniform centre (clipped at the border) and, with ``correct_lam``, recomputes ``lam`` from the
clipped box. Targets are ``lam * y + (1 - lam) * y_rev`` with label smoothing folded in
(``on = 1 - s + s / K``, ``off = s / K``), so the loss is :func:`soft_cross_entropy` and label
smoothing is not applied a second time.

Everything is traced: the config is static, the random draws come from a JAX key (fold the
step into it), and no shape depends on a draw, so one compilation serves every batch.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import jax.numpy as jnp
import optax

__all__ = [
    "MIXUP_DEFAULTS",
    "MixupConfig",
    "mix_batch",
    "mixup_from_config",
    "smooth_targets",
    "soft_cross_entropy",
    "soft_target_metrics",
]


@dataclasses.dataclass(frozen=True)
class MixupConfig:
    """timm's ``Mixup`` arguments (``mode="batch"``): see the module docstring."""

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    prob: float = 1.0
    switch_prob: float = 0.5
    label_smoothing: float = 0.0
    correct_lam: bool = True

    def __post_init__(self):
        if self.mixup_alpha < 0 or self.cutmix_alpha < 0:
            raise ValueError(
                f"mixup_alpha and cutmix_alpha must be >= 0; got {self.mixup_alpha}, "
                f"{self.cutmix_alpha}"
            )
        for name in ("prob", "switch_prob", "label_smoothing"):
            v = getattr(self, name)
            if not 0 <= v <= 1:
                raise ValueError(f"mixup {name} must be in [0, 1]; got {v}")

    @property
    def enabled(self) -> bool:
        return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.prob > 0


MIXUP_DEFAULTS = {
    "mixup_alpha": 0.0,
    "cutmix_alpha": 0.0,
    "mixup_prob": 1.0,
    "mixup_switch_prob": 0.5,
    "label_smoothing": 0.0,
}


def mixup_from_config(cfg: Mapping) -> MixupConfig:
    """A :class:`MixupConfig` from the keys of :data:`MIXUP_DEFAULTS` (missing keys: defaults)."""
    c = {**MIXUP_DEFAULTS, **{k: cfg[k] for k in MIXUP_DEFAULTS if k in cfg}}
    return MixupConfig(
        mixup_alpha=float(c["mixup_alpha"]),
        cutmix_alpha=float(c["cutmix_alpha"]),
        prob=float(c["mixup_prob"]),
        switch_prob=float(c["mixup_switch_prob"]),
        label_smoothing=float(c["label_smoothing"] or 0.0),
    )


def smooth_targets(labels, num_classes: int, label_smoothing: float = 0.0):
    """One-hot ``(B, K)`` float32 targets with ``off = s / K`` and ``on = 1 - s + s / K``."""
    off = label_smoothing / num_classes
    return jax.nn.one_hot(labels, num_classes) * (1.0 - label_smoothing) + off


def _cutmix_box(key, height: int, width: int, lam):
    """timm's ``rand_bbox``: a box of side ``sqrt(1 - lam)`` of the image at a uniform centre,
    clipped at the border; returns a ``(H, W)`` boolean mask and the area fraction it keeps."""
    ratio = jnp.sqrt(1.0 - lam)
    cut_h = (height * ratio).astype(jnp.int32)
    cut_w = (width * ratio).astype(jnp.int32)
    ky, kx = jax.random.split(key)
    cy = jax.random.randint(ky, (), 0, height)
    cx = jax.random.randint(kx, (), 0, width)
    yl, yh = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height)
    xl, xh = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width)
    ys = jnp.arange(height)[:, None]
    xs = jnp.arange(width)[None, :]
    mask = (ys >= yl) & (ys < yh) & (xs >= xl) & (xs < xh)
    kept = 1.0 - ((yh - yl) * (xh - xl)).astype(jnp.float32) / (height * width)
    return mask, kept


def mix_batch(key, images, labels, num_classes: int, cfg: MixupConfig):
    """Mix a batch ``images (B, H, W, C)``, integer ``labels (B,)``: returns ``(images,
    targets (B, K) float32, lam)``. With mixing off (``cfg.enabled`` False) only label smoothing
    applies and ``lam`` is 1."""
    if not cfg.enabled:
        return images, smooth_targets(labels, num_classes, cfg.label_smoothing), jnp.float32(1.0)
    k_apply, k_switch, k_mix, k_cut, k_box = jax.random.split(key, 5)
    if cfg.mixup_alpha > 0 and cfg.cutmix_alpha > 0:
        use_cutmix = jax.random.uniform(k_switch) < cfg.switch_prob
        lam_mix = jax.random.beta(k_mix, cfg.mixup_alpha, cfg.mixup_alpha)
        lam_cut = jax.random.beta(k_cut, cfg.cutmix_alpha, cfg.cutmix_alpha)
        lam = jnp.where(use_cutmix, lam_cut, lam_mix)
    elif cfg.mixup_alpha > 0:
        use_cutmix = jnp.bool_(False)
        lam = jax.random.beta(k_mix, cfg.mixup_alpha, cfg.mixup_alpha)
    else:
        use_cutmix = jnp.bool_(True)
        lam = jax.random.beta(k_cut, cfg.cutmix_alpha, cfg.cutmix_alpha)
    lam = jnp.where(jax.random.uniform(k_apply) < cfg.prob, lam.astype(jnp.float32), 1.0)

    rev = images[::-1]
    height, width = images.shape[1:3]
    mask, kept = _cutmix_box(k_box, height, width, lam)
    if cfg.correct_lam:
        lam = jnp.where(use_cutmix, kept, lam)
    x = images.astype(jnp.float32)
    mixed = lam * x + (1.0 - lam) * rev.astype(jnp.float32)
    cut = jnp.where(mask[None, :, :, None], rev, images)
    out = jnp.where(use_cutmix, cut, mixed.astype(images.dtype))

    y = smooth_targets(labels, num_classes, cfg.label_smoothing)
    targets = lam * y + (1.0 - lam) * y[::-1]
    return out, targets, lam


def soft_cross_entropy(logits, targets, weights=None):
    """Mean of ``-sum(targets * log_softmax(logits))`` over examples weighted by ``weights``."""
    per = optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)
    if weights is None:
        return jnp.mean(per)
    return jnp.sum(per * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def soft_target_metrics(logits, targets, weights=None) -> dict:
    """Train-time metric sums under mixing, the keys of ``losses.classification_metrics``:
    ``loss_sum`` (soft cross-entropy), ``correct`` (the prediction equals the dominant label of
    the mixed target: the one with weight ``max(lam, 1 - lam)``; for unmixed batches the true
    label) and ``count``."""
    if weights is None:
        weights = jnp.ones(logits.shape[:1], jnp.float32)
    per = optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)
    correct = (jnp.argmax(logits, -1) == jnp.argmax(targets, -1)).astype(jnp.float32)
    return {
        "loss_sum": jnp.sum(per * weights),
        "correct": jnp.sum(correct * weights),
        "count": jnp.sum(weights),
    }
