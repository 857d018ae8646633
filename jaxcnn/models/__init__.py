"""Model registry: ``create_model``, ``list_models``, ``model_info``, ``register_model``.

Every family module in this package registers its named variants at the bottom of its file with
``@register_model(...)``. The modules are imported here automatically, so a new family is
available (and swept by the registry-parametrized tests) as soon as its file exists.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import importlib
import pkgutil
from typing import Any, Callable, Sequence

import flax.linen as nn

from jaxcnn.layers.fast_conv import check_conv_impl
from jaxcnn.utils import tree as _tree

__all__ = [
    "TASKS",
    "ModelInfo",
    "create_model",
    "list_models",
    "model_info",
    "register_model",
]


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about a named model.

    Attributes:
      name: registered name, e.g. ``"resnet50"``.
      family: the module that defines it, e.g. ``"resnet"``.
      params: reference parameter count with the default ``num_classes`` (to the unit).
      input_size: default input ``(height, width, channels)``.
      num_classes: default number of classes of the reference model.
      paper: reference (authors, title, year).
      reference: implementation whose parameter count we match (``"torchvision"``, ``"keras"``...).
      feature_info: stage outputs returned by ``features_only=True``: a tuple of dicts with
        ``name``, ``channels`` and ``reduction`` (input side / feature side).
      min_size: smallest input side the model accepts.
      slow: the model is big enough that tests only build it abstractly (``jax.eval_shape``).
      task: what the output is: ``"classification"`` (class logits), ``"segmentation"``
        (per-pixel logits), ``"generation"`` (images from latent vectors) or
        ``"discrimination"`` (a real/fake logit).
      test_size: the smallest square side the test sweep feeds (``max(min_size, 32)`` unless
        the model needs another).
      aux_weight: weight of the auxiliary classifiers' loss in training (GoogLeNet 0.3,
        Inception v3 0.4; 0 for models without them).
      extra: reference figures that no code depends on (e.g. ``{"params_with_aux": ...}``).
    """

    name: str
    family: str
    params: int | None
    input_size: tuple[int, int, int]
    num_classes: int = 1000
    paper: str = ""
    reference: str = ""
    feature_info: tuple[dict, ...] = ()
    min_size: int = 1
    slow: bool = False
    task: str = "classification"
    test_size: int = 32
    aux_weight: float = 0.0
    extra: dict = dataclasses.field(default_factory=dict)


TASKS = ("classification", "segmentation", "generation", "discrimination")


_REGISTRY: dict[str, tuple[Callable[..., nn.Module], ModelInfo]] = {}
_LOADED = False


def register_model(
    name: str | None = None,
    *,
    params: int | None,
    input_size: Sequence[int],
    num_classes: int = 1000,
    paper: str = "",
    reference: str = "",
    feature_info: Sequence[dict] = (),
    min_size: int = 1,
    slow: bool = False,
    task: str = "classification",
    test_size: int | None = None,
    aux_weight: float = 0.0,
    **extra: Any,
):
    """Decorator registering a constructor ``fn(**kwargs) -> nn.Module`` under ``name``.

    The constructor receives every keyword of ``create_model`` (``num_classes``, ``dtype``,
    ``param_dtype``, ``features_only``, ...) and returns an unbound Flax module. The keywords
    are the fields of :class:`ModelInfo`; others go to its ``extra``.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")

    def deco(fn):
        key = name or fn.__name__
        if key in _REGISTRY:
            raise ValueError(f"model {key!r} is registered twice")
        family = fn.__module__.rsplit(".", 1)[-1]
        height, width, channels = input_size
        info = ModelInfo(
            name=key,
            family=family,
            params=params,
            input_size=(height, width, channels),
            num_classes=num_classes,
            paper=paper,
            reference=reference,
            feature_info=tuple(dict(f) for f in feature_info),
            min_size=min_size,
            slow=slow,
            task=task,
            test_size=max(min_size, 32) if test_size is None else test_size,
            aux_weight=aux_weight,
            extra=dict(extra),
        )
        _REGISTRY[key] = (fn, info)
        return fn

    return deco


def _load_all() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    for mod in pkgutil.iter_modules(__path__):
        if not mod.name.startswith("_"):
            importlib.import_module(f"{__name__}.{mod.name}")


def _lookup(name: str):
    _load_all()
    if not isinstance(name, str):
        raise TypeError(f"model name must be a string, got {type(name).__name__}")
    key = name.lower()
    if key not in _REGISTRY:
        close = difflib.get_close_matches(key, list(_REGISTRY), n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(
            f"Unknown model {name!r}.{hint} "
            f"({len(_REGISTRY)} models are registered; see jaxcnn.models.list_models().)"
        )
    return _REGISTRY[key]


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted registered names, optionally filtered by a shell-style pattern (``"resnet*"``)."""
    _load_all()
    names = sorted(_REGISTRY)
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n, pattern.lower())]
    return names


