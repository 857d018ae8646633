"""Weight files: read any supported file into ``{name: np.ndarray}``, write one back, and save /
restore plain jaxcnn variables as an Orbax checkpoint.

=====================  ===================================================  ==================
file                   read with                                            needs
=====================  ===================================================  ==================
``.safetensors``       ``safetensors.numpy`` (bfloat16 becomes float32)     ``safetensors``
``.npz``               ``numpy.load`` (file order)                          -
``.pth`` ``.pt``       ``torch.load(weights_only=True)``; a checkpoint dict  ``torch``
``.bin``               is unwrapped (``state_dict``/``model``/``module``)
``.keras`` ``.h5``     :func:`jaxcnn.interop.keras.read_keras`              ``h5py``
directory              an Orbax checkpoint of jaxcnn variables              -
=====================  ===================================================  ==================

``pip install 'jaxcnn[interop]'`` installs safetensors and h5py.
"""

from __future__ import annotations

import json
import os
import re
from typing import Mapping

import numpy as np

from jaxcnn.interop.core import to_numpy

__all__ = ["load_file", "save_file", "save_variables", "restore_variables", "META_FILE"]

META_FILE = "jaxcnn_meta.json"  # beside an Orbax checkpoint written by save_variables
_WRAPPERS = ("state_dict", "model_state_dict", "model", "module", "model_ema", "state_dict_ema")


def _safetensors():
    try:
        from safetensors import numpy as st
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading .safetensors needs the safetensors package: pip install 'jaxcnn[interop]'"
        ) from e
    return st


def _read_safetensors(path) -> dict:
    """safetensors' numpy reader, with bfloat16 tensors read by hand (numpy has no bfloat16)."""
    try:
        out = dict(_safetensors().load_file(path))
        return {
            k: v.astype(np.float32) if v.dtype.name == "bfloat16" else v for k, v in out.items()
        }
    except (TypeError, ValueError) as e:  # an older safetensors without bfloat16 for numpy
        if "bf16" not in str(e).lower() and "bfloat16" not in str(e).lower():
            raise
    import ml_dtypes

    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        data = f.read()
    dtypes = {"BF16": ml_dtypes.bfloat16, "F16": np.float16, "F32": np.float32, "F64": np.float64}
    dtypes.update({"I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8})
    dtypes.update({"U8": np.uint8, "BOOL": np.bool_})
    out = {}
    for k, info in header.items():
        if k == "__metadata__":
            continue
        a, b = info["data_offsets"]
        arr = np.frombuffer(data[a:b], dtypes[info["dtype"]]).reshape(info["shape"])
        out[k] = arr.astype(np.float32) if info["dtype"] == "BF16" else arr
    return out


def _unwrap(obj):
    """A ``state_dict`` out of a training checkpoint (``{"state_dict": ...}`` and the like)."""
    while isinstance(obj, Mapping) and not any(hasattr(v, "shape") for v in obj.values()):
        inner = next((obj[k] for k in _WRAPPERS if k in obj), None)
        if inner is None:
            raise ValueError(
                f"no tensors in this file's dict (keys: {sorted(obj)[:8]}); pass its state_dict"
            )
        obj = inner
    if not isinstance(obj, Mapping):
        raise ValueError(f"expected a state_dict, the file holds a {type(obj).__name__}")
    keys = list(obj)
    if keys and all(str(k).startswith("module.") for k in keys):  # DataParallel / DDP
        obj = {str(k)[len("module.") :]: v for k, v in obj.items()}
    return obj


def load_file(path) -> dict[str, np.ndarray]:
    """``{name: np.ndarray}`` from a weights file (see the module docstring for the formats)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(
            f"{path} is a directory: use jaxcnn.interop.load_variables for an Orbax checkpoint"
        )
    if not os.path.exists(path):
        raise FileNotFoundError(path)
    ext = os.path.splitext(path)[1].lower()
    if ext == ".safetensors":
        return _read_safetensors(path)
    if ext == ".npz":
        with np.load(path) as z:
            return {re.sub(r"^\d+\|", "", k): z[k] for k in z.files if not k.startswith("__")}
    if ext in (".keras", ".h5", ".hdf5"):
        from jaxcnn.interop.keras import read_keras

        return read_keras(path)
    if ext in (".pth", ".pt", ".bin", ".ckpt"):
        try:
            import torch
        except ImportError as e:
            raise ImportError(
                f"reading {ext} files needs torch; or save the state dict as .safetensors "
                f"(safetensors.torch.save_file) or .npz in a Python that has it"
            ) from e
        sd = _unwrap(torch.load(path, map_location="cpu", weights_only=True))
        return {str(k): to_numpy(v) for k, v in sd.items() if hasattr(v, "shape")}
    raise ValueError(
        f"{path}: unknown weights format {ext!r} (known: .safetensors, .npz, .pth/.pt/.bin, "
        f".keras, .h5)"
    )


def _contiguous(a: np.ndarray) -> np.ndarray:
    """C-contiguous, same shape: ``np.ascontiguousarray`` alone makes a 0-d array (torch's
    ``num_batches_tracked``) 1-d, which ``load_state_dict`` then refuses."""
    return np.ascontiguousarray(a).reshape(np.shape(a))


def save_file(tensors: Mapping, path) -> str:
    """Write ``{name: array}`` as ``.safetensors``, ``.npz`` or (with torch) ``.pth``."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    arrays = {str(k): _contiguous(to_numpy(v)) for k, v in tensors.items()}
    if ext == ".safetensors":
        _safetensors().save_file(arrays, path)
    elif ext == ".npz":
        # the keys are tensor names; numpy's annotation lets **kwds fill allow_pickle: bool
        np.savez(path, **arrays)  # type: ignore[arg-type]
    elif ext in (".pth", ".pt", ".bin"):
        import torch

        torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, path)
    else:
        raise ValueError(f"{path}: write .safetensors, .npz or .pth")
    return path


def save_variables(path, variables: Mapping, meta: Mapping | None = None) -> str:
    """Save ``{"params", "batch_stats"}`` as an Orbax checkpoint directory ``path`` (created;
    must not exist) with ``meta`` (JSON: model name, options, source) in ``jaxcnn_meta.json``."""
    import orbax.checkpoint as ocp

    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path):
        raise FileExistsError(f"{path} exists; choose a new directory")
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(path, {k: dict(v) for k, v in variables.items()})
    ckptr.wait_until_finished()
    ckptr.close()
    with open(os.path.join(path, META_FILE), "w") as f:
        json.dump(dict(meta or {}), f, indent=1, sort_keys=True)
    return path


def read_meta(path) -> dict:
    p = os.path.join(os.fspath(path), META_FILE)
    if not os.path.exists(p):
        return {}
    with open(p) as f:
        return json.load(f)


def restore_variables(path, template=None) -> dict:
    """Variables from a :func:`save_variables` directory; ``template`` (abstract or real
    variables) fixes the structure and checks the shapes."""
    import orbax.checkpoint as ocp

    path = os.path.abspath(os.fspath(path))
    ckptr = ocp.StandardCheckpointer()
    try:
        if template is None:
            return ckptr.restore(path)
        return ckptr.restore(path, template)
    finally:
        ckptr.close()
