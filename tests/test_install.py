"""The core install is light: jaxcnn imports its extras only where they are used.

``pyproject.toml``'s ``dependencies`` are what models, training and transfer learning need;
TFDS/TensorFlow, matplotlib, scikit-image, Qwix, safetensors/h5py and tensorboardX are extras
(docs/development.md). These tests check that no module of ``jaxcnn`` imports a non-core
package at import time, that every module imports with the extras missing, and that using a
feature of a missing extra raises an ImportError naming the extra to install.
"""

from __future__ import annotations

import ast
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PKG = ROOT / "jaxcnn"

# core distribution (pyproject.toml) -> the top-level module it provides
CORE = {
    "jax": "jax",
    "flax": "flax",
    "optax": "optax",
    "orbax-checkpoint": "orbax",
    "grain": "grain",
    "ml-collections": "ml_collections",
    "absl-py": "absl",
    "numpy": "numpy",
    "pillow": "PIL",
    "tqdm": "tqdm",
}
# installed with jax itself (jax's own dependencies)
WITH_JAX = {"ml_dtypes", "jaxlib"}


def _pyproject():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library >= 3.11")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _dist(req: str) -> str:
    return re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0].strip().lower()


def _imports(tree: ast.AST, *, module_level: bool):
    """(line, top-level module) of imports at module level (or inside functions)."""
    out = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)) and in_function != module_level:
                if isinstance(child, ast.Import):
                    names = [a.name for a in child.names]
                else:
                    names = [child.module] if child.level == 0 and child.module else []
                out.extend((child.lineno, n.split(".")[0]) for n in names)
            fn = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, in_function or fn)

    visit(tree, False)
    return out


def test_core_dependencies_are_the_documented_ones():
    deps = {_dist(r) for r in _pyproject()["project"]["dependencies"]}
    assert deps == set(CORE), (
        "pyproject's core dependencies changed: update CORE here and the install section of "
        f"docs/development.md. Added: {sorted(deps - set(CORE))}, removed: "
        f"{sorted(set(CORE) - deps)}"
    )


def test_extras_install_what_optional_import_names():
    from jaxcnn.utils.optional import EXTRAS

    extras = _pyproject()["project"]["optional-dependencies"]
    for module, (dist, extra) in EXTRAS.items():
        assert extra in extras, f"{module}: extra {extra!r} is not in pyproject.toml"
        assert dist.lower() in {_dist(r) for r in extras[extra]}, (module, dist, extra)
    everything = {
        _dist(r) for name, reqs in extras.items() if name not in ("test", "lint") for r in reqs
    }
    assert {d.lower() for d, _ in EXTRAS.values()} <= everything
    assert "jaxcnn[all]" in extras["test"], "the test extra installs every extra"


def test_no_module_imports_a_non_core_package_at_import_time():
    allowed = set(CORE.values()) | WITH_JAX | set(sys.stdlib_module_names) | {"jaxcnn"}
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        for line, top in _imports(ast.parse(path.read_text()), module_level=True):
            if top not in allowed:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {top}")
    assert not bad, "import these inside the function that uses them:\n" + "\n".join(bad)


def test_optional_packages_are_imported_through_optional_import():
    """Inside functions too, a module of an extra comes from optional_import (an ImportError
    that names the extra); interop's two readers raise their own message naming it."""
    from jaxcnn.utils.optional import EXTRAS

    own_message = {"jaxcnn/interop/files.py": "safetensors", "jaxcnn/interop/keras.py": "h5py"}
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for line, top in _imports(ast.parse(path.read_text()), module_level=False):
            if top in EXTRAS and own_message.get(rel) != top:
                bad.append(f"{rel}:{line} imports {top}")
    assert not bad, "use jaxcnn.utils.optional_import for:\n" + "\n".join(bad)


# Runs in a fresh interpreter in which the extras cannot be imported, as after
# `pip install jaxcnn` alone.
_WITHOUT_EXTRAS = r"""
import importlib, importlib.abc, pkgutil, sys, tempfile

BLOCKED = {"matplotlib", "tensorflow", "tensorflow_datasets", "skimage", "sklearn", "qwix",
           "safetensors", "h5py", "tensorboardX", "torch"}

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
        return None

sys.meta_path.insert(0, Block())

import jaxcnn
for m in pkgutil.walk_packages(jaxcnn.__path__, "jaxcnn."):
    if not m.name.endswith("__main__"):
        importlib.import_module(m.name)
print("imported", len(sys.modules))

def expect(extra, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except ImportError as e:
        assert f"jaxcnn[{extra}]" in str(e), (extra, str(e))
        print("ok", extra)
    else:
        raise AssertionError(f"{fn.__name__} ran without the {extra!r} extra")

import numpy as np
quantize = importlib.import_module("jaxcnn.compress.quantize")
from jaxcnn.data import sources
from jaxcnn.inspect import pictures
from jaxcnn.interop import files
from jaxcnn.train import logger, plots
from jaxcnn.utils import optional_import

tmp = tempfile.mkdtemp()
expect("plots", plots.plot_curves, [{"epoch": 1, "train_loss": 1.0}], tmp + "/c.png", ("loss",))
expect("plots", plots.plot_confusion, np.eye(2, dtype=int), tmp + "/m.png")
expect("tfds", sources.tfds_builder, "mnist", tmp)
expect("images", pictures.sample_image)
expect("compress", quantize._qwix)
expect("interop", files.save_file, {"w": np.zeros(2, np.float32)}, tmp + "/w.safetensors")
expect("tensorboard", logger.TensorBoardWriter, tmp)
# a run on the core install ends with its metrics: the tasks skip their PNGs, saying so
assert plots.can_plot("curves.png") is False
print("ok can_plot")
try:
    optional_import("yaml", "nothing")
except ValueError as e:
    print("ok unknown:", e)
"""


def test_every_module_imports_without_the_extras_and_features_name_their_extra():
    r = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_WITHOUT_EXTRAS)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    for extra in ("plots", "tfds", "images", "compress", "interop", "tensorboard"):
        assert f"ok {extra}" in r.stdout, r.stdout
    assert "ok unknown" in r.stdout
    assert "ok can_plot" in r.stdout and "curves.png skipped" in r.stdout
