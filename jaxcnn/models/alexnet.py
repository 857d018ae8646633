"""AlexNet (Krizhevsky, Sutskever, Hinton, 2012) in torchvision's form.

torchvision's AlexNet is the "one weird trick" single-GPU variant (Krizhevsky, 2014): 64, 192,
384, 256, 256 filters, no local response normalisation, no grouped convolutions. Layout:

    conv1 11x11/4 pad 2 (64) -> ReLU -> maxpool 3/2
    conv2 5x5 pad 2 (192)    -> ReLU -> maxpool 3/2
    conv3 3x3 pad 1 (384)    -> ReLU
    conv4 3x3 pad 1 (256)    -> ReLU
    conv5 3x3 pad 1 (256)    -> ReLU -> maxpool 3/2
    adaptive average pool to 6x6 -> flatten (9216)
    dropout 0.5 -> fc1 (4096) -> ReLU -> dropout 0.5 -> fc2 (4096) -> ReLU -> head

61,100,840 parameters with 1000 classes. The smallest input is 63x63 (the stride-4 conv and the
three 3x3/2 pools: 63 -> 15 -> 7 -> 3 -> 1).

``features_only=True`` returns the ReLU outputs *before* each max pool (timm's convention for
VGG): ``conv1`` (64 channels, reduction 4), ``conv2`` (192, 8), ``conv5`` (256, 16).

Deviations: flattening is NHWC (height, width, channel) where PyTorch flattens (channel, height,
width), so converting torchvision's ``classifier.1.weight`` (4096, 9216) means
``w.reshape(4096, 256, 6, 6).transpose(2, 3, 1, 0).reshape(9216, 4096)``. Initialisation is
Flax's default (LeCun normal, zero bias) instead of PyTorch's default uniform.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.layers import adaptive_avg_pool, check_image, conv2d, max_pool
from jaxcnn.models import register_model

ALEXNET_FEATURES = (
    {"name": "conv1", "channels": 64, "reduction": 4},
    {"name": "conv2", "channels": 192, "reduction": 8},
    {"name": "conv5", "channels": 256, "reduction": 16},
)
ALEXNET_MIN_SIZE = 63


class AlexNet(nn.Module):
    """AlexNet as in torchvision (see the module docstring).

    Attributes:
      num_classes: outputs of ``head``.
      dropout: dropout rate before ``fc1`` and ``fc2`` (torchvision: 0.5).
      features_only: return ``[conv1, conv2, conv5]`` feature maps (before each max pool).
    """

    num_classes: int = 1000
    dropout: float = 0.5
    in_channels: int = 3
    features_only: bool = False
    dtype: Any = None
    param_dtype: Any = jnp.float32
    conv_impl: str = "fast"  # "xla": plain lax convolutions (jaxcnn.layers.fast_conv)

    @nn.compact
    def __call__(self, x, train: bool = False):
        check_image(x, model="alexnet", channels=self.in_channels, min_size=ALEXNET_MIN_SIZE)
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)

        def conv(x, features, k, stride, pad, name):
            return nn.relu(conv2d(features, k, stride, pad, name=name, **common)(x))

        x = conv(x, 64, 11, 4, 2, "conv1")
        f1 = x
        x = max_pool(x, 3, 2)
        x = conv(x, 192, 5, 1, 2, "conv2")
        f2 = x
        x = max_pool(x, 3, 2)
        x = conv(x, 384, 3, 1, 1, "conv3")
        x = conv(x, 256, 3, 1, 1, "conv4")
        x = conv(x, 256, 3, 1, 1, "conv5")
        if self.features_only:
            return [f1, f2, x]
        x = max_pool(x, 3, 2)
        x = adaptive_avg_pool(x, 6)
        x = x.reshape((x.shape[0], -1))
        x = nn.Dropout(self.dropout)(x, deterministic=not train)
        x = nn.relu(nn.Dense(4096, name="fc1", **common)(x))
        x = nn.Dropout(self.dropout)(x, deterministic=not train)
        x = nn.relu(nn.Dense(4096, name="fc2", **common)(x))
        return nn.Dense(self.num_classes, name="head", **common)(x)


@register_model(
    params=61_100_840,
    input_size=(224, 224, 3),
    paper="Krizhevsky, Sutskever, Hinton. ImageNet classification with deep "
    "convolutional neural networks. NeurIPS 2012 (torchvision follows "
    "Krizhevsky, One weird trick for parallelizing CNNs, 2014)",
    reference="torchvision 0.29",
    feature_info=ALEXNET_FEATURES,
    min_size=ALEXNET_MIN_SIZE,
    test_size=ALEXNET_MIN_SIZE,
    slow=True,
)
def alexnet(**kwargs) -> AlexNet:
    """AlexNet, torchvision form (61.1M parameters, 58.6M of them in the classifier)."""
    return AlexNet(**kwargs)
