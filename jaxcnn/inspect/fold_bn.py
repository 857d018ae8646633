"""BatchNorm folding: merge every conv -> BatchNorm pair of a model into the convolution.

At inference BatchNorm is an affine map per channel, ``y = s * (z - mean) + beta`` with
``s = gamma / sqrt(var + eps)``; after a convolution ``z = W * x + b`` it folds into the
convolution: ``W' = W * s`` (per output channel) and ``b' = s * (b - mean) + beta``.

Pairs are found from the model itself: it is traced in eval mode under
``flax.linen.intercept_methods``, and a ``BatchNorm`` call whose input *is* the output of the
preceding ``Conv`` / ``ConvTranspose`` / ``Dense`` call (same traced object, nothing in between)
forms a pair. The folded model is the same module run under an interceptor
(:class:`FoldedModel`): folded BatchNorm calls become the identity and a folded convolution that
had no bias adds the folded one (stored as ``bias`` beside its kernel). Its variables are the
original tree with the kernels rescaled, the biases added and the folded BatchNorms' parameters
and statistics removed. It is inference-only: training mode raises.
"""

from __future__ import annotations

import dataclasses
import time
from typing import NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.inspect._common import record_calls, resolve
from jaxcnn.utils import abstract_init, count_params, path_str

__all__ = [
    "ConvBNPair",
    "FoldedModel",
    "FoldReport",
    "find_conv_bn_pairs",
    "fold_batchnorm",
    "time_forward",
    "fold_report",
]


class ConvBNPair(NamedTuple):
    conv_path: tuple  # the linear module call whose output feeds the BatchNorm
    bn_path: tuple
    epsilon: float
    use_scale: bool
    use_bias: bool
    kernel_path: tuple = ()  # where its kernel (and bias) live: conv_path or a child of it
    has_bias: bool = False


def _linear_params(call, variables):
    """Path of the ``kernel`` of a module whose parameters (its own or one child's) are exactly
    one ``kernel`` and at most one ``bias`` beside it, with the kernel's last axis the output's
    channels: a conv / transposed conv / dense in any implementation (flax's, jaxcnn's sub-pixel
    transposed convolution, ...). ``None`` for anything else."""
    from jaxcnn.inspect._common import subtree

    sub = subtree(variables, call.path)
    if set(sub) - {"params"} or "params" not in sub:
        return None
    leaves = jax.tree_util.tree_flatten_with_path(sub["params"])[0]
    names = [tuple(str(getattr(k, "key", k)) for k in kp) for kp, _ in leaves]
    kernels = [(n, leaf) for n, (_, leaf) in zip(names, leaves) if n[-1] == "kernel"]
    if len(kernels) != 1 or len(leaves) > 2:
        return None
    kname, kernel = kernels[0]
    if len(leaves) == 2 and [n for n in names if n != kname][0] != kname[:-1] + ("bias",):
        return None
    out = call.out_spec
    if (
        len(kernel.shape) < 2
        or not isinstance(out, jax.ShapeDtypeStruct)
        or out.shape[-1] != kernel.shape[-1]
    ):
        return None
    if isinstance(call.module, nn.ConvTranspose) and call.module.transpose_kernel:
        return None  # the kernel's last axis is then its input
    return (*call.path, *kname[:-1]), len(leaves) == 2


def find_conv_bn_pairs(model: nn.Module, input_shape, variables=None) -> list[ConvBNPair]:
    """Every BatchNorm fed directly by a conv/dense call, with what folding needs of it."""
    calls, variables = record_calls(model, input_shape, variables, keep_values=True)
    by_output = {}
    for c in calls:  # parents first: an inner call returning the same object wins
        if c.times_called == 1 and isinstance(c.output, jax.Array):
            lin = _linear_params(c, variables)
            if lin is not None:
                by_output[id(c.output)] = (c, lin)
    pairs = []
    for c in calls:
        m = c.module
        if not isinstance(m, nn.BatchNorm) or c.times_called != 1 or not c.inputs:
            continue
        src = by_output.get(id(c.inputs[0]))
        if src is None or src[0].output is not c.inputs[0]:
            continue
        ndim = len(c.args[0].shape)
        axis = m.axis if isinstance(m.axis, int) else (m.axis[0] if len(m.axis) == 1 else None)
        if axis is None or axis % ndim != ndim - 1:
            continue  # folding scales the kernel's output axis: the feature axis must be last
        (conv, (kpath, has_bias)) = src
        pairs.append(
            ConvBNPair(conv.path, c.path, m.epsilon, m.use_scale, m.use_bias, kpath, has_bias)
        )
    return pairs


