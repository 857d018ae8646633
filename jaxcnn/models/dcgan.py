"""DCGAN generator and discriminator (Radford, Metz, Chintala, 2015).

The paper's guidelines: no pooling or fully connected hidden layers (strided convolutions in
the discriminator, transposed convolutions in the generator), BatchNorm in both networks
except the generator's output and the discriminator's input layer, ReLU in the generator with
a tanh output, LeakyReLU (slope 0.2) in the discriminator; weights drawn from N(0, 0.02).

Layouts (``width`` = ngf/ndf, 64 by default; every convolution without bias, as in the
PyTorch DCGAN tutorial, whose 64x64 networks have 3,576,704 and 2,765,568 parameters for
3-channel images):

=====  ===========================================  ==========================================
side   generator (z as an ``(N, 1, 1, latent)`` map)  discriminator (logit per image)
=====  ===========================================  ==========================================
64     4x4 8w -> 8x8 4w -> 16 2w -> 32 w -> 64 C      32 w -> 16 2w -> 8 4w -> 4 8w -> 1x1
32     4x4 4w -> 8x8 2w -> 16 w -> 32 C               16 w -> 8 2w -> 4 4w -> 1x1
28     7x7 2w -> 14x14 w -> 28 C                      14 w -> 7 2w -> 1x1 (7x7 head)
=====  ===========================================  ==========================================

Up-sampling layers are 4x4 transposed convolutions, stride 2, padding 1 (PyTorch's size
rule, :class:`jaxcnn.layers.ConvTranspose2d`); the first takes the 1x1 noise to 4x4 (7x7 for
28) with stride 1 and no padding. Down-sampling layers are 4x4 convolutions, stride 2,
padding 1; the discriminator's ``head`` is a valid convolution covering the last map.
The discriminator returns logits ``(N, num_classes)`` (1 by default: real vs fake; use a
sigmoid cross-entropy on them). The generator returns images in ``[-1, 1]``, NHWC.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcnn.layers import ConvBNAct, ConvTranspose2d, batch_norm, check_image, conv2d
from jaxcnn.layers.subpixel import KernelBias, SubpixelConvTranspose2d
from jaxcnn.models import register_model

__all__ = ["DCGANGenerator", "DCGANDiscriminator", "dcgan_init", "generator_widths"]

dcgan_init = nn.initializers.normal(0.02)


def _bn_scale_init(key, shape, dtype=jnp.float32):
    """BatchNorm scales drawn from N(1, 0.02), as in the DCGAN reference code."""
    return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


def _first_side(image_size: int) -> int:
    if image_size not in (28, 32, 64):
        raise ValueError(f"DCGAN: image_size must be 28, 32 or 64, got {image_size}")
    return 7 if image_size == 28 else 4


def generator_widths(image_size: int, width: int) -> list[int]:
    """Channels of the generator's hidden maps, from the 1x1 noise upwards."""
    n = {28: 2, 32: 3, 64: 4}[image_size]
    return [width * 2 ** (n - 1 - i) for i in range(n)]


class DCGANGenerator(nn.Module):
    """Noise ``(N, 1, 1, latent_dim)`` (or ``(N, latent_dim)``) -> images ``(N, S, S, C)``
    in ``[-1, 1]``. Submodules ``block1``.. (transposed conv ``conv`` + ``bn``), ``head``.

    ``num_classes`` must stay ``None`` (a generator has no classes; the field exists so that
    every model takes the same keywords). ``features_only=True`` returns the hidden maps.

    ``subpixel=True`` (default) computes the same layers faster: the first one (1x1 noise ->
    k x k) as the matrix product it is, the stride-2 ones as phase-decomposed ordinary
    convolutions (:class:`jaxcnn.layers.subpixel.SubpixelConvTranspose2d`). Parameters and
    outputs are those of :class:`jaxcnn.layers.ConvTranspose2d` (``subpixel=False``) to float
    rounding; training a 28x28 generator on CPU is several times faster."""

    image_size: int = 64
    out_channels: int = 3
    latent_dim: int = 100
    width: int = 64
    num_classes: int | None = None
    features_only: bool = False
    subpixel: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    variant: str = "dcgan_generator"
    conv_impl: str = "fast"  # "xla": plain lax convolutions (jaxcnn.layers.fast_conv)

    @nn.compact
    def __call__(self, z, train: bool = False):
        if self.num_classes is not None:
            raise ValueError(
                f"{self.variant}: a generator has no classes (got num_classes="
                f"{self.num_classes}); set out_channels for the image channels"
            )
        if getattr(z, "ndim", 0) == 2:
            z = z[:, None, None, :]
        check_image(z, model=self.variant, channels=self.latent_dim, min_size=1)
        if z.shape[1] != 1 or z.shape[2] != 1:
            raise ValueError(
                f"{self.variant}: expected noise of shape (N, 1, 1, "
                f"{self.latent_dim}) or (N, {self.latent_dim}), got {z.shape}"
            )
        first = _first_side(self.image_size)
        common = dict(
            use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=dcgan_init
        )
        x, feats = z, []
        for i, c in enumerate(generator_widths(self.image_size, self.width)):
            k, s, p = (first, 1, 0) if i == 0 else (4, 2, 1)
            x = _UpBlock(c, k, s, p, subpixel=self.subpixel, name=f"block{i + 1}", **common)(
                x, train=train
            )
            feats.append(x)
        if self.features_only:
            return feats
        up = SubpixelConvTranspose2d if self.subpixel else ConvTranspose2d
        x = up(self.out_channels, 4, 2, 1, name="head", **common)(x)
        return jnp.tanh(x)


