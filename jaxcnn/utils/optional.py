"""Optional dependencies: imported where they are used, never at import time.

The core install (``pip install jaxcnn``) is what models, training and transfer learning need.
Everything else is an extra of ``pyproject.toml``; :func:`optional_import` imports one of its
modules or raises an ``ImportError`` that names the extra to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["EXTRAS", "optional_import"]

# top-level module -> (the distribution that provides it, the extra that installs it)
EXTRAS: dict[str, tuple[str, str]] = {
    "matplotlib": ("matplotlib", "plots"),
    "tensorflow": ("tensorflow", "tfds"),
    "tensorflow_datasets": ("tensorflow-datasets", "tfds"),
    "skimage": ("scikit-image", "images"),
    "qwix": ("qwix", "compress"),
    "safetensors": ("safetensors", "interop"),
    "h5py": ("h5py", "interop"),
    "tensorboardX": ("tensorboardX", "tensorboard"),
}


def optional_import(module: str, purpose: str) -> ModuleType:
    """``importlib.import_module(module)`` for a module of an extra; when it is missing, an
    ``ImportError`` saying that ``purpose`` needs it and which extra installs it.

    >>> Figure = optional_import("matplotlib.figure", "plotting learning curves").Figure
    """
    top = module.partition(".")[0]
    if top not in EXTRAS:
        raise ValueError(f"{top!r} is not an optional dependency of jaxcnn ({sorted(EXTRAS)})")
    dist, extra = EXTRAS[top]
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"{purpose} needs {dist}, which is not installed: pip install 'jaxcnn[{extra}]' "
            f"(or pip install {dist}); {e}"
        ) from e
