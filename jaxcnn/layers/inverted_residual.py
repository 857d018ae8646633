"""The inverted residual block shared by MobileNet v2, MobileNet v3 and EfficientNet (MBConv).

1x1 expansion -> k x k depthwise -> optional squeeze-and-excitation -> 1x1 linear projection,
with the input added back when the block keeps the shape (stride 1 and equal channels); the
residual branch passes through stochastic depth (``DropPath``) first, as torchvision's
``MBConv`` does. The activation, the SE squeeze width/activation/gate and the BatchNorm epsilon
and momentum are fields, so one block reproduces all three torchvision families:

- MobileNet v2 (Sandler et al. 2018): ReLU6, no SE, BN eps 1e-5;
- MobileNet v3 (Howard et al. 2019): ReLU or hard-swish, SE with ReLU and hard-sigmoid gate,
  BN eps 1e-3 (torch momentum 0.01, i.e. 0.99 here);
- EfficientNet (Tan & Le 2019): SiLU, SE with SiLU and sigmoid gate, BN eps 1e-5 (B0-B4).

Submodules: ``expand`` (only when ``expanded != in_channels``), ``depthwise``, ``se``,
``project`` (each a ``ConvBNAct`` with ``conv``/``bn``; ``se`` has ``fc1``/``fc2``).
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.layers.blocks import DropPath, SqueezeExcite
from jaxcnn.layers.conv import ConvBNAct

__all__ = ["InvertedResidual"]


class InvertedResidual(nn.Module):
    """Inverted residual / MBConv block (see the module docstring).

    Attributes:
      features: output channels.
      expanded: channels of the depthwise stage (``in_channels * expand_ratio``, rounded by the
        caller as its reference does); no ``expand`` conv when equal to the input channels.
      kernel_size: depthwise kernel (3 or 5), padded symmetrically by ``(k - 1) // 2``.
      stride: depthwise stride (1 or 2).
      act: activation after ``expand`` and ``depthwise``; ``project`` is linear.
      se_channels: squeeze width of the SE module; 0 disables it.
      se_act, se_gate: SE hidden activation and gate.
      drop_path: stochastic-depth rate on the residual branch (ignored without a residual).
    """

    features: int
    expanded: int
    kernel_size: int = 3
    stride: int = 1
    act: Callable = nn.relu6
    se_channels: int = 0
    se_act: Callable = nn.relu
    se_gate: Callable = nn.sigmoid
    drop_path: float = 0.0
    bn_eps: float = 1e-5
    bn_momentum: float = 0.9
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        cin = x.shape[-1]
        common = dict(
            bn_eps=self.bn_eps,
            bn_momentum=self.bn_momentum,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        y = x
        if self.expanded != cin:
            y = ConvBNAct(self.expanded, kernel_size=1, act=self.act, name="expand", **common)(
                y, train
            )
        y = ConvBNAct(
            self.expanded,
            kernel_size=self.kernel_size,
            stride=self.stride,
            groups=self.expanded,
            act=self.act,
            name="depthwise",
            **common,
        )(y, train)
        if self.se_channels:
            y = SqueezeExcite(
                self.se_channels,
                act=self.se_act,
                gate=self.se_gate,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name="se",
            )(y)
        y = ConvBNAct(self.features, kernel_size=1, act=None, name="project", **common)(y, train)
        if self.stride == 1 and cin == self.features:
            y = DropPath(self.drop_path)(y, deterministic=not train)
            y = x + y
        return y
