"""Shared by the interop tests: the reference libraries' key lists and shapes
(tests/data/reference_keys.json.gz, written by ``python -m experiments.verify_interop --keys``
from torchvision 0.29.1, timm 1.0.31 and Keras 3.15) and state dicts drawn from them."""

import gzip
import json
import os

import jax
import numpy as np
import pytest

from jaxcnn import models

DATA = os.path.join(os.path.dirname(__file__), "data", "reference_keys.json.gz")
with gzip.open(DATA, "rt") as f:
    REFERENCE = json.load(f)
CASES = [(src, n) for src in ("torchvision", "timm", "keras") for n in sorted(REFERENCE[src])]


def _slow(name):
    return models.model_info(name).slow


def _param(src, name):
    marks = [pytest.mark.slow] if _slow(name) else []
    return pytest.param(src, name, id=f"{src}-{name}", marks=marks)


def reference_shapes(src, name) -> dict:
    return {k: tuple(s) for k, s in REFERENCE[src][name]}


def random_state_dict(src, name, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for k, s in REFERENCE[src][name]:
        if k.endswith(("num_batches_tracked", "relative_position_index")):
            out[k] = np.zeros(s, np.int64)
        elif k.endswith(("running_var", "moving_variance")):
            out[k] = rng.uniform(0.5, 1.5, s).astype(np.float32)
        else:
            scale = 1 / np.sqrt(np.prod(s[1:]) or 1)  # ~ unit activations
            out[k] = (rng.standard_normal(s) * scale).astype(np.float32)
    return out


def identical(a, b):
    """Same tree paths, bit-identical arrays."""
    la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in la] == [p for p, _ in lb]
    for (p, x), (_, y) in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(p))
