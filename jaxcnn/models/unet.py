"""U-Net (Ronneberger, Fischer, Brox, 2015): a per-pixel classifier.

Contracting path: ``depth`` levels of two 3x3 convolutions + ReLU followed by 2x2 max pooling,
widths ``base_width * 2**i`` (64, 128, 256, 512 and 1024 at the bottom in the paper).
Expanding path: at each level a 2x2 transposed convolution with stride 2 ("up-convolution")
halves the channels and doubles the size, the matching contracting feature map is concatenated
(skip connection, skip first), and two 3x3 convolutions + ReLU follow. A 1x1 convolution
(``head``) maps the last 64 channels to ``num_classes`` logits per pixel.

Output: logits ``(N, H_out, W_out, num_classes)``.

Options and defaults (``create_model("unet")`` is the paper's network):

- ``in_channels=1``, ``num_classes=2``: the paper's cell images and foreground/background.
- ``padding="same"`` (default): 3x3 convolutions pad by 1, the output has the input's size,
  and height and width must be multiples of ``2**depth`` (16). ``padding="valid"`` is the
  paper's: no padding, each convolution trims 2 pixels, the skip maps are centre-cropped
  before the concatenation, and a 572x572 input gives a 388x388 map; the smallest input is
  ``16 k + 124`` with ``k = 4`` (188 -> 4 at depth 4: :func:`valid_min_size`).
- ``batch_norm=False`` (the paper has none); ``True`` puts BatchNorm after every 3x3 conv and
  drops its bias, as most re-implementations do (e.g. milesial/Pytorch-UNet).
- ``base_width=64``, ``depth=4`` (number of poolings); ``dropout_rate`` at the end of the
  contracting path (the paper's "drop-out layers"; 0 by default, as it leaves no parameters).

Parameter count of the default configuration: 31,030,658 (1 input channel, 2 classes,
same or valid padding alike); with BatchNorm 31,036,546. Per level with widths ``c``:
``9*c_in*c + c + 9*c*c + c`` for a double conv, ``4*2c*c + c`` for an up-convolution,
``64*k + k`` for the head (``tests/test_segmentation.py`` checks the sum).

``features_only=True`` returns the contracting path's outputs ``[enc1, ..., enc5]`` (before
pooling; reductions 1..16).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.layers import ConvBNAct, check_image, conv2d, max_pool
from jaxcnn.models import register_model

__all__ = ["UNet", "DoubleConv", "UpConv2x2", "valid_min_size", "unet_feature_info"]


def valid_min_size(depth: int) -> int:
    """Smallest input side of a valid-padding U-Net of ``depth`` poolings (188 for depth 4).

    Going up, a bottleneck map of side ``m`` becomes ``2m - 4`` per level; the output is at
    least 1 pixel when ``2**d m - 4 (2**d - 1) >= 1``. Going down, each level's input side is
    twice the next one plus the 4 pixels its two convolutions trim.
    """
    m = -(-(4 * (2**depth - 1) + 1) // 2**depth)  # ceil
    side = m + 4
    for _ in range(depth):
        side = 2 * side + 4
    return side


def unet_feature_info(base_width: int = 64, depth: int = 4) -> tuple[dict, ...]:
    return tuple(
        {"name": f"enc{i + 1}", "channels": base_width * 2**i, "reduction": 2**i}
        for i in range(depth + 1)
    )


def center_crop(x, height: int, width: int):
    """Centre crop of NHWC ``x`` to ``height x width`` (the paper's "copy and crop")."""
    top = (x.shape[1] - height) // 2
    left = (x.shape[2] - width) // 2
    return x[:, top : top + height, left : left + width, :]


class DoubleConv(nn.Module):
    """Two 3x3 convolutions, each followed by (BatchNorm and) ReLU: ``conv1``, ``conv2``."""

    features: int
    padding: str = "same"
    batch_norm: bool = False
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        pad = 1 if self.padding == "same" else 0
        for name in ("conv1", "conv2"):
            x = ConvBNAct(
                self.features,
                3,
                padding=pad,
                use_bias=not self.batch_norm,
                norm=self.batch_norm,
                act=nn.relu,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=name,
            )(x, train=train)
        return x


class UpConv2x2(nn.Module):
    """The "up-convolution": a 2x2 transposed convolution with stride 2.

    Same parameters (``conv/kernel`` HWIO ``(2, 2, c_in, c_out)``, ``conv/bias``) and the same
    result as ``ConvTranspose2d(c_out, 2, stride=2)``, computed as one matrix product followed
    by a depth-to-space rearrangement: with stride equal to the kernel size every output pixel
    receives exactly one input pixel, ``y[2h + i, 2w + j] = x[h, w] @ kernel[1 - i, 1 - j]``.
    XLA's CPU transposed convolution (and its gradient) is several times slower than this.
    """

    features: int
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        return _UpConvKernel(self.features, self.dtype, self.param_dtype, name="conv")(x)


class _UpConvKernel(nn.Module):
    features: int
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        cin = x.shape[-1]
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (2, 2, cin, self.features), self.param_dtype
        )
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        n, h, w, _ = x.shape
        y = jnp.einsum("nhwc,ijco->nhiwjo", x, kernel[::-1, ::-1])
        return y.reshape(n, 2 * h, 2 * w, self.features) + bias


