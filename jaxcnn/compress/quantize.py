"""Post-training int8 quantization of any jaxcnn model, through Qwix (``pip install qwix``).

Three modes, all with per-output-channel symmetric int8 weights (``absmax`` scale per channel,
``w = scale * q``, ``q`` in [-127, 127]):

- ``"weights"``: weight-only. Kernels are stored as int8 plus a float32 scale per output channel
  and dequantized when the model runs: 4x smaller weights, float compute (the same kernels
  as the float model). Qwix's PTQ needs activations quantized for convolutions, so this mode
  quantizes the weights with Qwix's ``quantize`` / ``dequantize`` and runs the float model.
- ``"dynamic"``: weights int8, and the input of every convolution and dense layer quantized to
  int8 at run time (one scale per example, from its own absmax); the conv / matmul runs on int8
  with int32 accumulation, then is rescaled to float. Needs no calibration data.
- ``"static"``: as dynamic, but every activation scale is fixed beforehand from a calibration
  set (Qwix averages each example's absmax over the calibration batches).

What stays float: biases, BatchNorm (applied after the rescaled int32 result), activations
between layers, pooling, residual adds, softmax. Per-channel symmetric weight scales commute
with BatchNorm's per-channel scale, so folding BatchNorm into the conv first
(``jaxcnn.inspect.fold_batchnorm``) would give the same int8 values; it is not needed here.

Qwix intercepts ``jax.lax.conv_general_dilated`` / ``dot_general`` / ``jnp.einsum`` inside the
linen modules (it fits linen as jaxcnn writes it: parameters from ``self.param``, no model
changes), so the quantized model runs with plain XLA convolutions (``conv_impl="xla"``, see
``jaxcnn.layers.fast_conv``): the faster CPU formulations of depthwise and transposed
convolutions are made of slices and would bypass the interception.

    qm = quantize(model, variables, "static", calibration=images[:512])
    logits = qm(images)                       # jitted
    tree_nbytes(variables), qm.nbytes         # weights' bytes before / after
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.utils import optional_import

__all__ = ["MODES", "QuantizedModel", "quantize", "quantize_weights", "tree_nbytes"]

MODES = ("weights", "dynamic", "static")


def _qwix():
    return optional_import("qwix", "int8 quantization (jaxcnn.compress.quantize)")


def _with_xla_convs(model: nn.Module) -> nn.Module:
    """``model`` with plain ``lax.conv_general_dilated`` convolutions (what Qwix intercepts):
    jaxcnn models take ``conv_impl="xla"``; other linen modules are used as they are."""
    if getattr(model, "conv_impl", None) not in (None, "xla"):
        return model.clone(conv_impl="xla")
    return model


def tree_nbytes(tree) -> int:
    """Bytes of all array leaves of ``tree`` (int8 values, scales, float parameters...)."""
    return int(
        sum(np.dtype(x.dtype).itemsize * int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
    )


def _is_kernel(path, leaf) -> bool:
    last = path[-1]
    name = getattr(last, "key", getattr(last, "name", None))
    return name == "kernel" and jnp.ndim(leaf) >= 2


def quantize_weights(params, qtype: str = "int8"):
    """Per-output-channel (last axis) symmetric quantization of every ``kernel`` with >= 2 axes
    into a Qwix ``QArray`` (int8 ``qvalue``, float32 ``scale``); other leaves unchanged."""
    qwix = _qwix()

    def q(path, leaf):
        if not _is_kernel(path, leaf):
            return leaf
        return qwix.quantize(
            jnp.asarray(leaf), qtype, channelwise_axes=[jnp.ndim(leaf) - 1], scale_dtype=jnp.float32
        )

    return jax.tree_util.tree_map_with_path(q, params)


def _dequantize(params):
    qwix = _qwix()
    return jax.tree.map(
        lambda x: qwix.dequantize(x) if isinstance(x, qwix.QArray) else x,
        params,
        is_leaf=lambda x: isinstance(x, qwix.QArray),
    )


@dataclasses.dataclass
class QuantizedModel:
    """A quantized model ready to run: ``qm(x)`` returns the logits (jitted, eval mode).

    ``module`` is the Qwix-wrapped module (the float one in ``"weights"`` mode) and
    ``variables`` its variables: quantized kernels (and, in ``"static"`` mode, the activation
    scales) plus the float biases and BatchNorm statistics.
    """

    module: nn.Module
    variables: dict
    mode: str
    float_module: nn.Module

    def __post_init__(self):
        if self.mode == "weights":
            fn = lambda v, x: self.module.apply(  # noqa: E731
                {**v, "params": _dequantize(v["params"])}, x, train=False
            )
        else:
            fn = lambda v, x: self.module.apply(v, x, train=False)  # noqa: E731
        self._fn = jax.jit(fn)

    def __call__(self, x) -> jax.Array:
        return self._fn(self.variables, x)

    @property
    def nbytes(self) -> int:
        """Bytes of the quantized variables (int8 kernels, scales, float biases and BN)."""
        return tree_nbytes(self.variables)


def _rules(qwix, mode: str, skip: Sequence[str], qtype: str, act_calibration: str, qt=False):
    cls = qwix.QtRule if qt else qwix.QuantizationRule
    rules = [cls(module_path=r, weight_qtype=None) for r in skip]
    rules.append(
        cls(
            module_path=".*",
            weight_qtype=qtype,
            act_qtype=qtype,
            act_static_scale=mode == "static",
            act_calibration_method=act_calibration,
        )
    )
    return rules


def _batches(calibration, batch_size: int) -> Iterable[np.ndarray | jax.Array]:
    if isinstance(calibration, (np.ndarray, jax.Array)):
        n = (len(calibration) // batch_size) * batch_size
        if n == 0:
            raise ValueError(
                f"calibration set of {len(calibration)} images is smaller than one batch "
                f"({batch_size}); pass more images or a smaller calibration_batch_size"
            )
        for i in range(0, n, batch_size):
            yield calibration[i : i + batch_size]
    else:
        for b in calibration:
            yield b["image"] if isinstance(b, dict) else b


def quantize(
    model: nn.Module,
    variables: dict,
    mode: str = "static",
    calibration=None,
    *,
    input_shape: Sequence[int] | None = None,
    skip: Sequence[str] = (),
    qtype: str = "int8",
    act_calibration: str = "absmax",
    calibration_batch_size: int = 64,
) -> QuantizedModel:
    """Quantize ``model`` (a jaxcnn / linen module) with trained ``variables``.

    Args:
      mode: ``"weights"``, ``"dynamic"`` or ``"static"`` (see the module docstring).
      calibration: ``"static"`` only (required there): images ``(N, H, W, C)`` preprocessed
        as for the model, cut into full batches of ``calibration_batch_size``, or an iterable
        of image batches (or of dicts with ``"image"``), e.g. a validation iterator. Use full
        batches: a zero-padded batch lowers the averaged scales.
      input_shape: one image's shape ``(H, W, C)``; needed by ``"dynamic"`` (``"static"``
        takes it from the calibration set).
      skip: regexes of module paths (``"stem/conv"``, ``"head"``) left in float.
      qtype: ``"int8"`` (any Qwix integer type works, e.g. ``"int4"``).
      act_calibration: Qwix calibration method for activations (``"absmax"``,
        ``"absmax,0.9"`` to clip to 90%, ``"rms,3"``...).
    """
    if mode not in MODES:
        raise ValueError(f"quantization mode must be one of {MODES}, got {mode!r}")
    if mode == "static" and calibration is None:
        raise ValueError("static quantization needs a calibration set (calibration=images)")
    if mode != "static" and calibration is not None:
        raise ValueError(f"calibration is used by mode='static' only, not {mode!r}")
    if "params" not in variables:
        raise ValueError(f"variables need a 'params' collection, got {sorted(variables)}")
    qwix = _qwix()
    variables = dict(variables)
    if mode == "weights":
        if skip:
            raise ValueError("skip is for 'dynamic' and 'static' modes")
        q = {**variables, "params": quantize_weights(variables["params"], qtype)}
        return QuantizedModel(model, q, mode, model)

    xla_model = _with_xla_convs(model)
    ptq = qwix.quantize_model(
        xla_model, qwix.PtqProvider(_rules(qwix, mode, skip, qtype, act_calibration))
    )
    quant_stats: Any = {}
    batches = iter(_batches(calibration, calibration_batch_size)) if mode == "static" else None
    first = next(batches) if batches is not None else None
    if first is not None:
        example = jnp.asarray(first[:1], jnp.float32)
    elif input_shape is not None:
        example = jnp.zeros((1, *input_shape), jnp.float32)
    else:
        raise ValueError("dynamic quantization needs input_shape=(H, W, C) of one image")
    abstract = jax.eval_shape(lambda: ptq.init(jax.random.key(0), example, train=False))["params"]
    if mode == "static":
        quant_stats = _calibrate(
            qwix, xla_model, variables, skip, qtype, act_calibration, first, batches
        )
    params = qwix.quantize_params(variables["params"], abstract, quant_stats)
    return QuantizedModel(ptq, {**variables, "params": params}, mode, model)


def _calibrate(qwix, model, variables, skip, qtype, act_calibration, first, batches):
    qt = qwix.quantize_model(
        model, qwix.QtProvider(_rules(qwix, "static", skip, qtype, act_calibration, qt=True))
    )
    x0 = jnp.asarray(first, jnp.float32)
    stats = qt.init(jax.random.key(0), x0[:1], train=False)["quant_stats"]

    # Not jitted: Qwix updates the statistics from inside a custom_vjp, a side effect that
    # leaks a tracer under jax.jit with this JAX; op-by-op it is exact (and a one-off cost).
    def step(stats, x):
        _, upd = qt.apply(
            {**variables, "quant_stats": stats}, x, train=False, mutable=["quant_stats"]
        )
        return upd["quant_stats"]

    for x in [first, *batches]:
        x = jnp.asarray(x, jnp.float32)
        if x.shape[1:] != x0.shape[1:]:
            raise ValueError(
                f"calibration batches must all have image shape {x0.shape[1:]}, got {x.shape[1:]}"
            )
        stats = step(stats, x)
    return jax.device_get(stats)
