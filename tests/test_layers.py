"""Layers reproduce the lectures' own numbers and the output-size rule."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import layers
from jaxcnn.layers import sizes


def conv_single(image, kernel, padding=0, stride=1):
    """Apply one 2-D kernel (cross-correlation, as every CNN library) to one 2-D image."""
    x = jnp.asarray(image, jnp.float32)[None, :, :, None]
    k = jnp.asarray(kernel, jnp.float32)[:, :, None, None]
    conv = layers.conv2d(1, kernel_size=k.shape[:2], stride=stride, padding=padding, use_bias=False)
    y = conv.apply({"params": {"kernel": k}}, x)
    return np.asarray(y[0, :, :, 0])


def test_vertical_edge_patch_gives_32_64():
    patch = [[189.59, 194.95, 190.90], [172.70, 185.25, 193.31], [175.50, 168.63, 186.22]]
    kernel = [[-1, 0, 1]] * 3
    out = conv_single(patch, kernel)
    assert out.shape == (1, 1)
    np.testing.assert_allclose(out[0, 0], 32.64, atol=1e-3)


def test_5x5_valid_conv_lecture_example():
    img = [[7, 2, 3, 3, 8], [4, 5, 3, 8, 4], [3, 3, 2, 8, 4], [2, 8, 7, 2, 7], [5, 4, 4, 5, 4]]
    out = conv_single(img, [[1, 0, -1]] * 3)
    np.testing.assert_array_equal(out, [[6, -9, -8], [-3, -2, -3], [-3, 0, -2]])


def test_sharpen_kernel_with_padding_1():
    img = [
        [60, 113, 56, 139, 85],
        [73, 121, 54, 84, 128],
        [131, 99, 70, 129, 127],
        [80, 57, 115, 69, 134],
        [104, 126, 123, 95, 130],
    ]
    out = conv_single(img, [[0, -1, 0], [-1, 5, -1], [0, -1, 0]], padding=1)
    assert out.shape == (5, 5)
    np.testing.assert_array_equal(out[0], [114, 328, -26, 470, 158])


def test_min_pool_lecture_example():
    x = jnp.array(
        [[15, 24, 13, 19], [14, 63, 85, 33], [81, 74, 77, 12], [55, 93, 15, 69]], jnp.float32
    )[None, :, :, None]
    np.testing.assert_array_equal(layers.min_pool(x, 2)[0, :, :, 0], [[14, 13], [55, 12]])
    np.testing.assert_array_equal(layers.max_pool(x, 2)[0, :, :, 0], [[63, 85], [93, 77]])
    np.testing.assert_allclose(layers.avg_pool(x, 2)[0, :, :, 0], [[29.0, 37.5], [75.75, 43.25]])


def test_global_pools():
    x = jax.random.normal(jax.random.key(0), (2, 5, 7, 3))
    chex.assert_trees_all_close(layers.global_avg_pool(x), x.mean(axis=(1, 2)))
    chex.assert_trees_all_close(layers.global_max_pool(x), x.max(axis=(1, 2)))
    chex.assert_shape(layers.global_avg_pool(x, keepdims=True), (2, 1, 1, 3))


@pytest.mark.parametrize(
    "n,k,s,p,d",
    [
        (32, 5, 1, 0, 1),
        (28, 5, 1, 2, 1),
        (224, 11, 4, 2, 1),
        (224, 7, 2, 3, 1),
        (17, 3, 2, 1, 1),
        (15, 3, 1, 2, 2),
        (64, 3, 3, 0, 1),
        (10, 4, 2, 1, 1),
        (9, 3, 1, 4, 4),
        (7, 1, 1, 0, 1),
        (55, 3, 2, 0, 1),
        (31, 5, 3, 2, 2),
    ],
)
def test_output_size_rule_matches_conv(n, k, s, p, d):
    expected = math.floor((n - (k + (k - 1) * (d - 1)) + 2 * p) / s) + 1
    assert sizes.conv_output_size(n, k, s, p, d) == expected
    conv = layers.conv2d(2, k, s, p, d)
    x = jnp.zeros((1, n, n, 1))
    y = jax.eval_shape(lambda: conv.init_with_output(jax.random.key(0), x)[0])
    assert y.shape[1:3] == (expected, expected)


@pytest.mark.parametrize(
    "n,k,s,p,ceil",
    [
        (112, 3, 2, 0, True),
        (112, 3, 2, 0, False),
        (56, 3, 2, 1, False),
        (14, 2, 2, 0, False),
        (7, 3, 2, 0, True),
        (28, 3, 1, 1, False),
        (13, 3, 2, 0, True),
        (147, 3, 2, 0, False),
    ],
)
def test_output_size_rule_matches_pooling(n, k, s, p, ceil):
    expected = sizes.pool_output_size(n, k, s, p, ceil)
    x = jnp.ones((1, n, n, 2))
    for pool in (layers.max_pool, layers.min_pool):
        assert pool(x, k, s, p, ceil_mode=ceil).shape[1:3] == (expected, expected)
    assert layers.avg_pool(x, k, s, p, ceil_mode=ceil).shape[1:3] == (expected, expected)


def test_ceil_mode_average_pool_matches_torch_divisor():
    # PyTorch AvgPool2d(2, 2, ceil_mode=True) on 3x3 ones: the edge windows are clipped, so
    # every output is 1 (the divisor ignores the ceil-mode overhang).
    x = jnp.ones((1, 3, 3, 1))
    np.testing.assert_allclose(
        layers.avg_pool(x, 2, 2, ceil_mode=True)[0, :, :, 0], np.ones((2, 2))
    )


@pytest.mark.parametrize(
    "n,k,s,p,op",
    [(4, 2, 2, 0, 0), (7, 3, 2, 1, 1), (5, 4, 2, 1, 0), (3, 3, 1, 0, 0), (8, 5, 3, 2, 2)],
)
def test_transposed_conv_size_rule(n, k, s, p, op):
    expected = (n - 1) * s - 2 * p + k + op
    assert sizes.transposed_output_size(n, k, s, p, op) == expected
    m = layers.ConvTranspose2d(3, k, s, p, op)
    y = jax.eval_shape(lambda: m.init_with_output(jax.random.key(0), jnp.zeros((1, n, n, 2)))[0])
    assert y.shape == (1, expected, expected, 3)


def test_transposed_conv_is_the_gradient_of_conv():
    """ConvTranspose2d(k, s, p) is the adjoint of conv2d(k, s, p) with the flipped kernel."""
    k, s, p = 3, 2, 1
    x = jax.random.normal(jax.random.key(0), (1, 7, 7, 2))
    w = jax.random.normal(jax.random.key(1), (k, k, 2, 3))

    def conv(x):
        return layers.conv2d(3, k, s, p, use_bias=False).apply({"params": {"kernel": w}}, x)

    y, vjp = jax.vjp(conv, x)
    g = jax.random.normal(jax.random.key(2), y.shape)
    (dx,) = vjp(g)
    wt = jnp.transpose(w, (0, 1, 3, 2))[::-1, ::-1]
    tconv = layers.ConvTranspose2d(2, k, s, p, output_padding=0, use_bias=False)
    out = tconv.apply({"params": {"conv": {"kernel": wt}}}, g)
    chex.assert_trees_all_close(out, dx, atol=1e-4)


def count(module, shape):
    v = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros(shape)))
    return sum(math.prod(a.shape) for a in jax.tree.leaves(v["params"]))


@pytest.mark.parametrize("k,cin,cout", [(3, 3, 16), (3, 32, 64), (5, 16, 8), (7, 64, 128)])
def test_depthwise_separable_vs_standard_param_counts(k, cin, cout):
    sep = layers.DepthwiseSeparableConv(cout, k)
    std = layers.conv2d(cout, k, use_bias=False)
    assert count(sep, (1, 16, 16, cin)) == k * k * cin + cin * cout
    assert count(std, (1, 16, 16, cin)) == k * k * cin * cout


def test_grouped_pointwise_and_dilated_convs():
    x = jnp.zeros((1, 12, 12, 8))
    assert count(layers.conv2d(16, 3, groups=4, use_bias=False), x.shape) == 3 * 3 * 2 * 16
    assert count(layers.pointwise_conv(5), x.shape) == 8 * 5 + 5
    y = jax.eval_shape(
        lambda: layers.conv2d(4, 3, dilation=2).init_with_output(jax.random.key(0), x)[0]
    )
    assert y.shape == (1, 12, 12, 4)  # padding None keeps the size: dilation*(k-1)//2


def test_conv_bn_act_names_and_train_mode():
    block = layers.ConvBNAct(4, 3)
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
    v = block.init(jax.random.key(1), x)
    assert set(v["params"]) == {"conv", "bn"} and "bias" not in v["params"]["conv"]
    y, upd = block.apply(v, x, train=True, mutable=["batch_stats"])
    assert float(y.min()) >= 0.0
    assert not np.allclose(upd["batch_stats"]["bn"]["mean"], v["batch_stats"]["bn"]["mean"])


def test_stochastic_pool_inference_is_probability_weighted_average():
    x = jnp.array([[1.0, 3.0], [0.0, 4.0]])[None, :, :, None]
    pool = layers.StochasticPool(2)
    y = pool.apply({}, x, train=False)
    np.testing.assert_allclose(y[0, 0, 0, 0], (1 + 9 + 16) / 8.0, rtol=1e-6)


def test_stochastic_pool_training_samples_in_proportion():
    x = jnp.array([[1.0, 3.0], [0.0, 4.0]])[None, :, :, None]
    pool = layers.StochasticPool(2)
    draws = jax.vmap(lambda k: pool.apply({}, x, train=True, rngs={"dropout": k})[0, 0, 0, 0])(
        jax.random.split(jax.random.key(0), 4000)
    )
    draws = np.asarray(draws)
    assert set(np.unique(draws)) <= {1.0, 3.0, 4.0}  # never the zero, always a window value
    freq = [np.mean(draws == v) for v in (1.0, 3.0, 4.0)]
    np.testing.assert_allclose(freq, [1 / 8, 3 / 8, 4 / 8], atol=0.03)
    zeros = pool.apply({}, jnp.zeros((1, 4, 4, 2)), train=True, rngs={"dropout": jax.random.key(1)})
    chex.assert_trees_all_equal(zeros, jnp.zeros((1, 2, 2, 2)))


def test_adaptive_avg_pool_matches_torch_bins():
    x = jnp.arange(7.0)[None, :, None, None] * jnp.ones((1, 7, 7, 1))
    y = layers.adaptive_avg_pool(x, 3)  # bins [0,3) [2,5) [4,7) along the height
    np.testing.assert_allclose(y[0, :, 0, 0], [1.0, 3.0, 5.0])
    chex.assert_shape(layers.adaptive_avg_pool(jnp.ones((2, 12, 12, 4)), 6), (2, 6, 6, 4))


def test_squeeze_excite_and_drop_path():
    se = layers.SqueezeExcite(2)
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 8))
    assert count(se, x.shape) == 8 * 2 + 2 + 2 * 8 + 8
    dp = layers.DropPath(0.5)
    chex.assert_trees_all_equal(dp.apply({}, x, deterministic=True), x)
    y = dp.apply(
        {}, jnp.ones((256, 1, 1, 1)), deterministic=False, rngs={"dropout": jax.random.key(0)}
    )
    vals = set(np.unique(np.asarray(y)).tolist())
    assert vals == {0.0, 2.0}  # dropped or scaled by 1/keep


@pytest.mark.parametrize(
    "bad,match",
    [
        (jnp.zeros((28, 28, 1)), "rank 4"),
        (jnp.zeros((2, 28, 28, 3)), "1 input channel"),
        (jnp.zeros((2, 20, 20, 1)), "at least 28x28"),
        (jnp.zeros((2, 28, 28, 1), jnp.int32), "floating-point"),
        (jnp.zeros((2, 1, 28, 28)), "NCHW"),
    ],
)
def test_check_image_errors_name_expected_and_received(bad, match):
    with pytest.raises(ValueError, match=match):
        layers.check_image(bad, model="m", channels=1, min_size=28)
