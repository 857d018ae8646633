"""The whole-array loader :func:`load_dataset` (kept for the old training loops; new code uses
:func:`jaxcnn.data.load_splits`, which streams and keeps the published splits).

- ``"digits"``: scikit-learn's 1,797 real 8x8 handwritten digits (bundled in the package).
- ``"mnist_idx"``: LeCun IDX files from a folder (``data_dir``; default: the real MNIST test set
  bundled in the package, overridden by ``$JAXCNN_SHARED_DATA/mnist-test`` or
  ``../shared/data/mnist-test``).
- ``"folder"``: an image folder with one sub-folder per class (``data_dir``).
- ``"tfds:NAME"`` (``"tfds:mnist"``, ``"tfds:cifar10"``...): TensorFlow Datasets, when prepared
  locally or downloadable (``data_dir`` is TFDS' data dir).

Every source returns a :class:`Dataset`: uint8 or float images NHWC and int32 labels, in a
deterministic order; splitting and preprocessing are in :mod:`jaxcnn.data.pipeline`.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from jaxcnn.data.idx import load_idx_folder
from jaxcnn.data.sources import bundled_digits, default_mnist_dir
from jaxcnn.utils import optional_import

__all__ = ["Dataset", "load_dataset", "default_mnist_dir", "SOURCES"]

SOURCES = ("digits", "mnist_idx", "folder", "tfds:<name>")


@dataclasses.dataclass
class Dataset:
    """Images ``(N, H, W, C)`` with values in ``[0, max_value]`` and labels ``(N,)``."""

    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    max_value: float = 255.0
    name: str = ""
    class_names: tuple[str, ...] = ()

    def __post_init__(self):
        if self.images.ndim == 3:
            self.images = self.images[..., None]
        if self.images.ndim != 4 or len(self.images) != len(self.labels):
            raise ValueError(
                f"dataset {self.name!r}: images {self.images.shape} and labels "
                f"{self.labels.shape} do not pair up (expected (N,H,W[,C]) and (N,))"
            )
        self.labels = np.asarray(self.labels, np.int32)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index) -> "Dataset":
        return dataclasses.replace(self, images=self.images[index], labels=self.labels[index])


def _digits() -> Dataset:
    images, labels = bundled_digits()  # (1797, 8, 8), values 0..16
    return Dataset(
        images.astype(np.float32),
        labels,
        10,
        max_value=16.0,
        name="digits",
        class_names=tuple(str(i) for i in range(10)),
    )


def _mnist_idx(data_dir) -> Dataset:
    folder = pathlib.Path(data_dir) if data_dir else default_mnist_dir()
    images, labels = load_idx_folder(folder)
    return Dataset(
        images, labels, 10, 255.0, name="mnist_idx", class_names=tuple(str(i) for i in range(10))
    )


def _folder(data_dir) -> Dataset:
    from PIL import Image

    if not data_dir:
        raise ValueError("dataset 'folder' needs data_dir: a folder with one sub-folder per class")
    root = pathlib.Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"{root}: expected one sub-folder per class, found none")
    images, labels, size = [], [], None
    exts = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
    for i, c in enumerate(classes):
        for f in sorted((root / c).iterdir()):
            if f.suffix.lower() not in exts:
                continue
            img = Image.open(f).convert("RGB")
            size = size or img.size
            if img.size != size:
                img = img.resize(size, Image.Resampling.BILINEAR)
            images.append(np.asarray(img))
            labels.append(i)
    if not images:
        raise ValueError(f"{root}: no images found in the class folders {classes}")
    return Dataset(
        np.stack(images),
        np.array(labels),
        len(classes),
        255.0,
        name=f"folder:{root}",
        class_names=tuple(classes),
    )


def _tfds(name: str, data_dir, split: str = "train+test") -> Dataset:
    tfds = optional_import("tensorflow_datasets", f"dataset 'tfds:{name}'")

    try:
        ds, info = tfds.load(
            name, split=split, as_supervised=True, data_dir=data_dir or None, with_info=True
        )
    except Exception as e:  # DatasetNotFoundError, download failures offline, ...
        raise RuntimeError(
            f"TFDS dataset {name!r} could not be loaded ({type(e).__name__}: {e}). Without a "
            f"network it must already be prepared in the TFDS data dir; offline, use "
            f"dataset='digits' or dataset='mnist_idx'."
        ) from None
    xs, ys = [], []
    for x, y in tfds.as_numpy(ds.batch(1024)):  # (batch_size=-1 aborts under mock_data)
        xs.append(x)
        ys.append(y)
    images, labels = np.concatenate(xs), np.concatenate(ys)
    label_feature = info.features["label"]
    return Dataset(
        np.asarray(images),
        np.asarray(labels),
        label_feature.num_classes,
        255.0,
        name=f"tfds:{name}",
        class_names=tuple(label_feature.names),
    )


def load_dataset(name: str, data_dir: str | None = None, tfds_split: str = "train+test") -> Dataset:
    """Load a whole dataset by source name (see the module docstring)."""
    if name == "digits":
        return _digits()
    if name in ("mnist_idx", "mnist-test", "idx"):
        return _mnist_idx(data_dir)
    if name == "folder":
        return _folder(data_dir)
    if name.startswith("tfds:"):
        return _tfds(name[5:], data_dir, tfds_split)
    import difflib

    close = difflib.get_close_matches(name, ["digits", "mnist_idx", "folder"], n=3)
    raise ValueError(
        f"unknown dataset {name!r}; expected one of {SOURCES}"
        + (f" (did you mean {', '.join(close)}?)" if close else "")
    )