def _get(tree, path):
    for p in path:
        tree = tree[p]
    return tree


def _set(tree: dict, path, value):
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def _delete(tree: dict, path):
    """Remove ``path`` and the dicts it leaves empty."""
    if path[0] not in tree:
        return
    if len(path) == 1:
        del tree[path[0]]
        return
    _delete(tree[path[0]], path[1:])
    if not tree[path[0]]:
        del tree[path[0]]


def _to_dict(tree):
    return {k: _to_dict(v) for k, v in tree.items()} if hasattr(tree, "items") else tree


class FoldedModel(nn.Module):
    """``model`` with the BatchNorms at ``bn_paths`` replaced by the identity and the folded
    bias added after the convolutions at ``conv_paths`` that have none of their own.

    Shares its scope with ``model``: the variables have the same tree (no extra nesting).
    """

    model: nn.Module
    conv_paths: tuple = ()  # linear calls that get the folded bias added (they had none)
    bn_paths: tuple = ()

    def setup(self):
        nn.share_scope(self, self.model)

    def __call__(self, *args, **kwargs):
        with nn.intercept_methods(_folding_interceptor(self.conv_paths, self.bn_paths)):
            return self.model(*args, **kwargs)


def _folding_interceptor(conv_paths, bn_paths):
    # a plain function: a Module method used as interceptor would intercept itself
    def interceptor(next_fun, args, kwargs, context):
        mod = context.module
        if context.method_name != "__call__" or mod.scope is None:
            return next_fun(*args, **kwargs)
        path = tuple(mod.scope.path)
        if path in bn_paths:
            use_ra = nn.merge_param(
                "use_running_average", mod.use_running_average, kwargs.get("use_running_average")
            )
            if not use_ra:
                raise ValueError(
                    f"the BatchNorm-folded model is for inference only "
                    f"({path_str(path)} was asked for batch statistics: "
                    f"call it with train=False)"
                )
            return args[0]
        out = next_fun(*args, **kwargs)
        if path in conv_paths:
            out = out + mod.get_variable("params", "bias").astype(out.dtype)
        return out

    return interceptor


def fold_batchnorm(
    model, variables=None, input_shape: Sequence[int] | None = None, **create_kwargs
) -> tuple[FoldedModel, dict]:
    """Fold every conv -> BatchNorm pair of ``model`` (a name or a module) into the conv.

    Returns ``(folded_model, folded_variables)``; ``folded_model.apply(folded_variables, x)``
    equals ``model.apply(variables, x, train=False)`` up to float rounding.
    ``variables`` default to a fresh ``model.init``.
    """
    module, shape, _ = resolve(model, input_shape, **create_kwargs)
    if variables is None:
        from jaxcnn.inspect._common import init_variables

        variables = init_variables(module, shape)
    pairs = find_conv_bn_pairs(module, shape, variables)
    new = _to_dict(jax.tree.map(lambda x: x, dict(variables)))
    for pair in pairs:
        conv_p = _get(new["params"], pair.kernel_path)
        kernel = np.asarray(conv_p["kernel"], np.float64)
        bias = np.asarray(conv_p["bias"], np.float64) if "bias" in conv_p else 0.0
        stats = _get(new["batch_stats"], pair.bn_path)
        bn_p = _get(new["params"], pair.bn_path) if (pair.use_scale or pair.use_bias) else {}
        mean = np.asarray(stats["mean"], np.float64)
        var = np.asarray(stats["var"], np.float64)
        gamma = np.asarray(bn_p["scale"], np.float64) if pair.use_scale else 1.0
        beta = np.asarray(bn_p["bias"], np.float64) if pair.use_bias else 0.0
        s = gamma / np.sqrt(var + pair.epsilon)
        kdtype = conv_p["kernel"].dtype
        conv_p["kernel"] = jnp.asarray(kernel * s, kdtype)
        new_bias = jnp.asarray((bias - mean) * s + beta, kdtype)
        if pair.has_bias:
            conv_p["bias"] = new_bias
        else:  # added by FoldedModel's interceptor after the call
            _set(new["params"], (*pair.conv_path, "bias"), new_bias)
        _delete(new["params"], pair.bn_path)
        _delete(new["batch_stats"], pair.bn_path)
    if "batch_stats" in new and not new["batch_stats"]:
        del new["batch_stats"]
    return FoldedModel(
        module, tuple(p.conv_path for p in pairs if not p.has_bias), tuple(p.bn_path for p in pairs)
    ), new


