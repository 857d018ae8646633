"""LeNet-5 (LeCun et al., 1998), in the two forms the lectures show.

- ``lenet5``: the classic network: 32x32 input, tanh, 2x2 average pooling (subsampling),
  C5 a 5x5 convolution to 120 maps of 1x1.
- ``lenet5_modern``: ReLU and max pooling on 28x28 MNIST digits; C1 pads by 2 so the feature
  map sizes (28, 14, 10, 5, 1) match the classic network's.

Both have 61,706 parameters: C1 156, C3 2,416, C5 48,120, F6 10,164, output 850.
(The trainable coefficients of the original subsampling layers and C3's partial connection
table are left out, as in every modern rendition and in the lectures' table.)
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.layers import avg_pool, check_image, conv2d, max_pool
from jaxcnn.models import register_model

LENET_FEATURES = (
    {"name": "s2", "channels": 6, "reduction": 2},
    {"name": "s4", "channels": 16, "reduction": 4},
    {"name": "f6", "channels": 84, "reduction": 32},
)


class LeNet5(nn.Module):
    """LeNet-5. ``features_only=True`` returns ``[s2, s4, f6]`` (after each subsampling and the
    84-unit F6 layer, the "penultimate features")."""

    num_classes: int = 10
    act: Callable = nn.tanh
    pool: str = "avg"  # "avg" (classic subsampling) or "max"
    c1_padding: int = 0  # 2 for 28x28 inputs
    in_channels: int = 1
    features_only: bool = False
    dtype: Any = None
    param_dtype: Any = jnp.float32
    variant: str = "lenet5"
    conv_impl: str = "fast"  # "xla": plain lax convolutions (jaxcnn.layers.fast_conv)

    @nn.compact
    def __call__(self, x, train: bool = False):
        min_side = 32 - 2 * self.c1_padding
        check_image(x, model=self.variant, channels=self.in_channels, min_size=min_side)
        if x.shape[1] != min_side or x.shape[2] != min_side:
            raise ValueError(
                f"{self.variant}: expected {min_side}x{min_side} images "
                f"(C5 sees exactly 5x5 maps), "
                f"got {x.shape[1]}x{x.shape[2]}; resize or pad the input"
            )

        def conv(f, pad, name):
            return conv2d(
                f,
                5,
                padding=pad,
                dtype=self.dtype,  # noqa: E731
                param_dtype=self.param_dtype,
                name=name,
            )

        pool = avg_pool if self.pool == "avg" else max_pool
        x = self.act(conv(6, self.c1_padding, "c1")(x))
        s2 = pool(x, 2)
        x = self.act(conv(16, 0, "c3")(s2))
        s4 = pool(x, 2)
        x = self.act(conv(120, 0, "c5")(s4))
        x = x.reshape((x.shape[0], -1))
        f6 = self.act(nn.Dense(84, dtype=self.dtype, param_dtype=self.param_dtype, name="f6")(x))
        if self.features_only:
            return [s2, s4, f6]
        return nn.Dense(
            self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="head"
        )(f6)


_PAPER = (
    "LeCun, Bottou, Bengio, Haffner. Gradient-based learning applied to document "
    "recognition. Proc. IEEE, 1998"
)


@register_model(
    params=61_706,
    input_size=(32, 32, 1),
    num_classes=10,
    paper=_PAPER,
    reference="LeCun et al. 1998 (the lectures' table)",
    feature_info=LENET_FEATURES,
    min_size=32,
)
def lenet5(**kwargs) -> LeNet5:
    """Classic LeNet-5: tanh, average pooling, 32x32 input."""
    return LeNet5(act=nn.tanh, pool="avg", c1_padding=0, variant="lenet5", **kwargs)


@register_model(
    params=61_706,
    input_size=(28, 28, 1),
    num_classes=10,
    paper=_PAPER,
    reference="LeCun et al. 1998 (modern form)",
    feature_info=LENET_FEATURES,
    min_size=28,
    test_size=28,
)
def lenet5_modern(**kwargs) -> LeNet5:
    """Modern LeNet-5: ReLU, max pooling, 28x28 input padded by 2 in C1."""
    return LeNet5(act=nn.relu, pool="max", c1_padding=2, variant="lenet5_modern", **kwargs)
