"""Keras weights (``.keras``, ``.weights.h5``, legacy ``.h5``) -> named arrays, read with h5py
(no Keras or TensorFlow needed), and the Keras names of jaxcnn's Keras-referenced models.

Keras 3 files name a layer's weights by the layer's class and its ordinal among the model's
layers of that class (``conv2d``, ``conv2d_1``, ..., ``batch_normalization_7``), whatever the
layer's own name; legacy ``.h5`` files (Keras 2's ``keras.applications`` weights, Keras 3's
``model.save("x.h5")``) name them by layer name, in model order. Both are read into the Keras 3
form, ``{"<class>[_k]/<variable>": array}`` with variables ``kernel``, ``bias``, ``gamma``,
``beta``, ``moving_mean``, ``moving_variance``, ``depthwise_kernel``, ``pointwise_kernel``, so
one layout per model serves every file. The jaxcnn module that is the k-th of a Keras class in
call order is that class's k-th layer: the forward order is Keras' layer order for these models.
"""

from __future__ import annotations

import io
import json
import re
import zipfile

import numpy as np

from jaxcnn.interop.core import Layout, register_layout

__all__ = ["read_keras"]

# Variables of a Keras layer in the order Keras 3 stores them ("vars/0", "vars/1", ...).
_VARS = {
    "conv2d": ("kernel", "bias"),
    "dense": ("kernel", "bias"),
    "depthwise_conv2d": ("depthwise_kernel", "bias"),
    "separable_conv2d": ("depthwise_kernel", "pointwise_kernel", "bias"),
    "batch_normalization": ("gamma", "beta", "moving_mean", "moving_variance"),
}
_CLASS = {
    "Conv2D": "conv2d",
    "Dense": "dense",
    "DepthwiseConv2D": "depthwise_conv2d",
    "SeparableConv2D": "separable_conv2d",
    "BatchNormalization": "batch_normalization",
}


def _name(cls: str, k: int) -> str:
    return cls if k == 0 else f"{cls}_{k}"


def _read_v3(f) -> dict:
    """Keras 3 ``.weights.h5``: ``layers/<class>[_k]/vars/<i>``."""
    out = {}
    layers = f["layers"] if "layers" in f else {}
    for lname in layers:
        group = layers[lname].get("vars")
        if group is None or not len(group):
            continue
        cls = re.sub(r"_\d+$", "", lname)
        names = _VARS.get(cls)
        n = len(group)
        if cls == "batch_normalization" and n != 4:
            raise ValueError(f"{lname}: BatchNormalization with {n} variables is not supported")
        if names is not None and cls == "separable_conv2d" and n == 2:
            names = names[:2]
        for i in range(n):
            var = names[i] if names and i < len(names) else str(i)
            out[f"{lname}/{var}"] = np.asarray(group[str(i)])
    return out


def _read_legacy(f) -> dict:
    """Legacy HDF5: ``[model_weights/]<layer>/<layer>/<var>:0`` with ``layer_names`` in model
    order, renamed to the Keras 3 form by class ordinal."""
    g = f["model_weights"] if "model_weights" in f else f
    classes = {}
    cfg = f.attrs.get("model_config")
    if cfg is not None:
        cfg = json.loads(cfg if isinstance(cfg, str) else cfg.decode())
        for layer in cfg.get("config", {}).get("layers", []):
            classes[layer["config"]["name"]] = _CLASS.get(layer["class_name"], layer["class_name"])
    counts: dict[str, int] = {}
    out = {}
    for lname in (n.decode() if isinstance(n, bytes) else n for n in g.attrs["layer_names"]):
        layer = g[lname]
        wnames = [w.decode() if isinstance(w, bytes) else w for w in layer.attrs["weight_names"]]
        if not wnames:
            continue
        arrays = {w.rpartition("/")[2].split(":")[0]: np.asarray(layer[w]) for w in wnames}
        cls = classes.get(lname) or _infer_class(arrays)
        if cls == "depthwise_conv2d" and "kernel" in arrays:  # Keras 3 calls it kernel
            arrays["depthwise_kernel"] = arrays.pop("kernel")
        k = counts.get(cls, 0)
        counts[cls] = k + 1
        for var, a in arrays.items():
            out[f"{_name(cls, k)}/{var}"] = a
    return out


def _infer_class(arrays) -> str:
    names = set(arrays)
    if {"depthwise_kernel", "pointwise_kernel"} <= names:
        return "separable_conv2d"
    if "depthwise_kernel" in names:
        return "depthwise_conv2d"
    if "moving_mean" in names:
        return "batch_normalization"
    if "kernel" in names:
        return "conv2d" if arrays["kernel"].ndim == 4 else "dense"
    raise ValueError(f"cannot tell the Keras layer class of variables {sorted(names)}")


def read_keras(path) -> dict:
    """``{"<class>[_k]/<variable>": np.ndarray}`` from a ``.keras``, ``.weights.h5`` or legacy
    ``.h5`` file (``h5py`` needed: ``pip install jaxcnn[interop]``)."""
    try:
        import h5py
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("reading Keras files needs h5py: pip install 'jaxcnn[interop]'") from e
    path = str(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            if "model.weights.h5" not in z.namelist():
                raise ValueError(f"{path}: a .keras archive without model.weights.h5")
            data = io.BytesIO(z.read("model.weights.h5"))
        with h5py.File(data, "r") as f:
            return _read_v3(f)
    with h5py.File(path, "r") as f:
        if "layer_names" in f.attrs or "model_weights" in f:
            return _read_legacy(f)
        return _read_v3(f)


# -- layouts -------------------------------------------------------------------------------------
_BN = {"scale": "gamma", "bias": "beta", "mean": "moving_mean", "var": "moving_variance"}


def _ordinal_rule(classes):
    """A rule naming module ``m[1]``'s variable ``m[2]`` by its Keras class (the first regex
    of ``classes`` that matches the module path) and ordinal among that class's modules."""

    def rule(m, t):
        mod, leaf = m[1], m[2]
        for cls, pattern in classes:
            if re.fullmatch(pattern, mod):
                var = _BN[leaf] if cls == "batch_normalization" else leaf
                if cls == "depthwise_conv2d" and leaf == "kernel":
                    var = "depthwise_kernel"
                return f"{_name(cls, t.rank(mod, pattern))}/{var}"
        raise ValueError(f"no Keras class for {mod!r}")

    return rule


def _separable(m, t):
    pattern = r".+/sepconv\d"
    return f"{_name('separable_conv2d', t.rank(m[1], pattern))}/{m[2]}_kernel"


register_layout(
    "MobileNetV1",
    Layout(
        "keras",
        (
            (
                r"(.+)/(\w+)",
                _ordinal_rule(
                    (
                        ("conv2d", r"stem/conv|.+/pointwise|head"),
                        ("depthwise_conv2d", r".+/depthwise"),
                        ("batch_normalization", r".+/bn(_dw|_pw)?"),
                    )
                ),
            ),
        ),
        leaf_names={},
        tensors="hwio",
    ),
)
register_layout(
    "Xception",
    Layout(
        "keras",
        (
            (r"(.+/sepconv\d)/(depthwise|pointwise)/kernel", _separable),
            (
                r"(.+)/(\w+)",
                _ordinal_rule(
                    (
                        ("conv2d", r"stem/conv\d|.+/downsample/conv"),
                        ("batch_normalization", r".+/bn\d?"),
                        ("dense", r"head"),
                    )
                ),
            ),
        ),
        leaf_names={},
        tensors="hwio",
    ),
)
