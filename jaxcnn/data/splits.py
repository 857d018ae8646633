"""Published train/validation/test splits behind one function, :func:`load_splits`.

Rules (docs/data.md has the table):

- a dataset's own splits first: TFDS ``train``/``test`` (``validation`` as the test split where
  papers report on it, e.g. ``imagenet2012``, whose test split has no labels; ``validation`` as
  the validation split when a labelled test split exists too); image folders ``train/``,
  ``test/`` (else ``val/``), and ``val/`` as validation when ``test/`` exists too; IDX folders
  with ``train-*`` and ``t10k-*`` files;
- otherwise a seeded, stratified ``validation_split`` of train (a fraction or a count);
- datasets without a published test split: ``digits`` holds out a seeded stratified
  ``test_split`` (default 0.2); an IDX folder with one pair of files (the bundled ``mnist``, the
  official MNIST *test* set) takes the last ``test_split`` examples in file order (default: the
  last 20 %, i.e. train = first 8,000, test = last 2,000);
- ``num_train`` keeps the first N of train, after every split is made.

Every example keeps an ``id`` that is unique across the three splits of a dataset.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import pathlib

import numpy as np

from jaxcnn.data.idx import find_idx
from jaxcnn.data.sources import (
    ArraySource,
    FolderSource,
    IdxSource,
    Source,
    Subset,
    TfdsSource,
    bundled_digits,
    default_mnist_dir,
    list_image_files,
    tfds_builder,
)

__all__ = ["Splits", "load_splits", "stratified_holdout", "DATASETS", "TEST_IS_VALIDATION"]

DATASETS = ("digits", "mnist", "mnist_idx", "idx:<folder>", "folder", "tfds:<name>", "arrays")
# TFDS datasets whose "test" split is unlabelled or not what papers report: test = validation.
TEST_IS_VALIDATION = ("imagenet2012", "imagenet2012_subset", "imagenet2012_real")


@dataclasses.dataclass(frozen=True)
class Splits:
    """The three splits of a dataset (``validation`` may be ``None``) and what they are."""

    train: Source
    validation: Source | None
    test: Source
    num_classes: int
    class_names: tuple[str, ...]
    name: str
    provenance: dict[str, str]

    def __repr__(self) -> str:
        v = len(self.validation) if self.validation is not None else 0
        return (
            f"Splits({self.name!r}: train {len(self.train)}, validation {v}, test "
            f"{len(self.test)}, {self.num_classes} classes)"
        )


def _count(spec, n: int, what: str) -> int:
    """A fraction (float in [0, 1)) or a count (int) of ``n`` examples as a count."""
    if spec is None or spec is False:
        return 0
    if isinstance(spec, float) and spec < 1:
        if spec < 0:
            raise ValueError(f"{what}={spec!r}: a fraction must lie in [0, 1)")
        k = int(round(spec * n))
    elif float(spec).is_integer():
        k = int(spec)
    else:
        raise ValueError(f"{what}={spec!r}: expected a fraction in [0, 1) or a count")
    if not 0 <= k < n:
        raise ValueError(f"{what}={spec!r} holds out {k} of {n} examples: none would be left")
    return k


def stratified_holdout(labels, k: int, seed) -> tuple[np.ndarray, np.ndarray]:
    """``(rest, held_out)`` index arrays (each sorted) with ``k`` examples held out, every class
    in proportion to its size (largest remainders get the rounding), chosen by ``seed``."""
    labels = np.asarray(labels)
    n = len(labels)
    if k == 0:
        return np.arange(n), np.zeros(0, np.int64)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * (k / n)
    quota = np.floor(exact).astype(int)
    order = np.argsort(-(exact - quota), kind="stable")
    quota[order[: k - quota.sum()]] += 1
    rng = np.random.default_rng(seed)
    per_class = []
    for c, q in zip(classes, quota):
        idx = np.flatnonzero(labels == c)
        per_class.append(rng.permutation(idx)[:q])
    held = np.sort(np.concatenate(per_class))
    rest = np.setdiff1d(np.arange(n), held, assume_unique=True)
    return rest, held


def _where(path) -> str:
    """A path for provenance: relative to the package for bundled files, else as given."""
    path = pathlib.Path(path)
    pkg = pathlib.Path(__file__).resolve().parents[2]
    try:
        return str(path.resolve().relative_to(pkg))
    except ValueError:
        return str(path)


def _describe(src, what: str) -> str:
    return f"{len(src):,} examples: {what}"


def _finish(
    name,
    classes,
    train,
    validation,
    test,
    prov,
    validation_split,
    split_seed,
    num_train,
    num_classes=None,
) -> Splits:
    if validation is None:
        k = _count(validation_split, len(train), "validation_split")
        if k:
            rest, held = stratified_holdout(train.labels, k, [split_seed, 1])
            validation = Subset(train, held, name=f"{name}[validation]")
            prov["validation"] = (
                f"{k:,} examples: seeded stratified hold-out of train (split_seed={split_seed}; "
                f"validation_split={validation_split!r})"
            )
            prov["train"] += f"; minus the {k:,} validation examples"
            train = Subset(train, rest, name=f"{name}[train]")
    else:
        prov["validation"] = _describe(validation, prov.get("validation", "the dataset's own"))
    if num_train:
        if num_train < 1:
            raise ValueError(f"num_train={num_train!r} must be a positive count")
        if num_train < len(train):
            train = Subset(train, np.arange(int(num_train)), name=f"{name}[train]")
            prov["train"] += f"; first {int(num_train):,} kept (num_train)"
    prov["train"] = f"{len(train):,} examples: " + prov["train"]
    prov["test"] = f"{len(test):,} examples: " + prov["test"]
    if validation is None:
        prov["validation"] = "none (validation_split=0)"
    classes = tuple(classes)
    return Splits(train, validation, test, num_classes or len(classes), classes, name, dict(prov))


def _holdout_test(src, test_split, default, split_seed, *, file_order: bool, what: str):
    """Split ``src`` into (train, test) when the dataset has no published test split."""
    spec = default if test_split is None else test_split
    k = _count(spec, len(src), "test_split")
    if k == 0:
        raise ValueError(f"{what} has no published test split: test_split must be > 0")
    if file_order:
        rest, held = np.arange(len(src) - k), np.arange(len(src) - k, len(src))
        how = f"the last {k:,} in file order (test_split={spec!r})"
    else:
        rest, held = stratified_holdout(src.labels, k, [split_seed, 0])
        how = f"seeded stratified hold-out (split_seed={split_seed}; test_split={spec!r})"
    return Subset(src, rest), Subset(src, held), how


def _no_test_split(name, test_split):
    if test_split is not None:
        raise ValueError(
            f"{name} has a published test split; test_split={test_split!r} applies only to "
            f"datasets without one (digits, a single IDX file, a folder without train/)"
        )


def _digits(test_split, **kw):
    images, labels = bundled_digits()
    src = ArraySource(images.astype(np.float32) / 16.0, labels, name="digits")
    train, test, how = _holdout_test(
        src, test_split, 0.2, kw["split_seed"], file_order=False, what="digits"
    )
    prov = {
        "train": "scikit-learn digits (bundled, 1,797 8x8 images, values scaled to 0..1)",
        "test": how,
    }
    return _finish("digits", [str(i) for i in range(10)], train, None, test, prov, **kw)


def _idx(folder, name, test_split, **kw):
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"IDX folder not found: {folder} (expected t10k-images-idx3-ubyte[.gz] and "
            f"t10k-labels-idx1-ubyte[.gz], and/or the train-* pair)"
        )
    pairs = {}
    for prefix in ("train", "t10k"):
        img, lbl = (
            find_idx(folder, f"{prefix}-images-idx3-ubyte"),
            find_idx(folder, f"{prefix}-labels-idx1-ubyte"),
        )
        if img is not None and lbl is not None:
            pairs[prefix] = (img, lbl)
    if not pairs:
        present = sorted(p.name for p in folder.iterdir())[:10]
        raise FileNotFoundError(
            f"{folder}: expected t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz] "
            f"(and/or train-*), found {present}"
        )
    if len(pairs) == 2:
        _no_test_split(name, test_split)
        train = IdxSource(*pairs["train"], name=f"{name}[train]")
        test = IdxSource(*pairs["t10k"], id_offset=len(train), name=f"{name}[test]")
        prov = {"train": _where(pairs["train"][0]), "test": _where(pairs["t10k"][0])}
    else:
        ((prefix, files),) = pairs.items()
        src = IdxSource(*files, name=name)
        train, test, how = _holdout_test(
            src, test_split, 0.2, kw["split_seed"], file_order=True, what=name
        )
        where = _where(files[0])
        prov = {"train": f"{where}: all but the test examples", "test": f"{where}: {how}"}
    classes = [str(i) for i in range(int(max(train.labels.max(), test.labels.max())) + 1)]
    return _finish(name, classes, train, None, test, prov, **kw)


def _folder(root, test_split, **kw):
    if not root:
        raise ValueError(
            "dataset 'folder' needs data_dir: a folder with train/<class>/*.jpg (optional val/, "
            "test/), or one sub-folder per class"
        )
    root = pathlib.Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    name = f"folder:{root.name}"
    if not (root / "train").is_dir():
        files, labels, classes = list_image_files(root)
        src = FolderSource(root, files, labels, name=name)
        train, test, how = _holdout_test(
            src, test_split, 0.2, kw["split_seed"], file_order=False, what=f"{root} (no train/)"
        )
        prov = {"train": f"{root}/<class>/ files", "test": how}
        return _finish(name, classes, train, None, test, prov, **kw)
    _no_test_split(f"{root} (train/ with val/ or test/)", test_split)
    files, labels, classes = list_image_files(root / "train")
    train = FolderSource(root / "train", files, labels, name=f"{name}[train]")
    offset, parts = len(train), {}
    for sub in ("val", "test"):
        if (root / sub).is_dir():
            f, lab, _ = list_image_files(root / sub, classes)
            parts[sub] = FolderSource(root / sub, f, lab, id_offset=offset, name=f"{name}[{sub}]")
            offset += len(f)
    if not parts:
        raise FileNotFoundError(f"{root}: has train/ but neither val/ nor test/ to test on")
    test_dir = "test" if "test" in parts else "val"
    validation = parts.get("val") if test_dir == "test" else None
    prov = {"train": f"{root}/train/", "test": f"{root}/{test_dir}/"}
    if validation is not None:
        prov["validation"] = f"{root}/val/"
    return _finish(name, classes, train, validation, parts[test_dir], prov, **kw)


def _tfds(spec, data_dir, test_split, **kw):
    builder = tfds_builder(spec, data_dir)
    info = builder.info
    splits = list(info.splits.keys())
    base = spec.split(":")[0].split("/")[0]
    if "train" not in splits:
        raise ValueError(f"TFDS dataset {spec!r} has no 'train' split (it has {splits})")
    _no_test_split(f"tfds:{spec}", test_split)
    if "test" in splits and base not in TEST_IS_VALIDATION:
        test_name, val_name = "test", ("validation" if "validation" in splits else None)
    elif "validation" in splits:
        test_name, val_name = "validation", None
    else:
        raise ValueError(
            f"TFDS dataset {spec!r} has neither a 'test' nor a 'validation' split ({splits})"
        )
    feats = info.features
    image_key = "image" if "image" in feats else (info.supervised_keys or ("image",))[0]
    label_key = "label" if "label" in feats else (info.supervised_keys or (None, "label"))[1]
    label = feats[label_key]
    made, offset = {}, 0
    for s in splits:  # ids: offsets in the order of the dataset's own splits
        if s in ("train", test_name, val_name):
            made[s] = TfdsSource(
                spec,
                s,
                data_dir,
                image_key=image_key,
                label_key=label_key,
                id_offset=offset,
                builder=builder,
            )
        offset += info.splits[s].num_examples
    where = f" in {data_dir}" if data_dir else ""
    prov = {"train": f"tfds:{spec} split 'train'{where}", "test": f"split {test_name!r}"}
    if test_name == "validation":
        prov["test"] += " (the split papers report on)"
    if val_name:
        prov["validation"] = f"split {val_name!r}"
    names = tuple(getattr(label, "names", ()) or ())
    n_classes = getattr(label, "num_classes", None) or len(names)
    return _finish(
        f"tfds:{spec}",
        names or [str(i) for i in range(n_classes)],
        made["train"],
        made.get(val_name),
        made[test_name],
        prov,
        num_classes=n_classes,
        **kw,
    )


def _arrays(arrays, class_names, test_split, **kw):
    if arrays is None:
        raise ValueError("dataset 'arrays' needs arrays=(images, labels) or a dict of splits")
    if isinstance(arrays, dict):
        unknown = set(arrays) - {"train", "validation", "test"}
        if unknown or "train" not in arrays:
            raise ValueError(f"arrays: expected keys train[, validation, test], got {list(arrays)}")
        made, offset = {}, 0
        for s in ("train", "validation", "test"):
            if s in arrays:
                made[s] = ArraySource(*arrays[s], id_offset=offset, name=f"arrays[{s}]")
                offset += len(made[s])
        if "test" in made:
            _no_test_split("arrays with a 'test' entry", test_split)
            train, test, how = made["train"], made["test"], "given"
        else:
            train, test, how = _holdout_test(
                made["train"], test_split, 0.2, kw["split_seed"], file_order=False, what="arrays"
            )
        validation = made.get("validation")
    else:
        src = ArraySource(*arrays, name="arrays")
        train, test, how = _holdout_test(
            src, test_split, 0.2, kw["split_seed"], file_order=False, what="arrays"
        )
        validation = None
    labels = np.concatenate([train.labels, test.labels])
    classes = class_names or [str(i) for i in range(int(labels.max()) + 1)]
    prov = {"train": "in-memory arrays", "test": how}
    if validation is not None:
        prov["validation"] = "given"
    return _finish("arrays", classes, train, validation, test, prov, **kw)


def load_splits(
    dataset: str,
    data_dir: str | None = None,
    *,
    validation_split: float | int = 0.1,
    split_seed: int = 0,
    test_split: float | int | None = None,
    num_train: int | None = None,
    arrays=None,
    class_names=None,
) -> Splits:
    """The train/validation/test splits of ``dataset`` (see the module docstring).

    ``dataset``: ``"digits"``; ``"mnist"`` (the real MNIST test set bundled in the package, or
    ``$JAXCNN_SHARED_DATA/mnist-test`` / ``../shared/data/mnist-test`` when present);
    ``"mnist_idx"`` or ``"idx:<folder>"`` (IDX files in ``data_dir`` / ``<folder>``);
    ``"folder"`` or ``"folder:<path>"`` (images; ``data_dir``); ``"tfds:NAME"`` (array_record,
    ``data_dir`` is TFDS' data dir); ``"arrays"`` (``arrays=(images, labels)`` or
    ``{"train": (x, y), "validation": ..., "test": ...}``, ``class_names`` optional).
    """
    kw = dict(validation_split=validation_split, split_seed=split_seed, num_train=num_train)
    data_dir = os.fspath(data_dir) if data_dir else None
    if dataset == "digits":
        return _digits(test_split, **kw)
    if dataset == "mnist":
        return _idx(data_dir or default_mnist_dir(), "mnist", test_split, **kw)
    if dataset in ("mnist_idx", "idx"):
        return _idx(data_dir or default_mnist_dir(), dataset, test_split, **kw)
    if dataset.startswith("idx:"):
        return _idx(dataset[4:], "idx", test_split, **kw)
    if dataset == "folder" or dataset.startswith("folder:"):
        return _folder(dataset[7:] or data_dir, test_split, **kw)
    if dataset.startswith("tfds:"):
        return _tfds(dataset[5:], data_dir, test_split, **kw)
    if dataset == "arrays":
        return _arrays(arrays, class_names, test_split, **kw)
    close = difflib.get_close_matches(dataset, ["digits", "mnist", "mnist_idx", "folder", "arrays"])
    raise ValueError(
        f"unknown dataset {dataset!r}; expected one of {DATASETS}"
        + (f" (did you mean {', '.join(close)}?)" if close else "")
    )
