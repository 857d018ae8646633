"""jaxcnn.layers.fast_conv: same values and gradients as lax.conv_general_dilated, switchable."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxcnn.layers import ConvTranspose2d, conv2d, depthwise_conv
from jaxcnn.layers import fast_conv as fc

DN = fc.NHWC_DN


def _rel(a, b):
    return float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(a)) + 1e-12))


def _dense_custom_vjp(x, w, strides, padding, lhs_dil, rhs_dil, dn, groups):
    """The per-tap-matmul kernel gradient, called directly (whatever the dispatcher picks)."""
    assert dn == DN and groups == 1
    pads = fc.explicit_padding(x.shape, w.shape, strides, padding, lhs_dil, rhs_dil)
    return fc.dense_conv_fast_filter_grad(x, w, strides, pads, lhs_dil, rhs_dil, None)


def _compare(
    x_shape, k, cout, strides, padding, lhs_dil=(1, 1), rhs_dil=(1, 1), groups=1, seed=0, fn=None
):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal(x_shape, np.float32))
    w = jnp.asarray(rng.standard_normal(k + (x_shape[-1] // groups, cout), np.float32))

    def run(fn, x, w, gy):
        f = lambda x, w: fn(x, w, strides, padding, lhs_dil, rhs_dil, DN, groups)  # noqa: E731
        y, vjp = jax.vjp(f, x, w)
        return (y,) + vjp(gy)

    y = jax.eval_shape(
        lambda x, w: lax.conv_general_dilated(x, w, strides, padding, lhs_dil, rhs_dil, DN, groups),
        x,
        w,
    )
    gy = jnp.asarray(np.random.default_rng(seed + 1).standard_normal(y.shape, np.float32))
    # one compilation per case: both implementations in one jit
    ref, got = jax.jit(
        lambda x, w, gy: (
            run(lax.conv_general_dilated, x, w, gy),
            run(fn or fc.get_conv_fn("fast"), x, w, gy),
        )
    )(x, w, gy)
    for name, a, b in zip(("value", "input grad", "kernel grad"), ref, got):
        assert a.shape == b.shape, name
        assert _rel(a, b) < 1e-4, (name, _rel(a, b))


DENSE = [  # kernel, strides, padding, kernel dilation
    ((1, 1), (1, 1), "VALID", (1, 1)),
    ((1, 1), (2, 2), ((0, 0), (0, 0)), (1, 1)),
    ((3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1)),
    ((3, 3), (2, 2), ((1, 1), (1, 1)), (1, 1)),
    ((3, 3), (2, 1), "SAME", (2, 1)),
    ((2, 3), (1, 2), ((0, 2), (2, 0)), (1, 1)),
    ((3, 3), (3, 3), "SAME", (2, 2)),
    ((5, 5), (2, 2), ((-1, 2), (0, -1)), (1, 1)),
    ((7, 7), (2, 2), ((3, 3), (3, 3)), (1, 1)),
]


@pytest.mark.parametrize("k,s,p,d", DENSE)
def test_dense_matches_lax(k, s, p, d):
    _compare((2, 7, 6, 3), k, 4, s, p, rhs_dil=d)  # through the dispatcher
    _compare((2, 7, 6, 3), k, 4, s, p, rhs_dil=d, fn=_dense_custom_vjp)  # the matmul gradient


@pytest.mark.parametrize(
    "k,s,p,d,mult",
    [
        ((3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), 1),
        ((3, 3), (2, 2), ((1, 1), (1, 1)), (1, 1), 1),
        ((5, 5), (2, 2), "SAME", (1, 1), 1),
        ((3, 3), (1, 1), "SAME", (2, 2), 1),
        ((1, 1), (1, 1), "VALID", (1, 1), 2),
        ((3, 3), (2, 1), ((2, 0), (0, 1)), (1, 2), 2),
    ],
)
def test_depthwise_matches_lax(k, s, p, d, mult):
    _compare((2, 9, 8, 4), k, 4 * mult, s, p, rhs_dil=d, groups=4)


@pytest.mark.parametrize(
    "k,lhs_dil,p,d",
    [
        ((2, 2), (2, 2), ((1, 1), (1, 1)), (1, 1)),  # U-Net 2x2/2
        ((4, 4), (2, 2), ((2, 2), (2, 2)), (1, 1)),  # DCGAN 4x4/2 p1
        ((3, 3), (2, 2), ((1, 2), (1, 2)), (1, 1)),  # output_padding 1
        ((3, 3), (3, 2), ((0, 1), (2, 1)), (2, 1)),  # uneven, dilated
        ((4, 4), (2, 2), ((0, 0), (-1, 0)), (1, 1)),  # negative padding (crop)
    ],
)
def test_transposed_matches_lax(k, lhs_dil, p, d):
    _compare((2, 5, 6, 3), k, 4, (1, 1), p, lhs_dil=lhs_dil, rhs_dil=d)


@pytest.mark.parametrize("groups,lhs_dil,s", [(2, (1, 1), (1, 1)), (1, (2, 2), (2, 2))])
def test_unhandled_cases_fall_back(groups, lhs_dil, s):
    _compare((2, 7, 6, 4), (3, 3), 6, s, ((1, 1), (1, 1)), lhs_dil=lhs_dil, groups=groups)


def _primitives(fn, *args):
    return {e.primitive.name for e in jax.make_jaxpr(fn)(*args).eqns} | {
        e.primitive.name for e in _all_eqns(jax.make_jaxpr(fn)(*args).jaxpr)
    }


def _all_eqns(jaxpr):
    for e in jaxpr.eqns:
        yield e
        for v in e.params.values():
            for sub in v if isinstance(v, (list, tuple)) else [v]:
                inner = getattr(sub, "jaxpr", None)
                if inner is not None:
                    yield from _all_eqns(getattr(inner, "jaxpr", inner))


def test_fast_path_is_taken_and_the_impl_is_explicit():
    x = jnp.ones((2, 8, 8, 4))
    w = jnp.ones((3, 3, 1, 4))
    wt = jnp.ones((2, 2, 4, 3))

    def depthwise(impl):
        return lambda x, w: fc.conv_general_dilated(
            x, w, (1, 1), "SAME", dimension_numbers=DN, feature_group_count=4, impl=impl
        )

    def kernel_grad_transposed(impl):
        return jax.grad(
            lambda w: fc.conv_general_dilated(
                x, w, (1, 1), ((1, 1), (1, 1)), lhs_dilation=(2, 2), dimension_numbers=DN, impl=impl
            ).sum()
        )

    def kernel_grad_dense(impl):
        return jax.grad(
            lambda w: fc.conv_general_dilated(
                x, w, (1, 1), "SAME", dimension_numbers=DN, impl=impl
            ).sum()
        )

    # 1x1 kernels at stride 1: matmuls; 3x3 without input dilation: XLA's gradient (faster)
    assert "dot_general" in _primitives(kernel_grad_dense("fast"), jnp.ones((1, 1, 4, 5)))
    assert "dot_general" not in _primitives(kernel_grad_dense("fast"), jnp.ones((3, 3, 4, 5)))
    assert fc.use_dense_path((1, 1), (1, 1), (1, 1)) and fc.use_dense_path((3, 3), (1, 1), (2, 2))
    assert not fc.use_dense_path((3, 3), (1, 1), (1, 1))
    assert not fc.use_dense_path((1, 1), (2, 2), (1, 1))
    assert "conv_general_dilated" not in _primitives(depthwise("fast"), x, w)
    assert "dot_general" in _primitives(kernel_grad_transposed("fast"), wt)
    assert "conv_general_dilated" in _primitives(depthwise("xla"), x, w)
    assert "dot_general" not in _primitives(kernel_grad_transposed("xla"), wt)
    with pytest.raises(ValueError, match="conv_impl must be one of"):
        fc.get_conv_fn("cudnn")


def test_model_conv_impl_is_a_field_that_jit_sees():
    """The model's field decides, and a jitted function never serves one impl's trace to the
    other: the module is part of the cache key (as in a TrainState's apply_fn)."""
    from jaxcnn import models

    x = jnp.ones((1, 32, 32, 3))
    fast = models.create_model("mobilenet_v2", num_classes=4, small_input=True)
    xla = fast.clone(conv_impl="xla")
    assert fast.conv_impl == "fast" and xla.conv_impl == "xla"
    v = jax.jit(xla.init)(jax.random.key(0), x)  # the same variables; jit: no eager dispatch
    traces = []

    @functools.partial(jax.jit, static_argnums=0)
    def forward(model, v, x):
        traces.append(model.conv_impl)
        return model.apply(v, x)

    def depthwise_convs(m):  # convolutions with one input channel per group
        jaxpr = jax.make_jaxpr(lambda v, x: m.apply(v, x))(v, x).jaxpr
        return sum(
            e.primitive.name == "conv_general_dilated" and e.params["feature_group_count"] > 1
            for e in _all_eqns(jaxpr)
        )

    # MobileNet v2's 17 depthwise convs: shifted multiplies on the fast path, convolutions on xla
    assert depthwise_convs(fast) == 0 and depthwise_convs(xla) == 17
    np.testing.assert_allclose(forward(fast, v, x), forward(xla, v, x), rtol=1e-4, atol=1e-5)
    assert traces == ["fast", "xla"]  # one trace each: the second call was not a cache hit
    with pytest.raises(ValueError, match="conv_impl must be one of"):
        models.create_model("resnet18", conv_impl="cudnn")


@pytest.mark.parametrize(
    "make",
    [
        lambda impl: conv2d(6, 3, 2, dilation=1, conv_impl=impl),
        lambda impl: depthwise_conv(8, 3, 2, conv_impl=impl),
        lambda impl: ConvTranspose2d(5, 4, 2, 1, conv_impl=impl),
        lambda impl: ConvTranspose2d(
            5, 3, 2, 1, output_padding=1, dilation=2, use_bias=False, conv_impl=impl
        ),
    ],
)
def test_layers_same_params_values_grads_both_impls(make):
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 6, 7, 8), np.float32))
    out = {}
    for impl in ("xla", "fast"):
        m = make(impl)
        v = jax.jit(m.init)(jax.random.PRNGKey(0), x)
        loss = lambda v, x: (m.apply(v, x) ** 2).sum()  # noqa: E731
        out[impl] = (v,) + jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(v, x)
    (v0, l0, g0), (v1, l1, g1) = out["xla"], out["fast"]
    assert jax.tree.structure(v0) == jax.tree.structure(v1)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), v0, v1)
    assert abs(float(l0 - l1)) <= 1e-5 * abs(float(l0))
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(
            b, a, rtol=1e-4, atol=1e-4 * float(jnp.abs(a).max())
        ),
        g0,
        g1,
    )
