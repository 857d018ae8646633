"""Segmentation data: canvases of real handwritten digits (offline) and Oxford-IIIT Pet (TFDS).

Digit canvases: ``size x size`` (64) black images with 1-3 real digits pasted at random places,
their ink boxes not overlapping. Labels have 11 classes: ``0`` background, ``1 + d`` for a
pixel of digit ``d``. A digit's pixels are those whose intensity exceeds ``threshold`` (0.5 of
the maximum): the anti-aliased fringe below it counts as background, so that the label is a
function of what the network sees. The digits are the real MNIST test set (``mnist_idx`` in
``../shared/data/mnist-test`` or ``$JAXCNN_SHARED_DATA/mnist-test``) or, when it is absent,
scikit-learn's 1,797 8x8 digits (bundled in the package) scaled to 20x20 (scikit-image, the
``images`` extra) and centred in 28x28 as MNIST's are.

    images, labels, source = load_digit_source()
    (tr_x, tr_y), (te_x, te_y) = split_digits(images, labels)   # MNIST: first 8,000 / last 2,000
    x, y = make_canvases(tr_x, tr_y, 32, np.random.default_rng(0))  # (32,64,64,1), (32,64,64)
    data = digit_canvas_data(num_test=1000)   # the same, plus 1,000 fixed held-out canvases

Everything is deterministic given the seed: training batch ``t`` is drawn with
``default_rng([seed, t])`` (:func:`canvas_batch`, :class:`CanvasIterator`), the held-out
(test) canvases with ``default_rng([seed, 2**31])`` and the validation canvases (of digits held
out of the training digits, ``validation_split``) with ``default_rng([seed, 2**31 + 1])``,
streams no training step reaches.

Oxford-IIIT Pet (``tfds.load("oxford_iiit_pet")``, needs a network or a prepared data dir):
:func:`pets_dataset` resizes image and trimap and maps the trimap's 1/2/3 (pet, background,
border) to classes 0/1/2.
"""

from __future__ import annotations

import pathlib

import numpy as np

from jaxcnn.utils import optional_import

__all__ = [
    "NUM_CLASSES",
    "load_digit_source",
    "split_digits",
    "make_canvases",
    "canvas_batch",
    "canvas_batches",
    "CanvasIterator",
    "digit_canvas_data",
    "colorize",
    "pets_dataset",
    "pets_preprocess",
]

NUM_CLASSES = 11  # background + 10 digits


def load_digit_source(data_dir: str | None = None, source: str = "auto"):
    """Real digits as float32 ``(N, 28, 28)`` in ``[0, 1]``, int32 labels and the source name.

    ``source``: ``"mnist"`` (IDX files in ``data_dir`` or the shared MNIST test set),
    ``"digits"`` (scikit-learn's, bundled; resizing them needs the ``images`` extra) or
    ``"auto"`` (MNIST when found).
    """
    from jaxcnn.data.idx import load_idx_folder
    from jaxcnn.data.sources import default_mnist_dir

    if source not in ("auto", "mnist", "digits"):
        raise ValueError(f"source must be 'auto', 'mnist' or 'digits', got {source!r}")
    folder = pathlib.Path(data_dir) if data_dir else default_mnist_dir()
    if source == "mnist" or (source == "auto" and folder.is_dir()):
        images, labels = load_idx_folder(folder)
        return images.astype(np.float32) / 255.0, labels.astype(np.int32), "mnist"
    from jaxcnn.data.sources import bundled_digits

    resize = optional_import("skimage.transform", "scaling the 8x8 digits to 28x28").resize
    digits, targets = bundled_digits()  # scikit-learn's load_digits(), shipped in the package
    small = digits.astype(np.float32) / 16.0
    images = np.zeros((len(small), 28, 28), np.float32)
    for i, img in enumerate(small):
        images[i, 4:24, 4:24] = resize(img, (20, 20), order=1, anti_aliasing=False)
    return np.clip(images, 0.0, 1.0), targets.astype(np.int32), "digits"


