"""LeCun's IDX format (MNIST, Fashion-MNIST, EMNIST), plain or gzip-compressed."""

from __future__ import annotations

import gzip
import os
import pathlib

import numpy as np

__all__ = ["read_idx", "open_idx", "find_idx", "load_idx_folder"]

_DTYPES: dict[int, str | type[np.generic]] = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (``.gz`` or not) into a numpy array, checking its header and size.

    Raises ``ValueError`` naming the file when the magic number, type code, dimensions or
    payload length are wrong (a truncated download, an HTML error page, a different format).
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"IDX file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:  # bad gzip stream
        raise ValueError(f"{path}: not a readable IDX file ({e})") from None
    dtype, dims, header = _header(path, data, len(data))
    return (
        np.frombuffer(data, dtype=dtype, offset=header)
        .reshape(dims)
        .astype(dtype.newbyteorder("="))
    )


def _header(path: pathlib.Path, data: bytes, size: int):
    """``(dtype, dims, header length)`` of an IDX file whose first bytes are ``data`` and whose
    payload plus header is ``size`` bytes; ``ValueError`` naming the file when it is not IDX."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number {data[:4].hex() or 'empty'})")
    code, ndim = data[2], data[3]
    if code not in _DTYPES or ndim == 0:
        raise ValueError(f"{path}: unsupported IDX type code 0x{code:02x} or rank {ndim}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_DTYPES[code])
    expected = int(np.prod(dims)) * dtype.itemsize
    if size - header != expected:
        raise ValueError(
            f"{path}: IDX header promises shape {dims} ({expected:,} bytes of data) but the file "
            f"holds {size - header:,} bytes; the file is truncated or corrupt"
        )
    return dtype, dims, header


def open_idx(path: str | os.PathLike) -> np.ndarray:
    """An IDX file as an array without reading it whole when it is uncompressed: a read-only
    ``np.memmap`` (pages are read on access); a ``.gz`` file is decompressed into memory
    (:func:`read_idx`). Same checks and errors as :func:`read_idx`."""
    path = pathlib.Path(path)
    if path.suffix == ".gz":
        return read_idx(path)
    if not path.exists():
        raise FileNotFoundError(f"IDX file not found: {path}")
    with open(path, "rb") as f:
        head = f.read(4 + 4 * 255)
    dtype, dims, header = _header(path, head, path.stat().st_size)
    if dtype.itemsize == 1:
        return np.memmap(path, dtype=dtype, mode="r", offset=header, shape=dims)
    return read_idx(path)  # big-endian multi-byte types: converted in memory


def find_idx(folder: str | os.PathLike, stem: str) -> pathlib.Path | None:
    """``folder/stem`` or its ``.gz`` / ``.idx`` spellings, if present."""
    return _find(pathlib.Path(folder), stem)


def _find(folder: pathlib.Path, stem: str) -> pathlib.Path | None:
    for cand in (
        stem,
        stem + ".gz",
        stem.replace("-idx", ".idx"),
        stem.replace("-idx", ".idx") + ".gz",
    ):
        if (folder / cand).exists():
            return folder / cand
    return None


def load_idx_folder(
    folder: str | os.PathLike, prefix: str = "t10k"
) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 28, 28)`` uint8 and labels ``(N,)`` from ``{prefix}-images-idx3-ubyte[.gz]``
    and ``{prefix}-labels-idx1-ubyte[.gz]`` in ``folder`` (``prefix``: ``t10k`` or ``train``)."""
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"MNIST IDX folder not found: {folder} (expected {prefix}-images-idx3-ubyte.gz and "
            f"{prefix}-labels-idx1-ubyte.gz there)"
        )
    img_path = _find(folder, f"{prefix}-images-idx3-ubyte")
    lbl_path = _find(folder, f"{prefix}-labels-idx1-ubyte")
    if img_path is None or lbl_path is None:
        present = sorted(p.name for p in folder.iterdir())
        raise FileNotFoundError(
            f"{folder}: expected {prefix}-images-idx3-ubyte[.gz] and "
            f"{prefix}-labels-idx1-ubyte[.gz],"
            f" found {present}"
        )
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(
            f"{folder}: images {images.shape} and labels {labels.shape} do not pair up "
            f"(expected (N, H, W) and (N,))"
        )
    return images, labels