class UNet(nn.Module):
    """U-Net. Submodules, in forward order: ``enc1``..``enc{depth+1}`` (the last is the
    bottleneck), then ``up{i}``/``dec{i}`` for ``i = depth..1``, then ``head``."""

    num_classes: int = 2
    in_channels: int = 1
    base_width: int = 64
    depth: int = 4
    padding: str = "same"
    batch_norm: bool = False
    dropout_rate: float = 0.0
    features_only: bool = False
    dtype: Any = None
    param_dtype: Any = jnp.float32
    variant: str = "unet"
    conv_impl: str = "fast"  # "xla": plain lax convolutions (jaxcnn.layers.fast_conv)

    def min_size(self) -> int:
        return 2**self.depth if self.padding == "same" else valid_min_size(self.depth)

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.padding not in ("same", "valid"):
            raise ValueError(
                f"{self.variant}: padding must be 'same' or 'valid', got {self.padding!r}"
            )
        if self.depth < 1 or self.base_width < 1:
            raise ValueError(
                f"{self.variant}: depth and base_width must be >= 1, got "
                f"depth={self.depth}, base_width={self.base_width}"
            )
        check_image(
            x,
            model=self.variant,
            channels=self.in_channels,
            min_size=self.min_size(),
            multiple_of=2**self.depth if self.padding == "same" else None,
        )
        common = dict(
            padding=self.padding,
            batch_norm=self.batch_norm,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        widths = [self.base_width * 2**i for i in range(self.depth + 1)]

        skips = []
        for i, c in enumerate(widths):
            if i > 0:
                x = max_pool(x, 2)
            x = DoubleConv(c, name=f"enc{i + 1}", **common)(x, train=train)
            skips.append(x)
        if self.features_only:
            return skips
        if self.dropout_rate > 0:
            x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)

        for i in reversed(range(self.depth)):
            x = UpConv2x2(
                widths[i], dtype=self.dtype, param_dtype=self.param_dtype, name=f"up{i + 1}"
            )(x)
            skip = center_crop(skips[i], x.shape[1], x.shape[2])
            x = jnp.concatenate([skip, x.astype(skip.dtype)], axis=-1)
            x = DoubleConv(widths[i], name=f"dec{i + 1}", **common)(x, train=train)

        return conv2d(
            self.num_classes,
            1,
            padding=0,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="head",
        )(x)


_PAPER = (
    "Ronneberger, Fischer, Brox. U-Net: Convolutional networks for biomedical image "
    "segmentation. MICCAI 2015"
)


@register_model(
    params=31_030_658,
    input_size=(512, 512, 1),
    num_classes=2,
    paper=_PAPER,
    reference="Ronneberger et al. 2015 (64->1024, no BatchNorm; same padding)",
    feature_info=unet_feature_info(),
    min_size=16,
    slow=True,
    task="segmentation",
    test_size=32,
)
def unet(**kwargs) -> UNet:
    """The paper's U-Net (64->1024 channels, depth 4, no BatchNorm), 1 channel in, 2 classes,
    same padding (pass ``padding="valid"`` for the paper's 572 -> 388 layout)."""
    kwargs.setdefault("variant", "unet")
    return UNet(**kwargs)


@register_model(
    params=31_036_546,
    input_size=(512, 512, 1),
    num_classes=2,
    paper=_PAPER,
    reference="U-Net with BatchNorm after every 3x3 conv (milesial/Pytorch-UNet "
    "layout, bilinear=False)",
    feature_info=unet_feature_info(),
    min_size=16,
    slow=True,
    task="segmentation",
    test_size=32,
)
def unet_bn(**kwargs) -> UNet:
    """U-Net with BatchNorm (conv biases dropped): 31,036,546 parameters with 1 channel in
    and 2 classes (31,037,698 with 3 channels in, the count milesial/Pytorch-UNet prints)."""
    kwargs.setdefault("variant", "unet_bn")
    kwargs.setdefault("batch_norm", True)
    return UNet(**kwargs)


@register_model(
    params=1_926_763,
    input_size=(64, 64, 1),
    num_classes=11,
    paper=_PAPER,
    reference="reduced U-Net (base width 32, depth 3, BatchNorm) for the 64x64 "
    "digit canvases of experiments/segment.py",
    feature_info=unet_feature_info(32, 3),
    min_size=8,
    task="segmentation",
    test_size=32,
)
def unet_small(**kwargs) -> UNet:
    """A reduced U-Net (32->256 channels, depth 3, BatchNorm), 11 classes: the network of the
    digit-canvas segmentation experiment."""
    kwargs.setdefault("variant", "unet_small")
    kwargs.setdefault("num_classes", 11)
    for k, v in (("base_width", 32), ("depth", 3), ("batch_norm", True)):
        kwargs.setdefault(k, v)
    return UNet(**kwargs)