class _UpBlock(nn.Module):
    """Transposed convolution -> BatchNorm -> ReLU (``conv``, ``bn``)."""

    features: int
    kernel_size: int
    stride: int
    padding: int
    use_bias: bool = False
    subpixel: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Any = dcgan_init

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.subpixel and x.shape[1:3] == (1, 1) and (self.stride, self.padding) == (1, 0):
            x = _ProjectNoise(
                self.features,
                self.kernel_size,
                self.use_bias,
                self.dtype,
                self.param_dtype,
                self.kernel_init,
                name="conv",
            )(x)
        else:
            up = SubpixelConvTranspose2d if self.subpixel else ConvTranspose2d
            x = up(
                self.features,
                self.kernel_size,
                self.stride,
                self.padding,
                use_bias=self.use_bias,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                kernel_init=self.kernel_init,
                name="conv",
            )(x)
        x = batch_norm(
            train,
            scale_init=_bn_scale_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="bn",
        )(x)
        return nn.relu(x)


class _ProjectNoise(nn.Module):
    """The first transposed convolution (1x1 noise -> k x k, stride 1, no padding) computed as
    the matrix product it is: ``y[i, j] = z @ K[k-1-i, k-1-j]``. Same parameters as
    ``ConvTranspose2d`` (``conv/kernel``, HWIO) and the same output, without the ``k*k``-fold
    multiply-adds on padding zeros that a convolution over the padded 1x1 input costs."""

    features: int
    kernel_size: int
    use_bias: bool = False
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Any = dcgan_init

    @nn.compact
    def __call__(self, z):
        k = self.kernel_size
        cin = z.shape[-1]
        kernel, bias = KernelBias(
            (k, k, cin, self.features),
            self.use_bias,
            self.kernel_init,
            self.param_dtype,
            name="conv",
        )()
        dtype = self.dtype or jnp.result_type(z, kernel)
        w = kernel[::-1, ::-1].astype(dtype)
        y = jnp.einsum("nc,hwco->nhwo", z[:, 0, 0, :].astype(dtype), w)
        return y if bias is None else y + bias.astype(dtype)


class DCGANDiscriminator(nn.Module):
    """Images ``(N, S, S, C)`` in ``[-1, 1]`` -> logits ``(N, num_classes)``.
    Submodules ``block1``.. (``conv``, ``bn`` except in ``block1``), ``head``.
    ``features_only=True`` returns the block outputs (reductions 2, 4, ...)."""

    image_size: int = 64
    in_channels: int = 3
    width: int = 64
    num_classes: int = 1
    negative_slope: float = 0.2
    features_only: bool = False
    dtype: Any = None
    param_dtype: Any = jnp.float32
    variant: str = "dcgan_discriminator"
    conv_impl: str = "fast"  # "xla": plain lax convolutions (jaxcnn.layers.fast_conv)

    @nn.compact
    def __call__(self, x, train: bool = False):
        first = _first_side(self.image_size)
        check_image(x, model=self.variant, channels=self.in_channels, min_size=self.image_size)
        if x.shape[1] != self.image_size or x.shape[2] != self.image_size:
            raise ValueError(
                f"{self.variant}: expected {self.image_size}x{self.image_size} "
                f"images (the head sees the whole {first}x{first} map), got "
                f"{x.shape[1]}x{x.shape[2]}"
            )
        common = dict(
            use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=dcgan_init
        )
        widths = generator_widths(self.image_size, self.width)[::-1]
        feats = []
        for i, c in enumerate(widths):
            x = ConvBNAct(
                c,
                4,
                2,
                1,
                norm=i > 0,
                act=functools.partial(nn.leaky_relu, negative_slope=self.negative_slope),
                bn_scale_init=_bn_scale_init,
                name=f"block{i + 1}",
                **common,
            )(x, train=train)
            feats.append(x)
        if self.features_only:
            return feats
        x = conv2d(self.num_classes, first, 1, 0, name="head", **common)(x)
        return x.reshape((x.shape[0], self.num_classes))


