"""Convolution variants: standard (any stride/padding/dilation), grouped, depthwise-separable,
1x1 (pointwise), transposed, and the Conv-BatchNorm-activation block.

Padding follows PyTorch where an integer is given (``p`` pads ``p`` on every side), so that the
torchvision architectures and their weights carry over exactly; ``"SAME"``/``"VALID"`` follow
TensorFlow/Keras. ``None`` means "keep the size at stride 1": ``dilation * (k - 1) // 2``.

How the convolutions are computed is a field, ``conv_impl``: ``"fast"`` (the default: depthwise
convs as shifted multiplies, kernel gradients as per-tap matmuls, several times to 100x faster on
CPU) or ``"xla"`` (plain ``lax.conv_general_dilated``). A layer uses its own ``conv_impl`` when
set, else that of the nearest enclosing module that has one (every jaxcnn model has the field:
``create_model(name, conv_impl="xla")``); see ``jaxcnn.layers.fast_conv``. Parameters and results
are the same either way.
"""

from __future__ import annotations

import contextvars
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype

from jaxcnn.layers import fast_conv
from jaxcnn.layers.fast_conv import conv_impl_of

Dtype = Any
IntOr2 = int | Sequence[int]

__all__ = [
    "pair",
    "torch_padding",
    "Conv",
    "conv2d",
    "pointwise_conv",
    "depthwise_conv",
    "DepthwiseSeparableConv",
    "ConvTranspose2d",
    "ConvBNAct",
    "batch_norm",
]


def pair(v: IntOr2) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    v = tuple(v)
    if len(v) != 2:
        raise ValueError(f"expected an int or a pair of ints, got {v!r}")
    return (int(v[0]), int(v[1]))


def torch_padding(padding, kernel_size: IntOr2, dilation: IntOr2 = 1):
    """Normalise a padding argument to what ``flax.linen.Conv`` takes.

    ``None`` -> symmetric ``dilation*(k-1)//2``; an int or pair -> symmetric explicit padding;
    a string (``"SAME"``, ``"VALID"``) or explicit ``((lo, hi), (lo, hi))`` pairs pass through.
    """
    if isinstance(padding, str):
        return padding.upper()
    kh, kw = pair(kernel_size)
    dh, dw = pair(dilation)
    if padding is None:
        ph, pw = dh * (kh - 1) // 2, dw * (kw - 1) // 2
        return ((ph, ph), (pw, pw))
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    padding = tuple(padding)
    if len(padding) == 2 and all(isinstance(p, int) for p in padding):
        return ((padding[0], padding[0]), (padding[1], padding[1]))
    return tuple(tuple(p) for p in padding)


# The convolution function of the Conv being called: set by Conv.__call__ for the length of the
# call (from the module's conv_impl), read by flax's Conv code through _conv_of_current_call.
_CURRENT_CONV: contextvars.ContextVar[Callable] = contextvars.ContextVar("jaxcnn_current_conv")


def _conv_of_current_call(*args, **kwargs):
    return _CURRENT_CONV.get()(*args, **kwargs)


class Conv(nn.Conv):
    """``flax.linen.Conv`` (same fields and parameters) computed by jaxcnn's chosen
    implementation: ``conv_impl`` when set, else the ``conv_impl`` of the nearest enclosing
    module that has one (a jaxcnn model's field), else ``"fast"``."""

    conv_impl: str | None = None

    @nn.compact
    def __call__(self, inputs):
        token = _CURRENT_CONV.set(fast_conv.get_conv_fn(conv_impl_of(self)))
        try:
            # flax's own code; nn.compact keeps it as __wrapped__ (functools.wraps), which
            # flax's annotation of the decorated method does not show
            return nn.Conv.__call__.__wrapped__(self, inputs)  # type: ignore[attr-defined]
        finally:
            _CURRENT_CONV.reset(token)


