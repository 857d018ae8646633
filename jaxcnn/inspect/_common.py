"""Shared plumbing of the inspection tools: resolving a model name or module, input shapes,
variables, and recording every module call with ``flax.linen.intercept_methods``."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcnn import models
from jaxcnn.utils import path_str

__all__ = [
    "Call",
    "resolve",
    "small_input_shape",
    "init_variables",
    "random_variables",
    "record_calls",
    "xla_convs",
    "subtree",
    "fmt_int",
]


def xla_convs(model: nn.Module) -> nn.Module:
    """``model`` computing its convolutions as plain ``lax.conv_general_dilated``
    (``conv_impl="xla"``, a field of every jaxcnn model), so that the receptive-field walk sees
    one convolution primitive per conv (the "fast" path computes depthwise convs as sums of
    shifted slices). A module without the field is returned as it is."""
    if "conv_impl" in {f.name for f in dataclasses.fields(model)}:
        return model.clone(conv_impl="xla")
    return model


def fmt_int(n) -> str:
    return "-" if n is None else f"{int(n):,}"


def small_input_shape(name: str, batch: int = 1) -> tuple[int, int, int, int]:
    """The smallest input the registry sweep uses for ``name``: side ``ModelInfo.test_size``,
    the model's channels."""
    info = models.model_info(name)
    return (batch, info.test_size, info.test_size, info.input_size[2])


def resolve(model, input_shape=None, **create_kwargs):
    """``(module, input_shape, name)`` from a registered name or a module.

    ``input_shape`` may be ``(H, W, C)`` (batch 1 is added) or ``(N, H, W, C)``; for a name it
    defaults to the registered ``input_size``; a module needs it.
    """
    name = None
    if isinstance(model, str):
        name = model
        info = models.model_info(name)
        model = models.create_model(name, **create_kwargs)
        if input_shape is None:
            input_shape = info.input_size
    elif create_kwargs:
        raise TypeError(f"keyword arguments {sorted(create_kwargs)} only apply to a model name")
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"expected a registered model name or a flax.linen.Module, got {type(model).__name__}"
        )
    if input_shape is None:
        raise ValueError(
            "input_shape is needed when a module is given instead of a name, "
            "e.g. input_shape=(224, 224, 3)"
        )
    input_shape = tuple(int(s) for s in input_shape)
    if len(input_shape) == 3:
        input_shape = (1, *input_shape)
    if len(input_shape) != 4:
        raise ValueError(f"input_shape must be (H, W, C) or (N, H, W, C), got {input_shape}")
    return model, input_shape, name


def _rngs(seed: int = 0):
    k = jax.random.key(seed)
    return {"params": jax.random.fold_in(k, 0), "dropout": jax.random.fold_in(k, 1)}


def init_variables(model: nn.Module, input_shape, seed: int = 0, **kwargs):
    """Real variables from ``model.init`` (jitted)."""
    x = jnp.zeros(tuple(input_shape), jnp.float32)
    return jax.jit(lambda x: model.init(_rngs(seed), x, train=False, **kwargs))(x)


