"""Small reusable blocks: squeeze-and-excitation, drop path (stochastic depth), MLP."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["SqueezeExcite", "DropPath", "Mlp", "drop_path_schedule", "make_divisible"]


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round channels to a multiple of ``divisor`` (never below 90% of ``v``), as MobileNets do."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def drop_path_schedule(
    rate: float, depths: Sequence[int], *, endpoint: bool = False
) -> tuple[tuple[float, ...], ...]:
    """Per-stage, per-block stochastic-depth rates, linear in the block index ``i`` over all
    ``total = sum(depths)`` blocks; one tuple per stage. The first block gets 0.

    - ``endpoint=False``: ``rate * i / total`` (the last block below ``rate``), as torchvision's
      EfficientNet and MobileNets compute it;
    - ``endpoint=True``: ``rate * i / (total - 1)`` (the last block at ``rate``), as
      torchvision's ConvNeXt, Swin and ViT (and timm) compute it.

    >>> drop_path_schedule(0.5, (2, 3), endpoint=True)
    ((0.0, 0.125), (0.25, 0.375, 0.5))
    """
    total = sum(depths)
    denom = max(total - 1, 1) if endpoint else total
    out, i = [], 0
    for d in depths:
        out.append(tuple(rate * (i + j) / denom for j in range(d)))
        i += d
    return tuple(out)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al., 2018): global pool -> 1x1 reduce -> act -> 1x1 expand
    -> gate, multiplied onto the input. Submodules ``fc1`` and ``fc2`` are 1x1 convs with bias,
    like torchvision's ``SqueezeExcitation``."""

    rd_channels: int
    act: Callable = nn.relu
    gate: Callable = nn.sigmoid
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        s = jnp.mean(x, axis=(1, 2), keepdims=True)
        s = nn.Conv(
            self.rd_channels, (1, 1), dtype=self.dtype, param_dtype=self.param_dtype, name="fc1"
        )(s)
        s = self.act(s)
        s = nn.Conv(c, (1, 1), dtype=self.dtype, param_dtype=self.param_dtype, name="fc2")(s)
        return x * self.gate(s)


class DropPath(nn.Module):
    """Stochastic depth per sample: drop the whole residual branch with probability ``rate``
    and scale survivors by ``1/(1-rate)``. Draws from the ``dropout`` RNG stream; identity when
    ``deterministic``. ``rate`` may be a traced scalar (a per-block rate scanned over by
    :func:`jaxcnn.models.scan.run_scanned`); then a key is drawn even where it is 0."""

    rate: Any = 0.0

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        if deterministic or (isinstance(self.rate, (int, float)) and self.rate == 0.0):
            return x
        keep = 1.0 - self.rate
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = jax.random.bernoulli(self.make_rng("dropout"), keep, shape)
        if not isinstance(keep, float):  # a traced rate: scale in x's dtype, as a Python float is
            keep = jnp.asarray(keep, x.dtype)
        return jnp.where(mask, x / keep, jnp.zeros_like(x))


class Mlp(nn.Module):
    """Two dense layers with an activation and dropout between (transformer MLP)."""

    hidden_features: int
    out_features: int | None = None
    act: Callable = nn.gelu
    drop: float = 0.0
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        out = self.out_features or x.shape[-1]
        x = nn.Dense(
            self.hidden_features, dtype=self.dtype, param_dtype=self.param_dtype, name="fc1"
        )(x)
        x = self.act(x)
        x = nn.Dropout(self.drop)(x, deterministic=deterministic)
        x = nn.Dense(out, dtype=self.dtype, param_dtype=self.param_dtype, name="fc2")(x)
        x = nn.Dropout(self.drop)(x, deterministic=deterministic)
        return x
