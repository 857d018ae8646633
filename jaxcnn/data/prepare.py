"""Write a real dataset in TFDS format (array_record) from local files, and JPEG folders.

The VM path reads ``tfds:cifar10`` / ``tfds:imagenet2012`` through ``tfds.data_source``
(array_record files in a TFDS data dir). This module writes such a dataset from files on this
machine, so that the same path can be run and tested offline::

    # MNIST IDX files (the bundled test set when --idx is omitted) -> TFDS dataset "mnist_local"
    python -m jaxcnn.data.prepare idx --name mnist_local --data-dir /tmp/tfds
    # the same images as a JPEG folder (train/<class>/*.jpg, test/<class>/*.jpg) ...
    python -m jaxcnn.data.prepare jpegs --out /tmp/mnist_jpeg
    # ... and that folder (train/, optional val/ and test/) -> TFDS dataset "mnist_jpeg"
    python -m jaxcnn.data.prepare folder --root /tmp/mnist_jpeg --name mnist_jpeg \\
        --data-dir /tmp/tfds

then ``load_splits("tfds:mnist_local", data_dir="/tmp/tfds")`` (or ``--config.dataset=
tfds:mnist_local --config.data_dir=/tmp/tfds``) reads it exactly as a VM reads a prepared
``tfds:cifar10``. Examples keep the files' order (``disable_shuffling``), so ids are file
positions.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

import numpy as np

from jaxcnn.data.idx import find_idx, open_idx
from jaxcnn.data.sources import default_mnist_dir, list_image_files
from jaxcnn.utils import optional_import

__all__ = ["prepare_tfds", "prepare_from_idx", "prepare_from_folder", "write_jpeg_folder"]


def _idx_splits(idx_dir, test_last: int):
    """``{"train": (images, labels), "test": ...}`` from an IDX folder: its train-*/t10k-* pairs,
    or one pair cut into all-but-the-last ``test_last`` / the last ``test_last``."""
    idx_dir = pathlib.Path(idx_dir)
    pairs = {}
    for prefix, split in (("train", "train"), ("t10k", "test")):
        img = find_idx(idx_dir, f"{prefix}-images-idx3-ubyte")
        lbl = find_idx(idx_dir, f"{prefix}-labels-idx1-ubyte")
        if img is not None and lbl is not None:
            pairs[split] = (open_idx(img), open_idx(lbl))
    if not pairs:
        raise FileNotFoundError(f"{idx_dir}: no IDX image/label files (t10k-* or train-*)")
    if len(pairs) == 1:
        ((_, (x, y)),) = pairs.items()
        if not 0 < test_last < len(y):
            raise ValueError(f"test_last={test_last} must lie in 1..{len(y) - 1}")
        k = len(y) - test_last
        pairs = {"train": (x[:k], y[:k]), "test": (x[k:], y[k:])}
    return pairs


def prepare_tfds(
    name: str,
    splits: dict,
    data_dir,
    *,
    class_names,
    image_shape,
    encoding: str = "png",
    version: str = "1.0.0",
    description: str = "",
):
    """Write ``splits`` (``{"train": iterable of (image, label)}``; an image is an
    ``(H, W, C)`` uint8 array or a path to an encoded file, stored as is) as TFDS dataset
    ``name`` in ``data_dir``, array_record format, order kept. Returns the builder."""
    tfds = optional_import("tensorflow_datasets", "writing a TFDS dataset")

    features = tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=tuple(image_shape), encoding_format=encoding),
            "label": tfds.features.ClassLabel(names=[str(c) for c in class_names]),
        }
    )

    def examples(items):
        for i, (image, label) in enumerate(items):
            if not isinstance(image, (str, os.PathLike)):
                image = np.asarray(image)
                image = image[..., None] if image.ndim == 2 else image
            yield i, {"image": image, "label": int(label)}

    return tfds.dataset_builders.store_as_tfds_dataset(
        name=name,
        version=version,
        features=features,
        split_datasets={s: examples(items) for s, items in splits.items()},
        data_dir=os.fspath(data_dir),
        description=description or f"{name}, written by jaxcnn.data.prepare from local files",
        file_format="array_record",
        disable_shuffling=True,
    )


def prepare_from_idx(name: str, data_dir, idx_dir=None, *, test_last: int = 2000):
    """TFDS dataset ``name`` from MNIST-style IDX files (default: the MNIST test set bundled in
    the package, train = first 8,000, test = last 2,000, as ``load_splits("mnist")``)."""
    pairs = _idx_splits(idx_dir or default_mnist_dir(), test_last)
    x = pairs["train"][0]
    n_classes = int(max(int(np.max(y)) for _, y in pairs.values())) + 1
    return prepare_tfds(
        name,
        {s: zip(x_, y_) for s, (x_, y_) in pairs.items()},
        data_dir,
        class_names=range(n_classes),
        image_shape=(*x.shape[1:3], 1),
        description=f"{name}: MNIST-style IDX files, file order kept",
    )


def prepare_from_folder(name: str, data_dir, root):
    """TFDS dataset ``name`` from an image folder ``root/train/<class>/*`` (and ``val/`` ->
    split ``validation``, ``test/`` -> ``test``); the files' bytes are stored unchanged."""
    root = pathlib.Path(root)
    if not (root / "train").is_dir():
        raise FileNotFoundError(f"{root}: expected train/<class>/ folders (and val/ or test/)")
    files, labels, classes = list_image_files(root / "train")
    splits = {"train": ((root / "train" / f, y) for f, y in zip(files, labels))}
    for sub, split in (("val", "validation"), ("test", "test")):
        if (root / sub).is_dir():
            f, lab, _ = list_image_files(root / sub, classes)
            splits[split] = ((root / sub / p, y) for p, y in zip(f, lab))
    first = root / "train" / files[0]
    from PIL import Image

    with Image.open(first) as im:
        channels = 1 if im.mode in ("L", "1") else 3
        encoding = "jpeg" if im.format == "JPEG" else "png"
    return prepare_tfds(
        name,
        splits,
        data_dir,
        class_names=classes,
        image_shape=(None, None, channels),
        encoding=encoding,
        description=f"{name}: image folder {root.name}",
    )


def write_jpeg_folder(
    out,
    idx_dir=None,
    *,
    test_last: int = 2000,
    quality: int = 95,
    size: int | None = None,
    limit: int | None = None,
) -> dict:
    """Write IDX images as ``out/train/<class>/<i>.jpg`` and ``out/test/<class>/<i>.jpg``
    (``size``: resize to ``size`` x ``size``; ``limit``: at most that many per split). Returns
    ``{split: count}``."""
    from PIL import Image

    out = pathlib.Path(out)
    counts = {}
    for split, (x, y) in _idx_splits(idx_dir or default_mnist_dir(), test_last).items():
        n = len(y) if limit is None else min(limit, len(y))
        for i in range(n):
            d = out / split / str(int(y[i]))
            d.mkdir(parents=True, exist_ok=True)
            im = Image.fromarray(np.asarray(x[i]), "L")
            if size:
                im = im.resize((size, size), Image.Resampling.BILINEAR)
            im.save(d / f"{i:06d}.jpg", quality=quality)
        counts[split] = n
    return counts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m jaxcnn.data.prepare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("idx", help="IDX files -> TFDS dataset (array_record)")
    a.add_argument("--name", required=True)
    a.add_argument("--data-dir", required=True, help="TFDS data dir to write into")
    a.add_argument("--idx", default=None, help="IDX folder (default: bundled MNIST test set)")
    a.add_argument("--test-last", type=int, default=2000)
    b = sub.add_parser("folder", help="image folder (train/, val/, test/) -> TFDS dataset")
    b.add_argument("--name", required=True)
    b.add_argument("--data-dir", required=True)
    b.add_argument("--root", required=True)
    c = sub.add_parser("jpegs", help="IDX files -> JPEG folder train/<class>/, test/<class>/")
    c.add_argument("--out", required=True)
    c.add_argument("--idx", default=None)
    c.add_argument("--test-last", type=int, default=2000)
    c.add_argument("--size", type=int, default=None, help="resize to SIZE x SIZE")
    c.add_argument("--limit", type=int, default=None, help="at most this many per split")
    args = p.parse_args(argv)
    if args.cmd == "idx":
        b = prepare_from_idx(args.name, args.data_dir, args.idx, test_last=args.test_last)
    elif args.cmd == "folder":
        b = prepare_from_folder(args.name, args.data_dir, args.root)
    else:
        counts = write_jpeg_folder(
            args.out, args.idx, test_last=args.test_last, size=args.size, limit=args.limit
        )
        print(f"wrote {counts} JPEGs under {args.out}")
        return 0
    sizes = {s: v.num_examples for s, v in b.info.splits.items()}
    print(f"wrote TFDS dataset {args.name!r} {sizes} to {b.data_dir}")
    print(f'read it with load_splits("tfds:{args.name}", data_dir="{args.data_dir}")')
    return 0


if __name__ == "__main__":
    sys.exit(main())