def random_variables(abstract, seed: int = 0, stats: bool = True):
    """Random variables of the given shapes, drawn with NumPy (no XLA compilation: a model's
    ``init`` compiles a random-bit generator per parameter, which takes long on a busy CPU).

    Kernels ~ N(0, 1/fan_in) (LeCun normal), biases ~ N(0, 0.1), scales ~ 1 + N(0, 0.1);
    BatchNorm statistics random too when ``stats`` (mean ~ N(0, 0.1), var ~ U(0.5, 1.5)), else
    0 and 1. Other arrays (embeddings, tokens) ~ N(0, 0.02).
    """
    import numpy as np

    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = str(getattr(path[-1], "key", path[-1]))
        col = str(getattr(path[0], "key", path[0]))
        shape, dtype = leaf.shape, leaf.dtype
        if not jnp.issubdtype(dtype, jnp.floating):
            return jnp.zeros(shape, dtype)
        if col == "batch_stats" or name in ("mean", "var"):
            if name == "var":
                v = rng.uniform(0.5, 1.5, shape) if stats else np.ones(shape)
            else:
                v = rng.normal(0, 0.1, shape) if stats else np.zeros(shape)
        elif name == "kernel" and len(shape) >= 2:
            fan_in = max(1, int(np.prod(shape[:-1])))
            v = rng.normal(0, 1 / np.sqrt(fan_in), shape)
        elif name == "bias":
            v = rng.normal(0, 0.1, shape)
        elif name == "scale":
            v = 1 + rng.normal(0, 0.1, shape)
        else:
            v = rng.normal(0, 0.02, shape)
        return jnp.asarray(v, dtype)

    return jax.tree_util.tree_map_with_path(draw, abstract)


def subtree(variables, path: Sequence[str]):
    """The variables of the module at ``path``: ``{collection: subtree}`` (empty ones dropped)."""
    out = {}
    for col, tree in variables.items():
        node = tree
        for p in path:
            if not hasattr(node, "get") or p not in node:
                node = None
                break
            node = node[p]
        if node is not None:
            out[col] = node
    return out


def _is_array(x) -> bool:
    return isinstance(x, (jax.Array, jax.ShapeDtypeStruct)) or hasattr(x, "aval")


def _spec(x):
    return jax.ShapeDtypeStruct(x.shape, x.dtype) if _is_array(x) else x


@dataclasses.dataclass
class Call:
    """One module method call seen while tracing the forward pass.

    ``args``/``kwargs`` hold ``ShapeDtypeStruct`` for arrays and the values themselves otherwise;
    ``inputs``/``output`` hold the traced values (identity of objects: which call fed which).
    """

    index: int
    path: tuple[str, ...]
    module: nn.Module
    method: str
    args: tuple
    kwargs: dict
    out_spec: Any = None
    inputs: tuple = ()
    output: Any = None
    times_called: int = 1

    @property
    def name(self) -> str:
        return path_str(self.path)

    @property
    def type(self) -> str:
        return type(self.module).__name__


def record_calls(
    model: nn.Module,
    input_shape,
    variables=None,
    train: bool = False,
    keep_values: bool = False,
    **kwargs,
):
    """Trace ``model`` (abstractly) and return ``(calls, variables)``: one :class:`Call` per
    module path, in the order the calls start (parents before children).

    With ``variables=None`` the model is traced through ``init`` and abstract variables are
    returned. ``keep_values`` keeps the traced inputs/outputs (for "whose output feeds whom").
    """
    calls: dict[tuple, Call] = {}
    order = [0]

    def interceptor(next_fun, args, kw, context):
        if context.method_name == "setup":
            return next_fun(*args, **kw)
        mod = context.module
        path = tuple(mod.scope.path) if mod.scope is not None else ()
        call = calls.get(path)
        if call is None:
            call = Call(
                order[0],
                path,
                mod,
                context.method_name,
                jax.tree.map(_spec, args),
                jax.tree.map(_spec, kw),
            )
            calls[path] = call
            order[0] += 1
            first = True
        else:
            call.times_called += 1
            first = False
        out = next_fun(*args, **kw)
        if first:
            call.out_spec = jax.tree.map(_spec, out)
            if keep_values:
                call.inputs, call.output = tuple(args), out
        return out

    x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
    rngs = {"dropout": jax.random.key(0)}
    mutable = ["batch_stats"] if train else False

    def run(v, x):
        with nn.intercept_methods(interceptor):
            if v is None:
                return model.init(_rngs(), x, train=train, **kwargs)
            return model.apply(v, x, train=train, rngs=rngs, mutable=mutable, **kwargs)

    out = jax.eval_shape(run, variables, x)
    if variables is None:
        variables = out
    return sorted(calls.values(), key=lambda c: c.index), variables
