"""Evaluating a generator with a classifier trained on real images (a "judge").

The judge is any callable ``judge(images01) -> (logits, features)`` on images in ``[0, 1]``:
logits ``(N, classes)`` and penultimate features ``(N, D)``. The DCGAN experiment's is a
LeNet-5 trained on real digits by the training engine (``experiments/gan_judge.py``); the
figures below depend only on its outputs:

- **confident share**: the fraction of generated samples whose top softmax probability is at
  least ``threshold`` (0.9): the samples look like *some* digit;
- **class spread**: the histogram of predicted classes (shares summing to 1); a generator that
  covers all digits puts about 10% in each, a collapsed one piles them on a few;
- **Fréchet distance** between Gaussians fitted to the classifier's penultimate features (for
  LeNet-5 the 84-unit F6 layer) of generated and of real images, the FID recipe (Heusel et al.,
  2017) with a small digit classifier instead of Inception. Its value depends on the feature
  extractor and the sample sizes, so it is only meaningful beside the real-vs-real baseline:
  the distance between two disjoint sets of real images of the same sizes.

``FD = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))``, computed in float64 with
``tr((S1 S2)^(1/2)) = sum(sqrt(eig(S1^(1/2) S2 S1^(1/2))))`` (a symmetric PSD matrix, so no
complex square roots).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

# images in [0, 1], NHWC -> (logits (N, classes), features (N, D)), both numpy
Judge = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]

__all__ = [
    "Judge",
    "confidence_metrics",
    "feature_stats",
    "frechet_distance",
    "gaussian_frechet_distance",
    "evaluate_samples",
]


def confidence_metrics(logits, threshold: float = 0.9) -> dict[str, Any]:
    """Share of samples with max softmax >= ``threshold`` and the predicted-class spread.

    Returns ``confident_share``, ``mean_confidence``, ``class_share`` (list, one share per
    class over all samples), ``min_class_share``, ``max_class_share`` and
    ``confident_class_share`` (the spread among the confident samples only).
    """
    logits = np.asarray(logits, np.float64)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    conf, pred = p.max(-1), p.argmax(-1)
    k = logits.shape[-1]
    share = np.bincount(pred, minlength=k) / max(len(pred), 1)
    confident = conf >= threshold
    cshare = np.bincount(pred[confident], minlength=k) / max(int(confident.sum()), 1)
    return {
        "confident_share": float(confident.mean()),
        "mean_confidence": float(conf.mean()),
        "class_share": [float(s) for s in share],
        "min_class_share": float(share.min()),
        "max_class_share": float(share.max()),
        "confident_class_share": [float(s) for s in cshare],
    }


def feature_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (unbiased) of ``(N, D)`` features, in float64."""
    f = np.asarray(features, np.float64).reshape(len(features), -1)
    return f.mean(0), np.cov(f, rowvar=False)


def gaussian_frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet (2-Wasserstein squared) distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # S1^(1/2)
    m = r1 @ s2 @ r1
    ev = np.linalg.eigvalsh((m + m.T) / 2)
    tr_sqrt = np.sqrt(np.clip(ev, 0, None)).sum()
    d = float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)
    return max(d, 0.0)


def frechet_distance(features1, features2) -> float:
    """Fréchet distance between Gaussians fitted to two ``(N, D)`` feature sets."""
    return gaussian_frechet_distance(*feature_stats(features1), *feature_stats(features2))


def evaluate_samples(
    classifier: Judge,
    samples01,
    real01=None,
    threshold: float = 0.9,
    seed: int = 0,
    real_outputs=None,
) -> dict[str, Any]:
    """All figures for generated ``samples01`` against real images ``real01`` (both in [0, 1]).

    The real images are shuffled and split in two disjoint halves A and B. ``fd`` compares the
    samples with A; ``fd_real_baseline`` compares the first ``len(samples)`` images of B with A
    (the same sizes, so the same estimator bias); ``fd_real_halves`` compares all of B with A.
    Also reports ``real_confident_share`` (the classifier on real images A, for scale).
    ``real_outputs``: ``classifier(real01)`` computed once, to evaluate repeatedly cheaply.
    """
    lg_r, f_r = classifier(real01) if real_outputs is None else real_outputs
    perm = np.random.default_rng(seed).permutation(len(lg_r))
    lg_r, f_r = lg_r[perm], f_r[perm]
    half = len(lg_r) // 2
    n = min(len(samples01), len(lg_r) - half)
    lg_s, f_s = classifier(samples01)
    fa, fb = f_r[:half], f_r[half:]
    stats_a = feature_stats(fa)
    out = confidence_metrics(lg_s, threshold)
    out.update(
        num_samples=int(len(samples01)),
        num_real=int(len(lg_r)),
        fd=gaussian_frechet_distance(*feature_stats(f_s), *stats_a),
        fd_real_baseline=gaussian_frechet_distance(*feature_stats(fb[:n]), *stats_a),
        fd_real_halves=gaussian_frechet_distance(*feature_stats(fb), *stats_a),
        real_confident_share=confidence_metrics(lg_r[:half], threshold)["confident_share"],
    )
    return out
