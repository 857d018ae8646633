"""New heads, backbone features and linear classifiers on them.

- :func:`replace_head`: variables of a model trained with K classes -> variables for the same
  architecture with N classes: every leaf but the head's is kept (the very same array), the
  head is freshly initialised by the new model.
- :func:`extract_features`: backbone features of a dataset, per stage (``features_only=True``),
  global-average-pooled by default, computed in fixed-size jitted batches.
- :func:`fit_linear`: a multinomial logistic-regression classifier on features, returned as
  ``{"kernel", "bias"}``: exactly a Dense head, so it can be put back into the model.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from jaxcnn.transfer.labels import match
from jaxcnn.utils import abstract_init

__all__ = ["replace_head", "extract_features", "fit_linear", "linear_accuracy"]


def replace_head(
    variables: dict,
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    num_classes: int | None = None,
    reinit: Sequence[str] = ("head",),
    seed: int = 0,
) -> dict:
    """Variables for ``model`` (e.g. ``create_model(name, num_classes=N)``; or pass
    ``num_classes`` to clone it) built from ``variables`` of the same architecture.

    Leaves whose path (inside their collection) matches a ``reinit`` pattern are freshly
    initialised; every other leaf of every collection (``params``, ``batch_stats``) is taken
    from ``variables`` unchanged. Raises ``ValueError`` naming the leaves that are missing,
    left over or of another shape, so a different architecture cannot slip through.
    Only the re-initialised leaves are computed (the rest of ``init`` is dead code under jit).
    """
    if num_classes is not None:
        model = model.clone(num_classes=num_classes)
    x = jnp.zeros(tuple(input_shape), jnp.float32)
    rngs = {"params": jax.random.key(seed), "dropout": jax.random.key(seed + 1)}
    init = lambda: model.init(rngs, x, train=False)  # noqa: E731
    abstract = {
        c: traverse_util.flatten_dict(dict(v), sep="/")
        for c, v in abstract_init(model, input_shape, seed=seed).items()
    }
    fresh_keys = {
        (c, p) for c, flat in abstract.items() for p in flat if any(match(r, p) for r in reinit)
    }
    if not fresh_keys:
        raise ValueError(f"no leaf of the new model matches reinit={list(reinit)}")

    def init_fresh():
        v = init()
        flat = {c: traverse_util.flatten_dict(dict(v[c]), sep="/") for c in v}
        return {f"{c}:{p}": flat[c][p] for c, p in fresh_keys}

    fresh = jax.jit(init_fresh)()
    out, problems = {}, []
    for c, flat_new in abstract.items():
        flat_old = traverse_util.flatten_dict(dict(variables.get(c, {})), sep="/")
        merged = {}
        for p in list(flat_old) + [p for p in flat_new if p not in flat_old]:
            if (c, p) in fresh_keys:
                merged[p] = fresh[f"{c}:{p}"]
            elif p not in flat_new:
                problems.append(f"{c}/{p}: not in the new model")
            elif p not in flat_old:
                problems.append(f"{c}/{p}: missing from the given variables")
            elif flat_old[p].shape != flat_new[p].shape:
                problems.append(
                    f"{c}/{p}: shape {tuple(flat_old[p].shape)} given, "
                    f"{tuple(flat_new[p].shape)} expected"
                )
            else:
                merged[p] = flat_old[p]
        out[c] = traverse_util.unflatten_dict(merged, sep="/")
    if problems:
        raise ValueError(
            "variables do not fit the new model outside reinit="
            f"{list(reinit)}: "
            + "; ".join(problems[:10])
            + (f"; ... ({len(problems)} in all)" if len(problems) > 10 else "")
        )
    return out


def _pool(f):
    return f.mean(axis=tuple(range(1, f.ndim - 1))) if f.ndim > 2 else f


def extract_features(
    model: nn.Module,
    variables: dict,
    images: np.ndarray,
    *,
    batch_size: int = 256,
    pool: bool = True,
    stages: Sequence[int] | None = None,
) -> list[np.ndarray]:
    """Backbone features of ``images`` (eval mode): one ``(N, C)`` array per stage of the
    model's ``feature_info`` (global-average-pooled; ``pool=False`` keeps the maps).

    ``stages`` picks stage indices (``[-1]``: the last one). The model is cloned with
    ``features_only=True``; batches are padded to ``batch_size`` (one compilation).
    """
    fmodel = model.clone(features_only=True)

    @jax.jit
    def run(v, x):
        feats = fmodel.apply(v, x, train=False)
        if stages is not None:
            feats = [feats[i] for i in stages]
        return [_pool(f) if pool else f for f in feats]

    n = len(images)
    batch_size = min(batch_size, n)
    out = []
    for i in range(0, n, batch_size):
        x = np.asarray(images[i : i + batch_size])
        k = len(x)
        if k < batch_size:
            x = np.concatenate([x, np.zeros((batch_size - k, *x.shape[1:]), x.dtype)])
        out.append([np.asarray(f)[:k] for f in run(variables, x)])
    return [np.concatenate(parts) for parts in zip(*out)]


def fit_linear(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    *,
    steps: int = 500,
    learning_rate: float = 1e-2,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> dict:
    """Softmax regression on ``features (N, C)``: full-batch Adam with L2 (one jitted loop).
    Returns ``{"kernel": (C, num_classes), "bias": (num_classes,)}``, a Dense head."""
    x = jnp.asarray(features, jnp.float32)
    y = jnp.asarray(labels, jnp.int32)
    k = jax.random.key(seed)
    params = {
        "kernel": jax.random.normal(k, (x.shape[1], num_classes)) * 0.01,
        "bias": jnp.zeros((num_classes,)),
    }
    tx = optax.adamw(learning_rate, weight_decay=weight_decay)

    def loss(p):
        logits = x @ p["kernel"] + p["bias"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def train(p):
        def body(_, carry):
            p, s = carry
            g = jax.grad(loss)(p)
            u, s = tx.update(g, s, p)
            return optax.apply_updates(p, u), s

        return jax.lax.fori_loop(0, steps, body, (p, tx.init(p)))[0]

    return train(params)


def linear_accuracy(head: dict, features: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy of a ``{"kernel", "bias"}`` classifier on features."""
    logits = np.asarray(features) @ np.asarray(head["kernel"]) + np.asarray(head["bias"])
    return float((logits.argmax(-1) == np.asarray(labels)).mean())