def model_info(name: str) -> ModelInfo:
    """Reference parameter count, default input size, paper and feature_info of ``name``."""
    return _lookup(name)[1]


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name``; keyword arguments go to its constructor.

    Every model takes ``conv_impl``: ``"fast"`` (default) or ``"xla"``, how its convolutions
    are computed (``jaxcnn.layers.fast_conv``). ``scan_blocks=True`` / ``scan_remat=True``
    (identical blocks under ``nn.scan``, :mod:`jaxcnn.models.scan`) are accepted by the
    families in ``jaxcnn.models.scan.SCAN_FAMILIES``; another family raises ``ValueError``
    (``False`` is accepted everywhere and changes nothing).

    >>> model = create_model("lenet5", num_classes=10)
    """
    fn, info = _lookup(name)
    if "conv_impl" in kwargs:
        check_conv_impl(kwargs["conv_impl"])
    if "pretrained" in kwargs:  # interop uses models, not the other way round
        raise TypeError(
            f"{name}: pretrained weights load with jaxcnn.interop.create_model(name, "
            f"pretrained=..., num_classes=..., in_channels=...) -> (model, variables)"
        )
    scan_keys = [k for k in ("scan_blocks", "scan_remat") if k in kwargs]
    if scan_keys:
        from jaxcnn.models.scan import SCAN_FAMILIES, check_family

        if info.family not in SCAN_FAMILIES:
            if any(kwargs[k] for k in scan_keys):
                check_family(name, info.family)
            kwargs = {k: v for k, v in kwargs.items() if k not in scan_keys}  # off: a no-op
    if "num_classes" in kwargs:
        n = kwargs["num_classes"]
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"{name}: num_classes must be an integer >= 1, got {n!r}")
    return fn(**kwargs)


def count_params(model: Any, input_shape: Sequence[int] | None = None, **kwargs: Any) -> int:
    """Number of parameters (the ``params`` collection; BatchNorm statistics excluded) of a
    registered model, a module, or a pytree of parameters.

    A name is built with ``**kwargs`` and ``input_shape`` defaults to
    ``(1, *model_info(name).input_size)``; a module needs ``input_shape``; a pytree counts the
    scalars of all its leaves. Modules and pytrees go to :func:`jaxcnn.utils.count_params`,
    the one implementation.

    >>> count_params("resnet18")
    11689512
    """
    if isinstance(model, str):
        info = model_info(model)
        input_shape = input_shape or (1, *info.input_size)
        model = create_model(model, **kwargs)
    elif kwargs:
        raise TypeError(
            f"keyword arguments {sorted(kwargs)} only apply to a registered model name, "
            f"not to {type(model).__name__}"
        )
    return _tree.count_params(model, input_shape)


#: Shapes and dtypes of ``model.init`` without allocating: :func:`jaxcnn.utils.abstract_init`.
abstract_variables = _tree.abstract_init

__all__ += ["abstract_variables", "count_params"]