def time_forward(model: nn.Module, variables, x, repeats: int = 10) -> float:
    """Median seconds of one jitted eval forward pass (after compiling)."""
    f = jax.jit(lambda v, x: model.apply(v, x, train=False))
    jax.block_until_ready(f(variables, x))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(f(variables, x))
        times.append(time.perf_counter() - t)
    return float(np.median(times))


@dataclasses.dataclass
class FoldReport:
    model_name: str
    pairs: int
    params_before: int
    params_after: int
    stats_before: int
    stats_after: int
    seconds_before: float | None
    seconds_after: float | None
    max_abs_diff: float
    max_abs_output: float

    def __str__(self) -> str:
        t = ""
        if self.seconds_before is not None and self.seconds_after is not None:
            t = (
                f"\n  forward (jit, eval): {self.seconds_before * 1e3:.2f} ms -> "
                f"{self.seconds_after * 1e3:.2f} ms"
            )
        return (
            f"{self.model_name}: folded {self.pairs} conv->BatchNorm pairs\n"
            f"  parameters: {self.params_before:,} -> {self.params_after:,}; BatchNorm "
            f"statistics: {self.stats_before:,} -> {self.stats_after:,}{t}\n"
            f"  max |folded - original| = {self.max_abs_diff:.2e} "
            f"(outputs up to {self.max_abs_output:.2e})"
        )


def fold_report(
    model,
    input_shape: Sequence[int] | None = None,
    variables=None,
    timing: bool = True,
    repeats: int = 10,
    **create_kwargs,
) -> FoldReport:
    """Fold ``model``'s BatchNorms and report parameters, timing and the output difference.

    ``variables`` default to random ones with random BatchNorm statistics (so that folding is
    not the identity)."""
    from jaxcnn.inspect._common import random_variables

    module, shape, name = resolve(model, input_shape, **create_kwargs)
    if variables is None:
        variables = random_variables(abstract_init(module, shape), seed=0)
    folded, fvars = fold_batchnorm(module, variables, shape)
    x = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)
    y0 = jax.jit(lambda v, x: module.apply(v, x, train=False))(variables, x)
    y1 = jax.jit(lambda v, x: folded.apply(v, x, train=False))(fvars, x)
    diff = max(
        float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(y0), jax.tree.leaves(y1))
    )
    big = max(float(jnp.max(jnp.abs(a))) for a in jax.tree.leaves(y0))
    tb = time_forward(module, variables, x, repeats) if timing else None
    ta = time_forward(folded, fvars, x, repeats) if timing else None
    stats = lambda v: count_params({k: t for k, t in v.items() if k != "params"})  # noqa: E731
    return FoldReport(
        name or type(module).__name__,
        len(folded.bn_paths),
        count_params(variables["params"]),
        count_params(fvars["params"]),
        stats(variables),
        stats(fvars),
        tb,
        ta,
        diff,
        big,
    )