def conv2d(
    features: int,
    kernel_size: IntOr2 = 3,
    stride: IntOr2 = 1,
    padding=None,
    dilation: IntOr2 = 1,
    groups: int = 1,
    use_bias: bool = True,
    dtype: Dtype = None,
    param_dtype: Dtype = jnp.float32,
    kernel_init: Callable | None = None,
    name: str | None = None,
    conv_impl: str | None = None,
) -> Conv:
    """A 2-D convolution with PyTorch-style arguments (NHWC data, HWIO kernel).

    ``groups > 1`` gives a grouped convolution (``groups == in_channels``: depthwise).
    ``conv_impl`` (``"fast"``/``"xla"``; default: the enclosing model's) picks how it is
    computed (see the module docstring).
    """
    kw: dict[str, Any] = {} if kernel_init is None else {"kernel_init": kernel_init}
    if conv_impl is not None:
        fast_conv.check_conv_impl(conv_impl)
    return Conv(
        features,
        kernel_size=pair(kernel_size),
        strides=pair(stride),
        padding=torch_padding(padding, kernel_size, dilation),
        kernel_dilation=pair(dilation),
        feature_group_count=groups,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
        conv_general_dilated=_conv_of_current_call,
        conv_impl=conv_impl,
        **kw,
    )


def pointwise_conv(features: int, use_bias: bool = True, **kwargs) -> Conv:
    """1x1 convolution: mixes channels at every pixel (``Cin*Cout (+Cout)`` parameters)."""
    return conv2d(features, kernel_size=1, padding=0, use_bias=use_bias, **kwargs)


def depthwise_conv(
    channels: int,
    kernel_size: IntOr2 = 3,
    stride: IntOr2 = 1,
    padding=None,
    dilation: IntOr2 = 1,
    use_bias: bool = False,
    **kwargs,
) -> Conv:
    """Depthwise convolution: one ``k x k`` filter per input channel (``groups == channels``)."""
    return conv2d(
        channels,
        kernel_size,
        stride,
        padding,
        dilation,
        groups=channels,
        use_bias=use_bias,
        **kwargs,
    )


class DepthwiseSeparableConv(nn.Module):
    """Depthwise ``k x k`` conv followed by a pointwise 1x1 conv.

    Parameters (no bias): ``k*k*Cin + Cin*Cout`` versus ``k*k*Cin*Cout`` for a standard conv.
    Set ``norm``/``act`` to put BatchNorm and an activation after each of the two convs, as
    MobileNet v1 does.
    """

    features: int
    kernel_size: IntOr2 = 3
    stride: IntOr2 = 1
    padding: Any = None
    dilation: IntOr2 = 1
    use_bias: bool = False
    norm: bool = False
    act: Callable | None = None
    bn_eps: float = 1e-5
    bn_momentum: float = 0.9
    dtype: Dtype = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        cin = x.shape[-1]
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = depthwise_conv(
            cin,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            use_bias=self.use_bias,
            name="depthwise",
            **common,
        )(x)
        if self.norm:
            x = batch_norm(train, self.bn_momentum, self.bn_eps, name="bn_dw", **common)(x)
        if self.act is not None:
            x = self.act(x)
        x = pointwise_conv(self.features, use_bias=self.use_bias, name="pointwise", **common)(x)
        if self.norm:
            x = batch_norm(train, self.bn_momentum, self.bn_eps, name="bn_pw", **common)(x)
        if self.act is not None:
            x = self.act(x)
        return x


class ConvTransposeFields(nn.Module):
    """The fields of a transposed convolution with PyTorch's arguments, shared by
    :class:`ConvTranspose2d` and its drop-in
    :class:`jaxcnn.layers.subpixel.SubpixelConvTranspose2d`."""

    features: int
    kernel_size: IntOr2 = 2
    stride: IntOr2 = 2
    padding: IntOr2 = 0
    output_padding: IntOr2 = 0
    dilation: IntOr2 = 1
    use_bias: bool = True
    dtype: Dtype = None
    param_dtype: Dtype = jnp.float32
    kernel_init: Callable = nn.initializers.lecun_normal()


class ConvTranspose2d(ConvTransposeFields):
    """Transposed convolution with PyTorch's size rule.

    ``out = (in - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1``.
    The kernel is stored HWIO and applied without spatial flipping (``transpose_kernel=False``);
    converting a PyTorch ``ConvTranspose2d`` weight ``(in, out, kh, kw)`` means
    ``w.transpose(2, 3, 0, 1)[::-1, ::-1]``.
    """

    conv_impl: str | None = None  # None: the enclosing model's (see the module docstring)

    @nn.compact
    def __call__(self, x):
        kh, kw = pair(self.kernel_size)
        dh, dw = pair(self.dilation)
        ph, pw = pair(self.padding)
        oh, ow = pair(self.output_padding)
        eh, ew = dh * (kh - 1), dw * (kw - 1)
        pad = ((eh - ph, eh - ph + oh), (ew - pw, ew - pw + ow))
        return _ConvTranspose(
            self.features,
            kernel_size=(kh, kw),
            strides=pair(self.stride),
            padding=pad,
            kernel_dilation=(dh, dw),
            use_bias=self.use_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=self.kernel_init,
            name="conv",
        )(x)


