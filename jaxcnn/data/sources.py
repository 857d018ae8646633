"""Random-access data sources: ``len(src)`` and ``src[i] -> {"image", "label", "id"}``.

Nothing here holds a dataset's images in memory unless it already is small and in memory:
IDX files are read row by row (decompressed once when gzip-compressed), image folders decode one
file per access with PIL, TFDS reads its array_record files through ``tfds.data_source``.

Every source also exposes ``labels`` (int array, cheap: no image is decoded) and ``ids`` (int64
array: the example's index in the underlying data, unique across the splits of one dataset),
which :mod:`jaxcnn.data.splits` uses for stratified splits and tests use to prove that no
test or validation example reaches training. Sources pickle small (paths, not pixels), so
grain's worker processes reopen them instead of copying them.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import pathlib
from typing import TYPE_CHECKING, Protocol, Sequence

import numpy as np

from jaxcnn.data.idx import open_idx
from jaxcnn.utils import optional_import

__all__ = [
    "DataError",
    "Source",
    "ArraySource",
    "IdxSource",
    "FolderSource",
    "TfdsSource",
    "Subset",
    "Repeat",
    "REPEAT_ID_STRIDE",
    "default_mnist_dir",
    "bundled_mnist_dir",
    "bundled_digits",
    "list_image_files",
    "IMAGE_EXTENSIONS",
]


class DataError(ValueError):
    """Data that cannot be read as asked (a missing or malformed folder or file, an image that
    does not decode, an unknown TFDS name): the message names the file or dataset, and the
    command line prints it as one line."""


ASSETS = pathlib.Path(__file__).resolve().parent / "assets"
IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)


class Source(Protocol):
    """What every source provides (the type of ``Splits.train`` and friends)."""

    name: str

    @property
    def labels(self) -> np.ndarray: ...

    @property
    def ids(self) -> np.ndarray: ...

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> dict: ...


def bundled_mnist_dir() -> pathlib.Path:
    """The real MNIST test set shipped inside the package (CC BY-SA 3.0, see its NOTICE)."""
    return ASSETS / "mnist"


def default_mnist_dir() -> pathlib.Path:
    """Where the MNIST IDX files are read from when no ``data_dir`` is given:
    ``$JAXCNN_SHARED_DATA/mnist-test``, else ``../shared/data/mnist-test`` beside the repository
    (or the current directory's parent) when it exists, else the copy bundled in the package."""
    env = os.environ.get("JAXCNN_SHARED_DATA")
    if env and (pathlib.Path(env) / "mnist-test").is_dir():
        return pathlib.Path(env) / "mnist-test"
    repo = pathlib.Path(__file__).resolve().parents[2]
    for base in (repo, pathlib.Path.cwd()):
        cand = base.parent / "shared" / "data" / "mnist-test"
        if cand.is_dir():
            return cand
    return bundled_mnist_dir()


def bundled_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 8x8 digits (values 0..16, uint8) and labels, shipped in the package
    (UCI, CC BY 4.0; see ``assets/DIGITS_NOTICE``)."""
    with np.load(ASSETS / "digits.npz") as z:
        return z["images"], z["labels"].astype(np.int64)


class _Base:
    """Shared by every source: ``ids``/``labels`` arrays and a readable ``repr``."""

    name: str = ""

    if TYPE_CHECKING:  # what every source provides: attributes or read-only properties

        @property
        def labels(self) -> np.ndarray: ...

        @property
        def ids(self) -> np.ndarray: ...

        def __len__(self) -> int: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {len(self)} examples)"

    def _check(self, i: int) -> int:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"{self!r}: index {i} out of range")
        return i % n


class ArraySource(_Base):
    """In-memory (or memory-mapped) arrays: images ``(N, H, W[, C])`` uint8 (0..255) or float
    (0..1), labels ``(N,)``; ``ids`` defaults to ``arange(N) + id_offset``."""

    labels: np.ndarray
    ids: np.ndarray

    def __init__(self, images, labels, ids=None, *, id_offset: int = 0, name: str = "arrays"):
        labels = np.asarray(labels).astype(np.int64)
        if len(images) != len(labels) or np.ndim(images) not in (3, 4) or labels.ndim != 1:
            raise DataError(
                f"{name}: images {np.shape(images)} and labels {labels.shape} do not pair up "
                f"(expected (N, H, W[, C]) and (N,))"
            )
        self.images, self.labels, self.name = images, labels, name
        self.ids = (
            np.arange(len(labels), dtype=np.int64) + id_offset
            if ids is None
            else np.asarray(ids, np.int64)
        )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        i = self._check(int(i))
        img = np.asarray(self.images[i])
        if img.ndim == 2:
            img = img[..., None]
        return {"image": img, "label": int(self.labels[i]), "id": int(self.ids[i])}


class _PreadArray:
    """Rows of an uncompressed uint8 IDX file read with ``os.pread`` on access: the bytes stay in
    the OS page cache, not in this process (a memory map's touched pages would count in its
    resident memory, growing with the dataset over an epoch)."""

    def __init__(self, path: str, offset: int, shape: tuple, start: int = 0, stop=None):
        self.path, self.offset, self.row_shape = path, offset, tuple(shape[1:])
        self.row_bytes = int(np.prod(self.row_shape))
        self.start, self.stop = start, shape[0] if stop is None else stop
        self._fd: int | None = None

    @property
    def shape(self):
        return (self.stop - self.start, *self.row_shape)

    @property
    def ndim(self):
        return len(self.shape)

    def __len__(self):
        return self.stop - self.start

    def __getstate__(self):
        return {**self.__dict__, "_fd": None}

    def __del__(self):
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)

    def __getitem__(self, i):
        if isinstance(i, slice):
            a, b, step = i.indices(len(self))
            if step != 1:
                raise IndexError("only contiguous slices")
            return _PreadArray(
                self.path,
                self.offset,
                (self.stop, *self.row_shape),
                self.start + a,
                self.start + b,
            )
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        pos = self.offset + (self.start + int(i)) * self.row_bytes
        buf = os.pread(self._fd, self.row_bytes, pos)
        return np.frombuffer(buf, np.uint8).reshape(self.row_shape)


class IdxSource(ArraySource):
    """An IDX image file ``(N, H, W[, C])`` and its label file (MNIST layout). Uncompressed
    files are read row by row from disk (``os.pread``; nothing is loaded up front); ``.gz``
    files are decompressed once into memory. Pickles as its paths (worker processes reopen
    the files)."""

    def __init__(
        self,
        images_path,
        labels_path,
        *,
        start: int = 0,
        stop: int | None = None,
        id_offset: int = 0,
        name: str = "",
    ):
        self._paths = (str(images_path), str(labels_path))
        self._range = (start, stop, id_offset)
        images, labels = open_idx(images_path), open_idx(labels_path)
        if images.ndim not in (3, 4) or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(
                f"{images_path}: images {images.shape} and labels {labels.shape} do not pair up "
                f"(expected (N, H, W[, C]) and (N,))"
            )
        rows: np.ndarray | _PreadArray = images
        if isinstance(images, np.memmap):
            rows = _PreadArray(str(images_path), int(images.offset), images.shape)
        labels = np.asarray(labels)
        stop = len(labels) if stop is None else stop
        super().__init__(
            rows[start:stop],
            labels[start:stop],
            np.arange(start, stop, dtype=np.int64) + id_offset,
            name=name or pathlib.Path(images_path).name,
        )

    def __reduce__(self):
        start, stop, off = self._range
        return (_rebuild_idx, (self._paths, start, stop, off, self.name))


def _rebuild_idx(paths, start, stop, off, name):
    return IdxSource(*paths, start=start, stop=stop, id_offset=off, name=name)


def list_image_files(folder: pathlib.Path, classes: Sequence[str] | None = None):
    """``(files, labels, classes)`` of ``folder/<class>/*.<image extension>``, sorted; with
    ``classes`` given, a class folder not among them is an error (val/ and test/ must use the
    train/ classes)."""
    found = sorted(d.name for d in os.scandir(folder) if d.is_dir())
    if classes is None:
        classes = found
        if not classes:
            raise DataError(f"{folder}: expected one sub-folder per class, found none")
    else:
        extra = sorted(set(found) - set(classes))
        if extra:
            raise DataError(
                f"{folder}: class folders {extra[:5]} are not among the {len(classes)} classes "
                f"of the training folder"
            )
    index = {c: i for i, c in enumerate(classes)}
    files, labels = [], []
    for c in found:
        names = sorted(
            e.name
            for e in os.scandir(folder / c)
            if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS
        )
        files += [os.path.join(c, n) for n in names]
        labels += [index[c]] * len(names)
    if not files:
        raise DataError(f"{folder}: no image files in the class folders {list(found)[:5]}")
    return files, np.asarray(labels, np.int64), tuple(classes)


class FolderSource(_Base):
    """Image files (``root/<relative path>``) decoded one at a time with PIL to uint8 ``HWC``:
    gray files as 1 channel and everything else (palette, CMYK, RGBA...) as RGB, or all as
    ``mode`` (``"RGB"`` / ``"L"``) when given. A file PIL cannot decode raises ``ValueError``
    naming it."""

    labels: np.ndarray
    ids: np.ndarray

    def __init__(
        self,
        root,
        files: Sequence[str],
        labels,
        *,
        id_offset: int = 0,
        mode: str | None = None,
        name: str = "",
    ):
        self.root, self.files, self.mode = str(root), list(files), mode
        self.labels = np.asarray(labels, np.int64)
        self.ids = np.arange(len(self.files), dtype=np.int64) + id_offset
        self.name = name or self.root

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict:
        from PIL import Image, UnidentifiedImageError

        i = self._check(int(i))
        path = os.path.join(self.root, self.files[i])
        try:
            with Image.open(path) as im:
                mode = self.mode or ("L" if im.mode in ("L", "1", "I;16") else "RGB")
                img = np.asarray(im.convert(mode))
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
            raise DataError(f"cannot decode image {path}: {type(e).__name__}: {e}") from None
        if img.ndim == 2:
            img = img[..., None]
        return {"image": img, "label": int(self.labels[i]), "id": int(self.ids[i])}


# -- TFDS -------------------------------------------------------------------------------------
def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


@contextlib.contextmanager
def _few_download_retries(retries: int = 3):
    """TFDS retries a failed download 10 times with exponential back-off (3.5 minutes before an
    offline machine hears "no network"); 3 tries fail in about a second."""
    downloader = optional_import("tensorflow_datasets.core.download.downloader", "TFDS datasets")

    old = getattr(downloader, "MAX_RETRIES", None)
    if old is None:
        yield
        return
    setattr(downloader, "MAX_RETRIES", min(old, retries))
    try:
        yield
    finally:
        setattr(downloader, "MAX_RETRIES", old)


def tfds_builder(name: str, data_dir: str | None = None, *, download: bool = True):
    """A prepared TFDS builder for ``name`` (``"cifar10"``, ``"imagenet2012:5.1.0"``, or a
    dataset written by ``python -m jaxcnn.data.prepare`` into ``data_dir``), in array_record
    format (what ``tfds.data_source`` reads). Prepares it when absent and ``download`` (needs the
    network, or for ImageNet the manual archives). Errors are one or two lines."""
    tfds = optional_import("tensorflow_datasets", f"TFDS dataset {name!r}")

    try:
        builder = tfds.builder(name, data_dir=data_dir or None)
    except tfds.core.registered.DatasetNotFoundError:
        base = name.split(":")[0].split("/")[0]
        close = difflib.get_close_matches(base, tfds.list_builders(with_community_datasets=False))
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        where = f" and none was prepared in {data_dir}" if data_dir else ""
        raise DataError(f"unknown TFDS dataset {name!r}{hint}{where}") from None
    except Exception as e:  # noqa: BLE001  (TFDS raises many kinds; keep the message short)
        raise RuntimeError(f"TFDS dataset {name!r}: {_short(e)}") from None
    if not builder.is_prepared():
        if not download:
            raise FileNotFoundError(f"TFDS dataset {name!r} is not prepared in {builder.data_dir}")
        try:
            with _few_download_retries():
                builder.download_and_prepare(file_format="array_record")
        except Exception as e:  # noqa: BLE001
            raise RuntimeError(
                f"TFDS dataset {name!r} is not prepared in {builder.data_dir} and preparing it "
                f"failed ({_short(e)}). Without a network, prepare it elsewhere (or from local "
                f"files: python -m jaxcnn.data.prepare) and pass its data_dir."
            ) from None
    fmt = getattr(builder.info, "file_format", None)
    if fmt is not None and "array_record" not in str(fmt).lower():
        raise DataError(
            f"TFDS dataset {name!r} in {builder.data_dir} is stored as {fmt}; random access needs "
            f"array_record: rebuild it with `tfds build {name} --file_format=array_record`"
        )
    return builder


class TfdsSource(_Base):
    """One split of a TFDS dataset through ``builder.as_data_source`` (array_record, random
    access). ``image_key``/``label_key`` name the features; ``labels`` are read once without
    decoding images. Pickles as its arguments."""

    ids: np.ndarray

    def __init__(
        self,
        name: str,
        split: str,
        data_dir: str | None = None,
        *,
        image_key: str = "image",
        label_key: str = "label",
        id_offset: int = 0,
        builder=None,
    ):
        self.tfds_name, self.split, self.data_dir = name, split, data_dir
        self.image_key, self.label_key = image_key, label_key
        self.name = f"tfds:{name}[{split}]"
        builder = builder or tfds_builder(name, data_dir, download=False)
        self._builder = builder
        self._source = None
        n = builder.info.splits[split].num_examples
        self.ids = np.arange(n, dtype=np.int64) + id_offset
        self._id_offset = id_offset
        self._labels: np.ndarray | None = None

    def __reduce__(self):
        return (
            _rebuild_tfds,
            (
                self.tfds_name,
                self.split,
                self.data_dir,
                self.image_key,
                self.label_key,
                self._id_offset,
                self._labels,
            ),
        )

    @property
    def source(self):
        if self._source is None:
            self._source = self._builder.as_data_source(split=self.split)
        return self._source

    @property
    def labels(self) -> np.ndarray:
        if self._labels is None:
            tfds = optional_import("tensorflow_datasets", "TFDS datasets")

            skip = {self.image_key: tfds.decode.SkipDecoding()}
            src = self._builder.as_data_source(split=self.split, decoders=skip)
            self._labels = np.fromiter(
                (int(src[i][self.label_key]) for i in range(len(src))), np.int64, len(src)
            )
        return self._labels

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        i = self._check(int(i))
        ex = self.source[i]
        img = np.asarray(ex[self.image_key])
        if img.ndim == 2:
            img = img[..., None]
        return {"image": img, "label": int(ex[self.label_key]), "id": int(self.ids[i])}


def _rebuild_tfds(name, split, data_dir, image_key, label_key, id_offset, labels):
    src = TfdsSource(
        name, split, data_dir, image_key=image_key, label_key=label_key, id_offset=id_offset
    )
    src._labels = labels
    return src


class Subset(_Base):
    """The examples ``indices`` of ``source``, in that order (ids and labels follow)."""

    def __init__(self, source, indices, name: str | None = None):
        self.source = source
        self.indices = np.asarray(indices, np.int64)
        self.name = name if name else getattr(source, "name", "")

    @property
    def labels(self) -> np.ndarray:
        return np.asarray(self.source.labels)[self.indices]

    @property
    def ids(self) -> np.ndarray:
        return np.asarray(self.source.ids)[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        return self.source[int(self.indices[self._check(int(i))])]


# Repeat's copy number p of an example has id ``id + p * REPEAT_ID_STRIDE``.
REPEAT_ID_STRIDE = 1 << 40


class Repeat(Subset):
    """``length`` examples of ``source``, drawn in passes of a seeded permutation: every
    example appears ``length // len(source)`` or one more times, and with ``length`` below
    ``len(source)`` the examples are a seeded random subset. A fixed budget of training steps
    as one epoch of the engine: ``Repeat(train, steps * batch_size, seed)``.

    The copies of one example get distinct ids (copy ``p``: ``id + p * REPEAT_ID_STRIDE``;
    ``ids % REPEAT_ID_STRIDE`` are the source's ids), so their random transforms, which are
    seeded by id, differ.
    """

    def __init__(self, source, length: int, seed: int = 0, name: str | None = None):
        n = len(source)
        if n < 1 or length < 1:
            raise DataError(f"Repeat: {length} examples from a source of {n}")
        rng = np.random.default_rng([seed, 2])
        passes = -(-int(length) // n)
        indices = np.concatenate([rng.permutation(n) for _ in range(passes)])[:length]
        super().__init__(source, indices, name)
        self.copy = np.repeat(np.arange(passes, dtype=np.int64), n)[:length]

    @property
    def ids(self) -> np.ndarray:
        return super().ids + self.copy * REPEAT_ID_STRIDE

    def __getitem__(self, i: int) -> dict:
        i = self._check(int(i))
        ex = dict(self.source[int(self.indices[i])])
        ex["id"] = int(ex["id"]) + int(self.copy[i]) * REPEAT_ID_STRIDE
        return ex
