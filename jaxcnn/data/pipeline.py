"""Splitting, preprocessing, batching and device prefetch.

Static shapes everywhere: training batches drop the incomplete last batch (the data are
reshuffled every epoch, so every example is seen); evaluation batches pad the last batch and
carry a ``mask`` of 0/1 weights, so no step is ever compiled twice.
"""

from __future__ import annotations

import collections
import itertools
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.data.legacy import Dataset

__all__ = ["split", "preprocess", "batches", "num_batches", "prefetch_to_device", "augment_batch"]


def split(
    ds: Dataset, test: float | int = 0.2, seed: int | None = 0, num_train: int | None = None
) -> tuple[Dataset, Dataset]:
    """Train/test split. ``test`` is a fraction or a count; ``seed=None`` keeps the order (the
    *last* examples are the test set, e.g. MNIST-test's first 8,000 / last 2,000)."""
    n = len(ds)
    n_test = int(round(test * n)) if isinstance(test, float) else int(test)
    if not 0 < n_test < n:
        raise ValueError(f"test split of {test!r} leaves no train or test data out of {n}")
    order = np.arange(n) if seed is None else np.random.default_rng(seed).permutation(n)
    train_idx, test_idx = order[: n - n_test], order[n - n_test :]
    if num_train is not None:
        train_idx = train_idx[:num_train]
    return ds.subset(train_idx), ds.subset(test_idx)


def _fit_size(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Pad (when at most 4 pixels short on each axis, like MNIST 28->32) or resize (bilinear,
    antialiased) images ``(N, H, W, C)`` to ``size``."""
    h, w = x.shape[1:3]
    th, tw = size
    if (h, w) == (th, tw):
        return x
    if 0 <= th - h <= 4 and 0 <= tw - w <= 4:
        ph, pw = th - h, tw - w
        return np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    out = jax.image.resize(
        jnp.asarray(x, jnp.float32), (x.shape[0], th, tw, x.shape[3]), "linear", antialias=True
    )
    return np.asarray(out)


def preprocess(
    ds: Dataset,
    size: tuple[int, int] | None = None,
    channels: int | None = None,
    mean=None,
    std=None,
) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Scale to [0, 1], fit to ``size``, match ``channels`` (gray -> RGB by repetition) and
    standardise with ``mean``/``std`` (per channel; computed from ``ds`` when not given — pass
    the training set's statistics to the test set). Returns ``(images float32, labels,
    (mean, std))``."""
    x: np.ndarray = ds.images.astype(np.float32) / float(ds.max_value)
    if channels is not None and x.shape[-1] != channels:
        if x.shape[-1] == 1:
            x = np.repeat(x, channels, axis=-1)
        elif channels == 1:
            x = x.mean(axis=-1, keepdims=True)
        else:
            raise ValueError(
                f"dataset {ds.name!r} has {x.shape[-1]} channels; the model expects {channels}"
            )
    if size is not None:
        th, tw = size
        x = _fit_size(x, (th, tw))
    if mean is None:
        mean = x.mean(axis=(0, 1, 2))
        std = x.std(axis=(0, 1, 2)) + 1e-6
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return x.astype(np.float32), ds.labels, (np.asarray(mean), np.asarray(std))


def num_batches(n: int, batch_size: int, drop_remainder: bool) -> int:
    return n // batch_size if drop_remainder else -(-n // batch_size)


def batches(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
    drop_remainder: bool = False,
    start: int = 0,
) -> Iterator[dict]:
    """Yield ``{"image", "label", "mask"}`` numpy batches of exactly ``batch_size``.

    The order of an epoch depends only on ``(seed, epoch)``, so a resumed run sees the same
    batches; ``start`` skips the first batches (resuming mid-epoch). The incomplete last batch
    is dropped (``drop_remainder``) or zero-padded with ``mask`` 0.
    """
    n = len(labels)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if drop_remainder and n < batch_size:
        raise ValueError(f"batch_size {batch_size} is larger than the {n} training examples")
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    for b in range(start, num_batches(n, batch_size, drop_remainder)):
        idx = order[b * batch_size : (b + 1) * batch_size]
        mask = np.ones(batch_size, np.float32)
        if len(idx) < batch_size:
            mask[len(idx) :] = 0
            idx = np.concatenate([idx, np.zeros(batch_size - len(idx), idx.dtype)])
        yield {"image": images[idx], "label": labels[idx].astype(np.int32), "mask": mask}


def prefetch_to_device(iterator, size: int = 2, sharding=None):
    """Move batches to the device(s) ``size`` steps ahead (``sharding``: e.g. the data-parallel
    ``NamedSharding`` from :mod:`jaxcnn.train.mesh`)."""
    queue: collections.deque = collections.deque()

    def put(batch):
        return jax.device_put(batch, sharding) if sharding is not None else jax.device_put(batch)

    for batch in itertools.islice(iterator, size):
        queue.append(put(batch))
    for batch in iterator:
        out = queue.popleft()
        queue.append(put(batch))
        yield out
    while queue:
        yield queue.popleft()


def augment_batch(key, images, max_shift: int = 2, flip: bool = False):
    """Random translations by up to ``max_shift`` pixels (zero fill) and optional horizontal
    flips, per example, on device (jit-able)."""
    n, h, w, c = images.shape
    k1, k2 = jax.random.split(key)
    shifts = jax.random.randint(k1, (n, 2), 0, 2 * max_shift + 1)
    padded = jnp.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)))
    crop = jax.vmap(lambda img, s: jax.lax.dynamic_slice(img, (s[0], s[1], 0), (h, w, c)))
    out = crop(padded, shifts)
    if flip:
        do = jax.random.bernoulli(k2, 0.5, (n, 1, 1, 1))
        out = jnp.where(do, out[:, :, ::-1], out)
    return out
