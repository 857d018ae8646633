"""MobileNet v3 Large and Small (Howard et al. 2019), in torchvision's form.

Inverted residual blocks (``jaxcnn.layers.inverted_residual``) with ReLU or hard-swish, some with
squeeze-and-excitation whose squeeze width is ``make_divisible(expanded // 4, 8)``, ReLU inside
and a hard-sigmoid gate (``relu6(x + 3) / 6``, like ``torch.nn.Hardsigmoid``). Stem: 3x3
stride-2 conv + BN + hard-swish. Tail: 1x1 ``conv_head`` to ``6 * last`` channels + hard-swish,
global average pool, ``pre_logits`` Dense (1280 / 1024) + hard-swish, dropout 0.2, ``head``
Dense. BatchNorm eps 1e-3 (``bn_eps``; timm's weights use 1e-5), torch momentum 0.01 (0.99
here). Channels scale with ``width_mult``
through ``make_divisible(c * width_mult, 8)``. torchvision's ``reduced_tail``/``dilated``
segmentation options are not implemented.

torchvision keeps the blocks in one flat list; here they are grouped into the stages timm uses
(``stage1``.. with ``block0``..), so ``features_only`` returns timm's five maps: Large
``stage1``, ``stage2``, ``stage3``, ``stage5``, ``conv_head`` (16, 24, 40, 112, 960 channels at
reductions 2, 4, 8, 16, 32); Small ``stem``, ``stage1``, ``stage2``, ``stage4``, ``conv_head``
(16, 16, 24, 48, 576). ``drop_path_rate`` (default 0, as in torchvision) adds stochastic depth
on residual branches, growing linearly over blocks.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcnn.layers import ConvBNAct, check_image, make_divisible
from jaxcnn.layers.blocks import drop_path_schedule
from jaxcnn.layers.inverted_residual import InvertedResidual
from jaxcnn.models import register_model

_PAPER = (
    "Howard, Sandler, Chu, Chen, Chen, Tan, Wang, Zhu, Pang, Vasudevan, Le, Adam. "
    "Searching for MobileNetV3. ICCV 2019"
)

_ACTS = {"RE": nn.relu, "HS": jax.nn.hard_swish}

# torchvision's bneck settings, grouped as timm groups them into stages:
# (kernel, expanded channels, out channels, SE, activation, stride) per block
LARGE_STAGES = (
    ((3, 16, 16, False, "RE", 1),),
    ((3, 64, 24, False, "RE", 2), (3, 72, 24, False, "RE", 1)),
    ((5, 72, 40, True, "RE", 2), (5, 120, 40, True, "RE", 1), (5, 120, 40, True, "RE", 1)),
    (
        (3, 240, 80, False, "HS", 2),
        (3, 200, 80, False, "HS", 1),
        (3, 184, 80, False, "HS", 1),
        (3, 184, 80, False, "HS", 1),
    ),
    ((3, 480, 112, True, "HS", 1), (3, 672, 112, True, "HS", 1)),
    ((5, 672, 160, True, "HS", 2), (5, 960, 160, True, "HS", 1), (5, 960, 160, True, "HS", 1)),
)
SMALL_STAGES = (
    ((3, 16, 16, True, "RE", 2),),
    ((3, 72, 24, False, "RE", 2), (3, 88, 24, False, "RE", 1)),
    ((5, 96, 40, True, "HS", 2), (5, 240, 40, True, "HS", 1), (5, 240, 40, True, "HS", 1)),
    ((5, 120, 48, True, "HS", 1), (5, 144, 48, True, "HS", 1)),
    ((5, 288, 96, True, "HS", 2), (5, 576, 96, True, "HS", 1), (5, 576, 96, True, "HS", 1)),
)


def _feature_info(names, channels, reductions=(2, 4, 8, 16, 32)):
    return tuple(
        {"name": n, "channels": c, "reduction": r} for n, c, r in zip(names, channels, reductions)
    )


LARGE_FEATURES = _feature_info(
    ("stage1", "stage2", "stage3", "stage5", "conv_head"), (16, 24, 40, 112, 960)
)
SMALL_FEATURES = _feature_info(
    ("stem", "stage1", "stage2", "stage4", "conv_head"), (16, 16, 24, 48, 576)
)


class MobileNetV3Stage(nn.Module):
    """Inverted residual blocks ``block0``.. configured by ``blocks`` (already width-scaled)."""

    blocks: tuple  # (kernel, expanded, out, se, act, stride) per block
    drop_paths: tuple = ()
    bn_eps: float = 1e-3
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        for i, (k, exp, out, se, act, s) in enumerate(self.blocks):
            x = InvertedResidual(
                out,
                exp,
                k,
                s,
                act=_ACTS[act],
                se_channels=make_divisible(exp // 4, 8) if se else 0,
                se_act=nn.relu,
                se_gate=jax.nn.hard_sigmoid,
                drop_path=self.drop_paths[i] if self.drop_paths else 0.0,
                bn_eps=self.bn_eps,
                bn_momentum=0.99,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=f"block{i}",
            )(x, train)
        return x


class MobileNetV3(nn.Module):
    """MobileNet v3 (torchvision form); ``stages`` is ``LARGE_STAGES`` or ``SMALL_STAGES``."""

    stages: tuple = LARGE_STAGES
    last_channels: int = 1280
    feature_names: tuple = ("stage1", "stage2", "stage3", "stage5", "conv_head")
    num_classes: int = 1000
    width_mult: float = 1.0
    dropout: float = 0.2
    drop_path_rate: float = 0.0
    in_channels: int = 3
    features_only: bool = False
    bn_eps: float = 1e-3  # timm's weights: 1e-5
    dtype: Any = None
    param_dtype: Any = jnp.float32
    variant: str = "mobilenet_v3_large"
    conv_impl: str = "fast"  # "xla": plain lax convolutions (jaxcnn.layers.fast_conv)

    @nn.compact
    def __call__(self, x, train: bool = False):
        check_image(x, model=self.variant, channels=self.in_channels, min_size=1)
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        bn = dict(bn_eps=self.bn_eps, bn_momentum=0.99, **common)
        adjust = lambda c: make_divisible(c * self.width_mult, 8)  # noqa: E731
        feats = {}
        x = ConvBNAct(adjust(16), 3, 2, act=jax.nn.hard_swish, name="stem", **bn)(x, train)
        feats["stem"] = x
        rates = drop_path_schedule(self.drop_path_rate, [len(s) for s in self.stages])
        for i, stage in enumerate(self.stages):
            blocks = tuple((k, adjust(e), adjust(o), se, a, s) for k, e, o, se, a, s in stage)
            x = MobileNetV3Stage(blocks, rates[i], self.bn_eps, name=f"stage{i + 1}", **common)(
                x, train
            )
            feats[f"stage{i + 1}"] = x
        x = ConvBNAct(6 * x.shape[-1], 1, act=jax.nn.hard_swish, name="conv_head", **bn)(x, train)
        feats["conv_head"] = x
        if self.features_only:
            return [feats[n] for n in self.feature_names]
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(adjust(self.last_channels), name="pre_logits", **common)(x)
        x = jax.nn.hard_swish(x)
        x = nn.Dropout(self.dropout)(x, deterministic=not train)
        return nn.Dense(self.num_classes, name="head", **common)(x)


_INFO: dict[str, Any] = dict(
    input_size=(224, 224, 3), paper=_PAPER, reference="torchvision 0.29", min_size=1
)


@register_model(params=5_483_032, feature_info=LARGE_FEATURES, **_INFO)
def mobilenet_v3_large(**kwargs) -> MobileNetV3:
    """MobileNet v3 Large, width 1.0 (torchvision ``mobilenet_v3_large``)."""
    return MobileNetV3(
        stages=LARGE_STAGES,
        last_channels=1280,
        feature_names=tuple(f["name"] for f in LARGE_FEATURES),
        variant="mobilenet_v3_large",
        **kwargs,
    )


@register_model(params=2_542_856, feature_info=SMALL_FEATURES, **_INFO)
def mobilenet_v3_small(**kwargs) -> MobileNetV3:
    """MobileNet v3 Small, width 1.0 (torchvision ``mobilenet_v3_small``)."""
    return MobileNetV3(
        stages=SMALL_STAGES,
        last_channels=1024,
        feature_names=tuple(f["name"] for f in SMALL_FEATURES),
        variant="mobilenet_v3_small",
        **kwargs,
    )
