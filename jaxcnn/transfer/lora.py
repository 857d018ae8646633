"""LoRA (Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language Models") for the
convolution and dense layers of any model, as a parameter transformation.

For each chosen ``kernel`` (Dense ``(in, out)``, conv ``(kh, kw, in/groups, out)``) two leaves
are added beside it: ``lora_a`` ``(fan_in, r)`` (random, He-uniform-like) and ``lora_b``
``(r, out)`` (zeros), where ``fan_in = prod(kernel.shape[:-1])``. The effective kernel is
``kernel + (alpha / r) * (lora_a @ lora_b).reshape(kernel.shape)``: for a conv this is the
low-rank update of the kernel viewed as the ``(kh*kw*in, out)`` matrix that the convolution
multiplies its patches by. :meth:`LoRA.wrap` returns an ``apply_fn`` that merges on the fly
(the model is unchanged), :meth:`LoRA.merge` folds the updates into plain params for inference,
and :meth:`LoRA.rules` labels the LoRA leaves trainable and the base weights frozen.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import traverse_util

from jaxcnn.transfer.labels import FROZEN, match

__all__ = ["LoRA", "LoRAApply"]

LORA_LEAVES = ("lora_a", "lora_b")


@dataclasses.dataclass(frozen=True)
class LoRA:
    """Rank-``rank`` updates on the kernels whose path matches a ``targets`` pattern (and no
    ``exclude`` pattern). ``alpha`` defaults to ``rank`` (scale 1)."""

    targets: tuple[str, ...] = (".*",)
    rank: int = 4
    alpha: float | None = None
    exclude: tuple[str, ...] = ("head",)

    def __post_init__(self):
        if isinstance(self.targets, str):
            object.__setattr__(self, "targets", (self.targets,))
        if isinstance(self.exclude, str):
            object.__setattr__(self, "exclude", (self.exclude,))
        object.__setattr__(self, "targets", tuple(self.targets))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")

    @property
    def scale(self) -> float:
        return float(self.alpha if self.alpha is not None else self.rank) / self.rank

    def chosen(self, params) -> list[str]:
        """Paths of the kernels that get LoRA leaves."""
        flat = traverse_util.flatten_dict(dict(params), sep="/")
        return [
            p
            for p, x in flat.items()
            if p.rsplit("/", 1)[-1] == "kernel"
            and x.ndim >= 2
            and any(match(t, p) for t in self.targets)
            and not any(match(e, p) for e in self.exclude)
        ]

    def init(self, rng, params) -> dict:
        """``params`` plus ``lora_a``/``lora_b`` beside every chosen kernel (base leaves are the
        same arrays). Raises if nothing is chosen or the params already have LoRA leaves."""
        flat = traverse_util.flatten_dict(dict(params), sep="/")
        if any(p.rsplit("/", 1)[-1] in LORA_LEAVES for p in flat):
            raise ValueError("params already contain LoRA leaves; merge them first")
        chosen = self.chosen(params)
        if not chosen:
            raise ValueError(
                f"no kernel matches LoRA targets {list(self.targets)} "
                f"(excluding {list(self.exclude)})"
            )
        out = dict(flat)
        for i, p in enumerate(chosen):
            w = flat[p]
            fan_in, fan_out = math.prod(w.shape[:-1]), w.shape[-1]
            bound = 1.0 / math.sqrt(fan_in)
            base = p.rsplit("/", 1)[0]
            out[f"{base}/lora_a"] = jax.random.uniform(
                jax.random.fold_in(rng, i), (fan_in, self.rank), w.dtype, -bound, bound
            )
            out[f"{base}/lora_b"] = jnp.zeros((self.rank, fan_out), w.dtype)
        return traverse_util.unflatten_dict(out, sep="/")

    def merge(self, params) -> dict:
        """Plain params for ``model.apply``: every kernel with LoRA leaves becomes
        ``kernel + scale * (a @ b)`` and the LoRA leaves are dropped. Differentiable."""
        flat = traverse_util.flatten_dict(dict(params), sep="/")
        out = {}
        for p, x in flat.items():
            module, leaf = p.rsplit("/", 1) if "/" in p else ("", p)
            if leaf in LORA_LEAVES:
                continue
            a = flat.get(f"{module}/lora_a") if leaf == "kernel" else None
            if a is not None:
                b = flat[f"{module}/lora_b"]
                delta = (a.astype(jnp.float32) @ b.astype(jnp.float32)) * self.scale
                x = (x.astype(jnp.float32) + delta.reshape(x.shape)).astype(x.dtype)
            out[p] = x
        return traverse_util.unflatten_dict(out, sep="/")

    def wrap(self, apply_fn: Callable) -> "LoRAApply":
        """``apply_fn`` taking params with LoRA leaves (merged before every call)."""
        return LoRAApply(apply_fn, self)

    def rules(self, train: Sequence[str] = ("head",)) -> list[tuple[str, str | None]]:
        """Label rules: LoRA leaves ``"lora"``, ``train`` patterns ``"head"``-like labels
        (trained fully), everything else frozen."""
        rules: list[tuple[str, str | None]] = [(".*/lora_[ab]", "lora")]
        return rules + [(t, "train") for t in train] + [(".*", FROZEN)]

    def count(self, params) -> int:
        """Number of LoRA parameters in ``params``."""
        flat = traverse_util.flatten_dict(dict(params), sep="/")
        return int(
            sum(math.prod(x.shape) for p, x in flat.items() if p.rsplit("/", 1)[-1] in LORA_LEAVES)
        )


@dataclasses.dataclass(frozen=True)
class LoRAApply:
    """``apply_fn`` wrapper that merges the LoRA leaves into the kernels before each call."""

    apply_fn: Callable
    lora: LoRA

    def __call__(self, variables, *args, **kwargs):
        variables = dict(variables)
        variables["params"] = self.lora.merge(variables["params"])
        return self.apply_fn(variables, *args, **kwargs)