def split_digits(
    images: np.ndarray, labels: np.ndarray, num_train: int | None = None
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """First ``num_train`` digits for training, the rest held out (default: 8,000 of MNIST's
    10,000 test digits, 80% otherwise). Held-out canvases use only held-out digits."""
    n = len(images)
    if num_train is None:
        num_train = 8000 if n == 10000 else int(round(0.8 * n))
    if not 0 < num_train < n:
        raise ValueError(f"num_train must be between 1 and {n - 1}, got {num_train}")
    return (images[:num_train], labels[:num_train]), (images[num_train:], labels[num_train:])


def _ink_box(img, level: float = 0.05):
    rows = np.flatnonzero(img.max(1) > level)
    cols = np.flatnonzero(img.max(0) > level)
    if len(rows) == 0:
        return img[:1, :1]
    return img[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def make_canvases(
    images,
    labels,
    n: int,
    rng: np.random.Generator,
    size: int = 64,
    min_digits: int = 1,
    max_digits: int = 3,
    threshold: float = 0.5,
    max_tries: int = 50,
):
    """``n`` canvases: float32 images ``(n, size, size, 1)`` in ``[0, 1]`` and int32 labels
    ``(n, size, size)`` (0 background, ``1 + digit`` where the digit's intensity > threshold).

    Each canvas draws its number of digits uniformly in ``[min_digits, max_digits]`` and the
    digits at random from ``images``; each digit is cropped to its ink box and placed where the
    box overlaps no box already placed (a digit that finds no room in ``max_tries`` is skipped,
    which never happens for 3 MNIST digits on 64x64).
    """
    if not 1 <= min_digits <= max_digits:
        raise ValueError(f"need 1 <= min_digits <= max_digits, got {min_digits}, {max_digits}")
    if images.shape[1] > size or images.shape[2] > size:
        raise ValueError(f"digits of {images.shape[1:3]} do not fit a {size}x{size} canvas")
    x = np.zeros((n, size, size), np.float32)
    y = np.zeros((n, size, size), np.int32)
    for i in range(n):
        boxes: list[tuple[int, int, int, int]] = []  # top, left, height, width
        for j in rng.choice(len(images), rng.integers(min_digits, max_digits + 1)):
            patch = _ink_box(images[j])
            h, w = patch.shape
            for _ in range(max_tries):
                top, left = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
                if all(
                    top >= b + bh or top + h <= b or left >= c + bw or left + w <= c
                    for b, c, bh, bw in boxes
                ):
                    break
            else:
                continue
            boxes.append((top, left, h, w))
            x[i, top : top + h, left : left + w] = np.maximum(
                x[i, top : top + h, left : left + w], patch
            )
            region = y[i, top : top + h, left : left + w]
            region[patch > threshold] = labels[j] + 1
    return x[..., None], y


def canvas_batch(images, labels, batch_size: int, seed: int, step: int, **kwargs):
    """The training batch of ``step``: fresh canvases drawn with ``default_rng([seed, step])``,
    so a resumed run sees exactly the batches an uninterrupted one would."""
    return make_canvases(images, labels, batch_size, np.random.default_rng([seed, step]), **kwargs)


def canvas_batches(images, labels, batch_size: int, seed: int = 0, start: int = 0, **kwargs):
    """Endless iterator of fresh canvas batches ``(x, y)``: :func:`canvas_batch` for steps
    ``start, start + 1, ...``."""
    step = start
    while True:
        yield canvas_batch(images, labels, batch_size, seed, step, **kwargs)
        step += 1


class CanvasIterator:
    """Endless training batches ``{"image", "label"}`` of fresh canvases, batch ``t`` being
    :func:`canvas_batch` for step ``t``; ``get_state()``/``state=`` resume exactly (the state
    is the number of batches drawn). With several processes, each yields only its rows of
    every global batch (``process_index`` of ``process_count``; default JAX's)."""

    def __init__(
        self,
        images,
        labels,
        global_batch_size: int,
        seed: int = 0,
        *,
        state: dict | None = None,
        process_index: int | None = None,
        process_count: int | None = None,
        **canvas_kwargs,
    ):
        if process_index is None or process_count is None:
            import jax

            process_index, process_count = jax.process_index(), jax.process_count()
        if global_batch_size % process_count:
            raise ValueError(
                f"global batch size {global_batch_size} does not divide by the "
                f"{process_count} processes"
            )
        rows = global_batch_size // process_count
        self._rows = slice(process_index * rows, (process_index + 1) * rows)
        self.images, self.labels = images, labels
        self.batch, self.seed, self.kwargs = int(global_batch_size), int(seed), canvas_kwargs
        self.step = 0
        if state is not None:
            self.set_state(state)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        x, y = canvas_batch(
            self.images, self.labels, self.batch, self.seed, self.step, **self.kwargs
        )
        self.step += 1
        return {"image": x[self._rows], "label": y[self._rows]}

    def get_state(self) -> dict:
        return {"step": self.step, "seed": self.seed, "global_batch_size": self.batch}

    def set_state(self, state: dict) -> None:
        want = {"seed": self.seed, "global_batch_size": self.batch}
        diff = {k: (state.get(k), v) for k, v in want.items() if state.get(k) != v}
        if diff:
            raise ValueError(
                "canvas iterator state does not match: "
                + ", ".join(f"{k} saved {a!r} vs now {b!r}" for k, (a, b) in diff.items())
            )
        self.step = int(state["step"])


def digit_canvas_data(
    num_test: int = 1000,
    data_dir: str | None = None,
    source: str = "auto",
    num_train_digits: int | None = None,
    seed: int = 0,
    *,
    validation_split: float | int = 0,
    num_validation: int = 0,
    **kwargs,
):
    """The digit-canvas task in one call: the source digits split first (training digits,
    held-out digits), then ``num_test`` fixed held-out canvases composed only of held-out
    digits (drawn with ``default_rng([seed, 2**31])``, a stream no training step uses).

    ``validation_split`` (a fraction or a count, 0: none) holds that many of the training
    digits out (seeded by ``seed``, stratified by digit) for ``num_validation`` fixed validation
    canvases (``default_rng([seed, 2**31 + 1])``): model selection never sees the test digits.

    Returns ``dict(train_digits=(images, labels), test=(x, y), validation=(x, y) or None,
    validation_digits=(images, labels) or None, source=name)``; training batches come from
    :func:`canvas_batch` (or :class:`CanvasIterator`) on ``train_digits``.
    """
    from jaxcnn.data.splits import _count, stratified_holdout

    images, labels, name = load_digit_source(data_dir, source)
    train, held_out = split_digits(images, labels, num_train_digits)
    x, y = make_canvases(*held_out, num_test, np.random.default_rng([seed, 2**31]), **kwargs)
    out = {
        "train_digits": train,
        "test": (x, y),
        "validation": None,
        "validation_digits": None,
        "source": name,
    }
    k = _count(validation_split, len(train[1]), "validation_split")
    if k:
        if num_validation < 1:
            raise ValueError(f"validation_split={validation_split!r} needs num_validation >= 1")
        rest, held = stratified_holdout(train[1], k, seed)
        out["train_digits"] = (train[0][rest], train[1][rest])
        val = (train[0][held], train[1][held])
        out["validation_digits"] = val
        out["validation"] = make_canvases(
            *val, num_validation, np.random.default_rng([seed, 2**31 + 1]), **kwargs
        )
    return out


def colorize(labels, num_classes: int = NUM_CLASSES):
    """RGB float image of a label map (background black, one colour per digit)."""
    cmap = optional_import("matplotlib", "colouring label maps").colormaps["tab10"]
    palette = np.concatenate(
        [[[0.0, 0.0, 0.0]], [cmap(i % 10)[:3] for i in range(num_classes - 1)]]
    ).astype(np.float32)
    return palette[np.asarray(labels)]


# ----------------------------------------------------------------------------------------------
# Oxford-IIIT Pet (TFDS): 37 breeds, trimaps 1 = pet, 2 = background, 3 = border.


def pets_preprocess(example, image_size: int = 128):
    """One TFDS example -> ``(image float32 [0, 1] (S, S, 3), mask int32 (S, S))``, classes
    0 pet, 1 background, 2 border (nearest-neighbour resizing for the mask)."""
    tf = optional_import("tensorflow", "the Oxford-IIIT Pet pipeline")

    image = tf.image.resize(tf.cast(example["image"], tf.float32) / 255.0, (image_size, image_size))
    mask = tf.image.resize(example["segmentation_mask"], (image_size, image_size), method="nearest")
    return image, tf.cast(mask[..., 0], tf.int32) - 1


def pets_dataset(
    split: str = "train",
    image_size: int = 128,
    batch_size: int = 16,
    shuffle: bool = True,
    data_dir: str | None = None,
    seed: int = 0,
):
    """Batched ``tf.data`` pipeline of Oxford-IIIT Pet (``tfds.load("oxford_iiit_pet")``);
    iterate with ``tfds.as_numpy``. Needs a network the first time (or a prepared
    ``data_dir``); 3 classes (see :func:`pets_preprocess`). Not exercised by the offline
    tests. Train on it with ``make_train_step(loss_fn=make_seg_loss())`` and
    ``create_model("unet_small", in_channels=3, num_classes=3)``."""
    tf = optional_import("tensorflow", "the Oxford-IIIT Pet pipeline")
    tfds = optional_import("tensorflow_datasets", "the Oxford-IIIT Pet pipeline")

    try:
        ds = tfds.load("oxford_iiit_pet", split=split, data_dir=data_dir, shuffle_files=shuffle)
    except Exception as e:  # as jaxcnn.data.sources: DatasetNotFoundError, offline download
        raise RuntimeError(
            f"TFDS dataset 'oxford_iiit_pet' could not be loaded ({type(e).__name__}: {e}). "
            f"Without a network it must already be prepared in the TFDS data dir; offline, "
            f"use the digit canvases (digit_canvas_data)."
        ) from None
    ds = ds.map(lambda e: pets_preprocess(e, image_size), num_parallel_calls=tf.data.AUTOTUNE)
    if shuffle:
        ds = ds.shuffle(1000, seed=seed)
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
