"""GoogLeNet / Inception v1 (Szegedy et al., 2015) in torchvision's form.

torchvision's GoogLeNet differs from the paper in ways its weights depend on, kept here:
every convolution is ``conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU``; there is no local
response normalisation; the "5x5" branch of each Inception module is a 3x3 convolution (a
known torchvision quirk, kept for weight compatibility); max pools use ``ceil_mode=True``.
Layout (224x224 input, side in brackets):

    conv1 7x7/2 (64) [112] -> maxpool 3/2 ceil [56] -> conv2 1x1 (64) -> conv3 3x3 (192)
    -> maxpool [28] -> inception3a, 3b [480] -> maxpool [14] -> inception4a..4e [832]
    -> maxpool 2/2 ceil [7] -> inception5a, 5b [1024] -> global average pool -> dropout 0.2
    -> head

6,624,904 parameters with 1000 classes. With ``aux_logits=True`` two auxiliary classifiers
(``aux1`` after inception4a, ``aux2`` after inception4d: adaptive average pool to 4x4 -> 1x1
conv 128 -> fc 1024 -> ReLU -> dropout 0.7 -> ``head``) bring it to 13,004,888.

Auxiliary classifiers: ``__call__`` always returns the main logits. With ``aux_logits=True`` the
heads are built at init (so their parameters exist even when ``init`` runs with
``train=False``) and, in training mode, each head sows its logits into the ``aux_logits``
collection from its own scope: ``aux_logits/aux1/logits`` and ``aux_logits/aux2/logits``
(Flax ``sow``: each value is a 1-tuple). They cannot be sown at the top level under ``aux1``:
Flax forbids a variable and a submodule of the same name. A train step applies with
``mutable=["batch_stats", "aux_logits"]`` and adds ``0.3 * CE(aux)`` for every leaf of that
collection (``model_info("googlenet").aux_weight``). In eval mode the heads do not run.

The smallest input is 15x15 (15 -> 8 -> 4 -> 2 -> 1 -> 1 through conv1 and the ceil-mode pools).
``features_only=True`` returns ``conv1`` (64, reduction 2), ``conv3`` (192, 4),
``inception3b`` (480, 8), ``inception4e`` (832, 16), ``inception5b`` (1024, 32).

Deviations: the auxiliary fc1 flattens NHWC; converting torchvision's ``aux1.fc1.weight``
(1024, 2048) means ``w.reshape(1024, 128, 4, 4).transpose(2, 3, 1, 0).reshape(2048, 1024)``.
``transform_input`` (re-normalising ImageNet inputs) is left out.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.layers import ConvBNAct, adaptive_avg_pool, check_image, global_avg_pool, max_pool
from jaxcnn.models import register_model

GOOGLENET_FEATURES: tuple[dict[str, Any], ...] = (
    {"name": "conv1", "channels": 64, "reduction": 2},
    {"name": "conv3", "channels": 192, "reduction": 4},
    {"name": "inception3b", "channels": 480, "reduction": 8},
    {"name": "inception4e", "channels": 832, "reduction": 16},
    {"name": "inception5b", "channels": 1024, "reduction": 32},
)
GOOGLENET_MIN_SIZE = 15

# torchvision initialises conv and linear weights with trunc_normal_(std=0.01)
_init = nn.initializers.truncated_normal(0.01)


class BasicConv(ConvBNAct):
    """torchvision's ``BasicConv2d``: conv (no bias) -> BatchNorm(eps 1e-3) -> ReLU."""

    bn_eps: float = 1e-3
    kernel_init: Any = _init


class Inception(nn.Module):
    """Four parallel branches concatenated on channels: 1x1 | 1x1 -> 3x3 | 1x1 -> 3x3 (the
    paper's 5x5) | maxpool 3x3/1 -> 1x1."""

    ch1x1: int
    ch3x3red: int
    ch3x3: int
    ch5x5red: int
    ch5x5: int
    pool_proj: int
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv = functools.partial(BasicConv, dtype=self.dtype, param_dtype=self.param_dtype)
        b1 = conv(self.ch1x1, 1, name="branch1")(x, train)
        b2 = conv(self.ch3x3red, 1, name="branch2_1")(x, train)
        b2 = conv(self.ch3x3, 3, padding=1, name="branch2_2")(b2, train)
        b3 = conv(self.ch5x5red, 1, name="branch3_1")(x, train)
        b3 = conv(self.ch5x5, 3, padding=1, name="branch3_2")(b3, train)
        b4 = max_pool(x, 3, 1, padding=1, ceil_mode=True)
        b4 = conv(self.pool_proj, 1, name="branch4")(b4, train)
        return jnp.concatenate([b1, b2, b3, b4], axis=-1)


