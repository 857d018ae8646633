"""Export a model's inference function to serialized StableHLO with ``jax.export``.

The result runs without jaxcnn or Flax: ``jax.export.deserialize(blob).call(x)`` (or from C++
/ other JAX versions within the StableHLO compatibility window). The variables are either baked
in as constants (default: one self-contained artifact) or passed as the first argument
(``pass_variables=True``: the artifact takes ``(variables, x)``, the weights travel separately).
The batch dimension is symbolic by default, so one artifact serves any batch size.
"""

from __future__ import annotations

import os
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcnn.inspect._common import resolve

__all__ = ["export_model", "save_exported", "load_exported"]


def export_model(
    model,
    variables=None,
    input_shape: Sequence[int] | None = None,
    *,
    batch_polymorphic: bool = True,
    pass_variables: bool = False,
    platforms: Sequence[str] | None = None,
    **create_kwargs,
) -> jax.export.Exported:
    """``jax.export`` of ``x -> model.apply(variables, x, train=False)``.

    Args:
      model: a registered name or a module; ``variables`` default to a fresh ``init``.
      input_shape: ``(H, W, C)`` or ``(N, H, W, C)``; default: the registered input size.
      batch_polymorphic: export with a symbolic batch size ``b`` (falls back to the fixed batch
        when the model cannot be traced that way).
      pass_variables: take the variables as the first argument instead of baking them in.
      platforms: e.g. ``("cpu", "cuda")``; default: the current backend.
    """
    module, shape, _ = resolve(model, input_shape, **create_kwargs)
    if variables is None:
        from jaxcnn.inspect._common import init_variables

        variables = init_variables(module, shape)
    if not isinstance(module, nn.Module) and not hasattr(module, "apply"):
        raise TypeError("export_model needs a flax module")

    if pass_variables:
        fn = jax.jit(lambda v, x: module.apply(v, x, train=False))
        var_spec = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), variables)
    else:
        fn = jax.jit(lambda x: module.apply(variables, x, train=False))

    def do(x_spec):
        exp = jax.export.export(fn, platforms=platforms)
        return exp(var_spec, x_spec) if pass_variables else exp(x_spec)

    fixed = jax.ShapeDtypeStruct(shape, jnp.float32)
    if batch_polymorphic:
        (b,) = jax.export.symbolic_shape("b")
        try:
            return do(jax.ShapeDtypeStruct((b, *shape[1:]), jnp.float32))
        except Exception:  # a model that needs a concrete batch size
            pass
    return do(fixed)


def save_exported(exported: jax.export.Exported, path: str) -> str:
    """Write the serialized StableHLO artifact (``exported.serialize()``) to ``path``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(exported.serialize())
    return path


def load_exported(path_or_bytes) -> jax.export.Exported:
    """``jax.export.deserialize`` of a file written by :func:`save_exported` (or raw bytes);
    call it with ``.call(x)`` (``.call(variables, x)`` if exported with ``pass_variables``)."""
    if isinstance(path_or_bytes, (bytes, bytearray)):
        blob = path_or_bytes
    else:
        with open(path_or_bytes, "rb") as f:
            blob = f.read()
    return jax.export.deserialize(bytearray(blob))