_PAPER = (
    "Radford, Metz, Chintala. Unsupervised representation learning with deep "
    "convolutional generative adversarial networks. ICLR 2016 (arXiv 2015)"
)
_REF = "PyTorch DCGAN tutorial layout (ngf = ndf = 64, no biases)"


def _gen(size: int, channels: int, kwargs) -> DCGANGenerator:
    kwargs.setdefault("out_channels", channels)
    return DCGANGenerator(image_size=size, variant=f"dcgan_generator_{size}", **kwargs)


def _disc(size: int, channels: int, kwargs) -> DCGANDiscriminator:
    kwargs.setdefault("in_channels", channels)
    return DCGANDiscriminator(image_size=size, variant=f"dcgan_discriminator_{size}", **kwargs)


def _feature_info(size: int) -> tuple[dict, ...]:
    return tuple(
        {"name": f"block{i + 1}", "channels": c, "reduction": 2 ** (i + 1)}
        for i, c in enumerate(generator_widths(size, 64)[::-1])
    )


# Generators take noise (1, 1, 100); counts with latent 100 and width 64 (checked against the
# PyTorch tutorial's networks for 64x64 and against the layer formula in tests/test_dcgan.py).
_G: dict[str, Any] = dict(
    input_size=(1, 1, 100),
    num_classes=0,
    paper=_PAPER,
    reference=_REF,
    task="generation",
    test_size=1,
)
_D: dict[str, Any] = dict(num_classes=1, paper=_PAPER, reference=_REF, task="discrimination")


@register_model(params=759_680, image_size=(28, 28, 1), dataset="MNIST", **_G)
def dcgan_generator_28(**kwargs) -> DCGANGenerator:
    """28x28 grey digits (MNIST): 7x7x128 -> 14x14x64 -> 28x28x1."""
    return _gen(28, 1, kwargs)


@register_model(
    params=138_624,
    input_size=(28, 28, 1),
    feature_info=_feature_info(28),
    min_size=28,
    test_size=28,
    dataset="MNIST",
    **_D,
)
def dcgan_discriminator_28(**kwargs) -> DCGANDiscriminator:
    """28x28 grey digits: 14x14x64 -> 7x7x128 -> logit."""
    return _disc(28, 1, kwargs)


@register_model(params=1_068_928, image_size=(32, 32, 3), dataset="CIFAR-10 / SVHN", **_G)
def dcgan_generator_32(**kwargs) -> DCGANGenerator:
    """32x32 colour images: 4x4x256 -> 8x8x128 -> 16x16x64 -> 32x32x3."""
    return _gen(32, 3, kwargs)


@register_model(
    params=663_296,
    input_size=(32, 32, 3),
    feature_info=_feature_info(32),
    min_size=32,
    test_size=32,
    dataset="CIFAR-10 / SVHN",
    **_D,
)
def dcgan_discriminator_32(**kwargs) -> DCGANDiscriminator:
    """32x32 colour images: 16x16x64 -> 8x8x128 -> 4x4x256 -> logit."""
    return _disc(32, 3, kwargs)


@register_model(params=3_576_704, image_size=(64, 64, 3), dataset="LSUN / CelebA", **_G)
def dcgan_generator_64(**kwargs) -> DCGANGenerator:
    """The paper's 64x64 generator: 4x4x512 -> ... -> 64x64x3 (PyTorch tutorial: 3,576,704)."""
    return _gen(64, 3, kwargs)


@register_model(
    params=2_765_568,
    input_size=(64, 64, 3),
    feature_info=_feature_info(64),
    min_size=64,
    test_size=64,
    dataset="LSUN / CelebA",
    **_D,
)
def dcgan_discriminator_64(**kwargs) -> DCGANDiscriminator:
    """The paper's 64x64 discriminator: 32x32x64 -> ... -> 4x4x512 -> logit (2,765,568)."""
    return _disc(64, 3, kwargs)
