"""Ensembles: average the softmax outputs of several models (or checkpoints of one model).

    ens = Ensemble([(model_a, variables_a), (model_b, variables_b), (model_c, variables_c)])
    probs = ens.predict_proba(images)           # (N, classes): mean of the members' softmax
    res = ens.evaluate(images, labels)          # {"accuracy", "nll", "members": [...]}

Members may be different architectures; each is jitted on its own, in eval mode
(``train=False``). ``weights`` gives a weighted mean (normalised to sum to 1). The ensemble's
prediction is the argmax of the mean probabilities ("soft voting").
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Ensemble", "ensemble_probs"]


def ensemble_probs(member_logits: Sequence[jax.Array], weights=None) -> jax.Array:
    """The (weighted) mean of ``softmax(logits)`` over members; ``member_logits``: a list of
    ``(N, classes)`` arrays."""
    if not member_logits:
        raise ValueError("an ensemble needs at least one member")
    shapes = {tuple(x.shape) for x in member_logits}
    if len(shapes) != 1:
        raise ValueError(f"members' outputs differ in shape: {sorted(shapes)}")
    probs = jnp.stack([jax.nn.softmax(jnp.asarray(x, jnp.float32), axis=-1) for x in member_logits])
    w = _weights(weights, len(member_logits))
    return jnp.tensordot(w, probs, axes=1)


def _weights(weights, n: int) -> jax.Array:
    if weights is None:
        return jnp.full((n,), 1.0 / n, jnp.float32)
    w = np.asarray(weights, np.float64)
    if w.shape != (n,) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(
            f"ensemble weights must be {n} non-negative numbers with a positive sum, got {weights}"
        )
    return jnp.asarray(w / w.sum(), jnp.float32)


class Ensemble:
    """Soft-voting ensemble of ``members``: ``(module, variables)`` pairs."""

    def __init__(self, members: Sequence[tuple[nn.Module, Any]], weights=None):
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = list(members)
        self.weights = _weights(weights, len(self.members))
        self._fns = [jax.jit(lambda v, x, m=m: m.apply(v, x, train=False)) for m, _ in members]

    def member_logits(self, x) -> list[jax.Array]:
        return [f(v, x) for f, (_, v) in zip(self._fns, self.members)]

    def predict_proba(self, x) -> jax.Array:
        return ensemble_probs(self.member_logits(x), self.weights)

    def evaluate(self, images, labels, batch_size: int = 256) -> dict:
        """Accuracy and negative log-likelihood of the ensemble and of every member over
        ``images`` / ``labels`` (numpy arrays), in batches (the last one smaller)."""
        labels = np.asarray(labels)
        if len(images) != len(labels) or len(labels) == 0:
            raise ValueError(f"{len(images)} images and {len(labels)} labels do not pair up")
        ens_p: list[np.ndarray] = []
        mem_p: list[list[np.ndarray]] = [[] for _ in self.members]
        for i in range(0, len(labels), batch_size):
            logits = self.member_logits(jnp.asarray(images[i : i + batch_size]))
            for k, lg in enumerate(logits):
                mem_p[k].append(np.asarray(jax.nn.softmax(lg.astype(jnp.float32), axis=-1)))
            ens_p.append(np.asarray(ensemble_probs(logits, self.weights)))
        res = _scores(np.concatenate(ens_p), labels)
        res["members"] = [_scores(np.concatenate(p), labels) for p in mem_p]
        return res


def _scores(probs: np.ndarray, labels: np.ndarray) -> dict:
    p_true = probs[np.arange(len(labels)), labels]
    return {
        "accuracy": float(np.mean(probs.argmax(-1) == labels)),
        "nll": float(-np.mean(np.log(np.clip(p_true, 1e-12, None)))),
        "count": int(len(labels)),
    }
