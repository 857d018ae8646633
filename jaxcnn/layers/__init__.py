"""Building blocks shared by the model families."""

from jaxcnn.layers.blocks import DropPath, Mlp, SqueezeExcite, drop_path_schedule, make_divisible
from jaxcnn.layers.checks import check_image
from jaxcnn.layers.conv import (
    Conv,
    ConvBNAct,
    ConvTranspose2d,
    DepthwiseSeparableConv,
    batch_norm,
    conv2d,
    depthwise_conv,
    pair,
    pointwise_conv,
    torch_padding,
)
from jaxcnn.layers.pooling import (
    StochasticPool,
    adaptive_avg_pool,
    avg_pool,
    global_avg_pool,
    global_max_pool,
    max_pool,
    min_pool,
)
from jaxcnn.layers.sizes import conv_output_size, pool_output_size, transposed_output_size

__all__ = [
    "Conv",
    "ConvBNAct",
    "ConvTranspose2d",
    "DepthwiseSeparableConv",
    "DropPath",
    "Mlp",
    "SqueezeExcite",
    "StochasticPool",
    "adaptive_avg_pool",
    "avg_pool",
    "batch_norm",
    "check_image",
    "conv2d",
    "conv_output_size",
    "depthwise_conv",
    "drop_path_schedule",
    "global_avg_pool",
    "global_max_pool",
    "make_divisible",
    "max_pool",
    "min_pool",
    "pair",
    "pointwise_conv",
    "pool_output_size",
    "torch_padding",
    "transposed_output_size",
]
