"""Inception v3 (Szegedy et al., 2016) in torchvision's form.

Every convolution is ``conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU`` (``BasicConv``). The
stem (``conv2d_1a_3x3`` .. ``conv2d_4a_3x3``, two 3x3/2 max pools) takes 299x299 to 35x35;
then ``mixed_5b..5d`` (InceptionA, 35x35), ``mixed_6a`` (InceptionB, reduction to 17x17),
``mixed_6b..6e`` (InceptionC, factorised 1x7/7x1 convolutions), ``mixed_7a`` (InceptionD, to
8x8), ``mixed_7b, 7c`` (InceptionE, 2048 channels), global average pool, dropout 0.5, ``head``.
Module and branch names are torchvision's, lower-cased (``Mixed_5b.branch5x5_1`` ->
``mixed_5b/branch5x5_1``; ``AuxLogits`` -> ``aux``; ``fc`` -> ``head``).

27,161,264 parameters with the auxiliary classifier (on by default, as in torchvision),
23,834,568 without (``aux_logits=False``). The auxiliary head ``aux`` sits after mixed_6e:
avg pool 5x5/3 -> 1x1 conv 128 -> 5x5 conv 768 -> global average pool -> ``head``.

Auxiliary classifier: ``__call__`` always returns the main logits. With ``aux_logits=True`` the
head is built at init (so its parameters exist even when ``init`` runs with ``train=False``) and,
in training mode, it sows its logits into the ``aux_logits`` collection from its own scope, as
``aux_logits/aux/logits`` (a 1-tuple, Flax ``sow``; GoogLeNet does the same). A train step
applies with ``mutable=["batch_stats", "aux_logits"]`` and adds ``0.4 * CE(aux)`` for every
leaf of that collection (``model_info("inception_v3").aux_weight``). In eval mode it
does not run.

Input size: the trunk needs 75x75 (75 -> 37 -> 35 -> 17 -> 15 -> 7 -> 3 -> 1), but the auxiliary
head's 5x5/3 pool and 5x5 conv need the 17x17 map of a 299x299 input, so with ``aux_logits=True``
init and training need at least 299x299 (torchvision fails the same way below 299). Evaluation,
``features_only`` and ``aux_logits=False`` accept 75x75 and up.

``features_only=True`` returns ``conv2d_2b_3x3`` (64, reduction 2), ``conv2d_4a_3x3`` (192, 4),
``mixed_5d`` (288, 8), ``mixed_6e`` (768, 16), ``mixed_7c`` (2048, 32), as timm does.
``transform_input`` is left out; initialisation is torchvision's truncated normal (std 0.1,
0.01 for the aux 5x5 conv, 0.001 for the aux head).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.layers import ConvBNAct, avg_pool, check_image, global_avg_pool, max_pool
from jaxcnn.models import register_model

INCEPTION_V3_FEATURES: tuple[dict[str, Any], ...] = (
    {"name": "conv2d_2b_3x3", "channels": 64, "reduction": 2},
    {"name": "conv2d_4a_3x3", "channels": 192, "reduction": 4},
    {"name": "mixed_5d", "channels": 288, "reduction": 8},
    {"name": "mixed_6e", "channels": 768, "reduction": 16},
    {"name": "mixed_7c", "channels": 2048, "reduction": 32},
)
MIN_SIZE, MIN_SIZE_AUX = 75, 299


class BasicConv(ConvBNAct):
    """torchvision's ``BasicConv2d``: conv (no bias) -> BatchNorm(eps 1e-3) -> ReLU; the
    padding defaults to 0 (``VALID``) as in PyTorch."""

    padding: Any = 0
    bn_eps: float = 1e-3
    kernel_init: Any = nn.initializers.truncated_normal(0.1)


def _pool_branch(x):
    return avg_pool(x, 3, 1, padding=1)  # count_include_pad=True, as F.avg_pool2d


class InceptionA(nn.Module):
    """35x35: 1x1 | 1x1 -> 5x5 | 1x1 -> 3x3 -> 3x3 | avgpool -> 1x1 (``pool_features``)."""

    pool_features: int
    conv: Any = BasicConv

    @nn.compact
    def __call__(self, x, train: bool = False):
        c = lambda f, k, p, name: self.conv(f, k, padding=p, name=name)  # noqa: E731
        b1 = c(64, 1, 0, "branch1x1")(x, train)
        b5 = c(48, 1, 0, "branch5x5_1")(x, train)
        b5 = c(64, 5, 2, "branch5x5_2")(b5, train)
        b3 = c(64, 1, 0, "branch3x3dbl_1")(x, train)
        b3 = c(96, 3, 1, "branch3x3dbl_2")(b3, train)
        b3 = c(96, 3, 1, "branch3x3dbl_3")(b3, train)
        bp = c(self.pool_features, 1, 0, "branch_pool")(_pool_branch(x), train)
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    """35x35 -> 17x17: 3x3/2 | 1x1 -> 3x3 -> 3x3/2 | maxpool 3x3/2."""

    conv: Any = BasicConv

    @nn.compact
    def __call__(self, x, train: bool = False):
        b3 = self.conv(384, 3, 2, name="branch3x3")(x, train)
        bd = self.conv(64, 1, name="branch3x3dbl_1")(x, train)
        bd = self.conv(96, 3, padding=1, name="branch3x3dbl_2")(bd, train)
        bd = self.conv(96, 3, 2, name="branch3x3dbl_3")(bd, train)
        return jnp.concatenate([b3, bd, max_pool(x, 3, 2)], axis=-1)


class InceptionC(nn.Module):
    """17x17 with factorised 7x7: 1x1 | 1x1 -> 1x7 -> 7x1 | 1x1 -> (7x1 -> 1x7) x 2 |
    avgpool -> 1x1."""

    channels_7x7: int
    conv: Any = BasicConv

    @nn.compact
    def __call__(self, x, train: bool = False):
        c7 = self.channels_7x7
        row = lambda f, name: self.conv(f, (1, 7), padding=(0, 3), name=name)  # noqa: E731
        col = lambda f, name: self.conv(f, (7, 1), padding=(3, 0), name=name)  # noqa: E731
        b1 = self.conv(192, 1, name="branch1x1")(x, train)
        b7 = self.conv(c7, 1, name="branch7x7_1")(x, train)
        b7 = row(c7, "branch7x7_2")(b7, train)
        b7 = col(192, "branch7x7_3")(b7, train)
        bd = self.conv(c7, 1, name="branch7x7dbl_1")(x, train)
        bd = col(c7, "branch7x7dbl_2")(bd, train)
        bd = row(c7, "branch7x7dbl_3")(bd, train)
        bd = col(c7, "branch7x7dbl_4")(bd, train)
        bd = row(192, "branch7x7dbl_5")(bd, train)
        bp = self.conv(192, 1, name="branch_pool")(_pool_branch(x), train)
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    """17x17 -> 8x8: 1x1 -> 3x3/2 | 1x1 -> 1x7 -> 7x1 -> 3x3/2 | maxpool 3x3/2."""

    conv: Any = BasicConv

    @nn.compact
    def __call__(self, x, train: bool = False):
        b3 = self.conv(192, 1, name="branch3x3_1")(x, train)
        b3 = self.conv(320, 3, 2, name="branch3x3_2")(b3, train)
        b7 = self.conv(192, 1, name="branch7x7x3_1")(x, train)
        b7 = self.conv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7, train)
        b7 = self.conv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7, train)
        b7 = self.conv(192, 3, 2, name="branch7x7x3_4")(b7, train)
        return jnp.concatenate([b3, b7, max_pool(x, 3, 2)], axis=-1)


class InceptionE(nn.Module):
    """8x8, expanded: 1x1 | 1x1 -> (1x3 | 3x1) | 1x1 -> 3x3 -> (1x3 | 3x1) | avgpool -> 1x1."""

    conv: Any = BasicConv

    @nn.compact
    def __call__(self, x, train: bool = False):
        def split(y, prefix):  # parallel 1x3 and 3x1 convolutions, concatenated
            a = self.conv(384, (1, 3), padding=(0, 1), name=f"{prefix}a")(y, train)
            b = self.conv(384, (3, 1), padding=(1, 0), name=f"{prefix}b")(y, train)
            return jnp.concatenate([a, b], axis=-1)

        b1 = self.conv(320, 1, name="branch1x1")(x, train)
        b3 = split(self.conv(384, 1, name="branch3x3_1")(x, train), "branch3x3_2")
        bd = self.conv(448, 1, name="branch3x3dbl_1")(x, train)
        bd = self.conv(384, 3, padding=1, name="branch3x3dbl_2")(bd, train)
        bd = split(bd, "branch3x3dbl_3")
        bp = self.conv(192, 1, name="branch_pool")(_pool_branch(x), train)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionAux(nn.Module):
    """Auxiliary classifier on the 17x17 map: avgpool 5x5/3 -> 1x1 (128) -> 5x5 (768) ->
    global average pool -> ``head``."""

    num_classes: int
    conv: Any = BasicConv
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = avg_pool(x, 5, 3)
        x = self.conv(128, 1, name="conv0")(x, train)
        x = self.conv(768, 5, kernel_init=nn.initializers.truncated_normal(0.01), name="conv1")(
            x, train
        )
        x = global_avg_pool(x)
        x = nn.Dense(
            self.num_classes,
            kernel_init=nn.initializers.truncated_normal(0.001),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="head",
        )(x)
        if train and not self.is_initializing():
            self.sow("aux_logits", "logits", x)
        return x


class InceptionV3(nn.Module):
    """Inception v3, torchvision form; see the module docstring.

    Attributes:
      aux_logits: build the auxiliary classifier ``aux`` (sown in training).
      dropout: before ``head`` (torchvision: 0.5).
    """

    num_classes: int = 1000
    aux_logits: bool = True
    dropout: float = 0.5
    in_channels: int = 3
    features_only: bool = False
    dtype: Any = None
    param_dtype: Any = jnp.float32
    conv_impl: str = "fast"  # "xla": plain lax convolutions (jaxcnn.layers.fast_conv)

    @nn.compact
    def __call__(self, x, train: bool = False):
        run_aux = self.aux_logits and not self.features_only and (train or self.is_initializing())
        check_image(x, model="inception_v3", channels=self.in_channels)
        need = MIN_SIZE_AUX if run_aux else MIN_SIZE
        if min(x.shape[1:3]) < need:
            raise ValueError(
                f"inception_v3: input images must be at least {need}x{need} pixels, got "
                f"{x.shape[1]}x{x.shape[2]}"
                + (
                    f" (with aux_logits=True, init and training need {MIN_SIZE_AUX}x"
                    f"{MIN_SIZE_AUX} for the auxiliary head's 5x5/3 pool and 5x5 conv; "
                    f"aux_logits=False accepts {MIN_SIZE}x{MIN_SIZE} and up)"
                    if run_aux
                    else ""
                )
            )
        conv = functools.partial(BasicConv, dtype=self.dtype, param_dtype=self.param_dtype)
        feats = {}
        x = conv(32, 3, 2, name="conv2d_1a_3x3")(x, train)
        x = conv(32, 3, name="conv2d_2a_3x3")(x, train)
        x = feats["conv2d_2b_3x3"] = conv(64, 3, padding=1, name="conv2d_2b_3x3")(x, train)
        x = max_pool(x, 3, 2)
        x = conv(80, 1, name="conv2d_3b_1x1")(x, train)
        x = feats["conv2d_4a_3x3"] = conv(192, 3, name="conv2d_4a_3x3")(x, train)
        x = max_pool(x, 3, 2)
        x = InceptionA(32, name="mixed_5b", conv=conv)(x, train)
        x = InceptionA(64, name="mixed_5c", conv=conv)(x, train)
        x = feats["mixed_5d"] = InceptionA(64, name="mixed_5d", conv=conv)(x, train)
        x = InceptionB(name="mixed_6a", conv=conv)(x, train)
        x = InceptionC(128, name="mixed_6b", conv=conv)(x, train)
        x = InceptionC(160, name="mixed_6c", conv=conv)(x, train)
        x = InceptionC(160, name="mixed_6d", conv=conv)(x, train)
        x = feats["mixed_6e"] = InceptionC(192, name="mixed_6e", conv=conv)(x, train)
        if run_aux:
            InceptionAux(
                self.num_classes,
                conv=conv,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name="aux",
            )(x, train)
        x = InceptionD(name="mixed_7a", conv=conv)(x, train)
        x = InceptionE(name="mixed_7b", conv=conv)(x, train)
        x = feats["mixed_7c"] = InceptionE(name="mixed_7c", conv=conv)(x, train)
        if self.features_only:
            return [feats[f["name"]] for f in INCEPTION_V3_FEATURES]
        x = global_avg_pool(x)
        x = nn.Dropout(self.dropout)(x, deterministic=not train)
        return nn.Dense(
            self.num_classes,
            kernel_init=nn.initializers.truncated_normal(0.1),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="head",
        )(x)


@register_model(
    params=27_161_264,
    input_size=(299, 299, 3),
    paper="Szegedy, Vanhoucke, Ioffe, Shlens, Wojna. Rethinking the Inception "
    "architecture for computer vision. CVPR 2016",
    reference="torchvision 0.29",
    feature_info=INCEPTION_V3_FEATURES,
    min_size=MIN_SIZE_AUX,
    params_without_aux=23_834_568,
    aux_weight=0.4,
    min_size_without_aux=MIN_SIZE,
    slow=True,
)
def inception_v3(**kwargs) -> InceptionV3:
    """Inception v3, torchvision form, auxiliary classifier on (``aux_logits=False``: off)."""
    return InceptionV3(**kwargs)