class _ConvTranspose(nn.ConvTranspose):
    """``nn.ConvTranspose`` (same fields, parameters ``kernel``/``bias``) computed through
    ``fast_conv`` when the conv_impl is ``"fast"`` (its kernel gradient is then ~40x faster on
    CPU); explicit padding, one batch axis and ``transpose_kernel=False`` only, as
    :class:`ConvTranspose2d` uses it."""

    @nn.compact
    def __call__(self, inputs):
        impl = conv_impl_of(self)
        if (
            impl != "fast"
            or self.transpose_kernel
            or self.mask is not None
            or isinstance(self.padding, str)
            or inputs.ndim != 4
        ):
            # flax's own code (kept by nn.compact as __wrapped__, see Conv.__call__)
            return nn.ConvTranspose.__call__.__wrapped__(self, inputs)  # type: ignore[attr-defined]
        kh, kw = pair(self.kernel_size)
        kernel = self.param(
            "kernel", self.kernel_init, (kh, kw, inputs.shape[-1], self.features), self.param_dtype
        )
        bias = (
            self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias
            else None
        )
        inputs, kernel, bias = promote_dtype(inputs, kernel, bias, dtype=self.dtype)
        y = fast_conv.conv_general_dilated(
            inputs,
            kernel,
            (1, 1),
            self.padding,
            lhs_dilation=pair(1 if self.strides is None else self.strides),
            rhs_dilation=pair(1 if self.kernel_dilation is None else self.kernel_dilation),
            dimension_numbers=fast_conv.NHWC_DN,
            precision=self.precision,
            preferred_element_type=self.preferred_element_type,
            impl=impl,
        )
        return y if bias is None else y + bias.reshape((1,) * (y.ndim - 1) + (-1,))


def batch_norm(
    train: bool, momentum: float = 0.9, epsilon: float = 1e-5, axis_name=None, **kwargs
) -> nn.BatchNorm:
    """BatchNorm with PyTorch's defaults (momentum 0.1 there is 0.9 here, eps 1e-5).

    Statistics live in the ``batch_stats`` collection; in training mode they are computed from the
    batch (across the ``data`` mesh axis when the batch is sharded: see ``jaxcnn.train.mesh``).
    """
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=momentum,
        epsilon=epsilon,
        axis_name=axis_name,
        **kwargs,
    )


class ConvBNAct(nn.Module):
    """Convolution -> BatchNorm -> activation, the building block of most CNNs here.

    Submodules are named ``conv`` and ``bn`` so weight converters, BatchNorm folding and transfer
    rules can address them. ``norm=False`` drops the BatchNorm (then ``use_bias`` is usually on);
    ``act=None`` gives a linear block (MobileNet v2's projection). ``bn_scale_init`` draws the
    BatchNorm scales (ones by default; DCGAN draws them from N(1, 0.02)).
    """

    features: int
    kernel_size: IntOr2 = 3
    stride: IntOr2 = 1
    padding: Any = None
    dilation: IntOr2 = 1
    groups: int = 1
    use_bias: bool = False
    norm: bool = True
    act: Callable | None = nn.relu
    bn_eps: float = 1e-5
    bn_momentum: float = 0.9
    dtype: Dtype = None
    param_dtype: Dtype = jnp.float32
    kernel_init: Callable | None = None
    bn_scale_init: Callable = nn.initializers.ones

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = conv2d(
            self.features,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            self.use_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=self.kernel_init,
            name="conv",
        )(x)
        if self.norm:
            x = batch_norm(
                train,
                self.bn_momentum,
                self.bn_eps,
                scale_init=self.bn_scale_init,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name="bn",
            )(x)
        if self.act is not None:
            x = self.act(x)
        return x