class InceptionAux(nn.Module):
    """Auxiliary classifier: adaptive avg pool 4x4 -> 1x1 conv 128 -> fc 1024 -> ReLU ->
    dropout -> ``head``."""

    num_classes: int
    dropout: float = 0.7
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = adaptive_avg_pool(x, 4)
        x = BasicConv(128, 1, name="conv", **common)(x, train)
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(1024, kernel_init=_init, name="fc1", **common)(x))
        x = nn.Dropout(self.dropout)(x, deterministic=not train)
        x = nn.Dense(self.num_classes, kernel_init=_init, name="head", **common)(x)
        if train and not self.is_initializing():
            self.sow("aux_logits", "logits", x)
        return x


# (ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj) per module, from the paper's Table 1
INCEPTION_CFG = {
    "inception3a": (64, 96, 128, 16, 32, 32),
    "inception3b": (128, 128, 192, 32, 96, 64),
    "inception4a": (192, 96, 208, 16, 48, 64),
    "inception4b": (160, 112, 224, 24, 64, 64),
    "inception4c": (128, 128, 256, 24, 64, 64),
    "inception4d": (112, 144, 288, 32, 64, 64),
    "inception4e": (256, 160, 320, 32, 128, 128),
    "inception5a": (256, 160, 320, 32, 128, 128),
    "inception5b": (384, 192, 384, 48, 128, 128),
}
POOL_BEFORE = {"inception4a": 3, "inception5a": 2}  # max pool window (stride 2, ceil mode)


class GoogLeNet(nn.Module):
    """GoogLeNet (Inception v1), torchvision form; see the module docstring.

    Attributes:
      aux_logits: build the two auxiliary classifiers ``aux1``/``aux2`` (sown in training).
      dropout: before ``head`` (torchvision: 0.2). aux_dropout: inside the aux heads (0.7).
    """

    num_classes: int = 1000
    aux_logits: bool = False
    dropout: float = 0.2
    aux_dropout: float = 0.7
    in_channels: int = 3
    features_only: bool = False
    dtype: Any = None
    param_dtype: Any = jnp.float32
    conv_impl: str = "fast"  # "xla": plain lax convolutions (jaxcnn.layers.fast_conv)

    @nn.compact
    def __call__(self, x, train: bool = False):
        check_image(x, model="googlenet", channels=self.in_channels, min_size=GOOGLENET_MIN_SIZE)
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        run_aux = self.aux_logits and not self.features_only and (train or self.is_initializing())
        feats = {}

        x = feats["conv1"] = BasicConv(64, 7, 2, padding=3, name="conv1", **common)(x, train)
        x = max_pool(x, 3, 2, ceil_mode=True)
        x = BasicConv(64, 1, name="conv2", **common)(x, train)
        x = feats["conv3"] = BasicConv(192, 3, padding=1, name="conv3", **common)(x, train)
        x = max_pool(x, 3, 2, ceil_mode=True)
        for name, cfg in INCEPTION_CFG.items():
            if name in POOL_BEFORE:
                x = max_pool(x, POOL_BEFORE[name], 2, ceil_mode=True)
            x = feats[name] = Inception(*cfg, name=name, **common)(x, train)
            if run_aux and name in ("inception4a", "inception4d"):
                aux_name = "aux1" if name == "inception4a" else "aux2"
                InceptionAux(self.num_classes, self.aux_dropout, name=aux_name, **common)(x, train)
        if self.features_only:
            return [feats[f["name"]] for f in GOOGLENET_FEATURES]
        x = global_avg_pool(x)
        x = nn.Dropout(self.dropout)(x, deterministic=not train)
        return nn.Dense(self.num_classes, kernel_init=_init, name="head", **common)(x)


@register_model(
    params=6_624_904,
    input_size=(224, 224, 3),
    paper="Szegedy et al. Going deeper with convolutions. CVPR 2015",
    reference="torchvision 0.29",
    feature_info=GOOGLENET_FEATURES,
    min_size=GOOGLENET_MIN_SIZE,
    params_with_aux=13_004_888,
    aux_weight=0.3,
)
def googlenet(**kwargs) -> GoogLeNet:
    """GoogLeNet, torchvision form; ``aux_logits=True`` adds the two auxiliary heads."""
    return GoogLeNet(**kwargs)
