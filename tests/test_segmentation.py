"""Segmentation: U-Net counts and shapes, losses and metrics on hand-made cases, digit
canvases, one training step and a tiny run of the experiment loop."""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcnn import models
from jaxcnn.data import canvas
from jaxcnn.models.unet import valid_min_size
from jaxcnn.train import create_train_state, make_train_step
from jaxcnn.train import segmentation as seg

# ---------------------------------------------------------------------------------------------
# U-Net


def _double_conv(cin, c, bn=False):
    # two 3x3 convs: weights 9*cin*c and 9*c*c, each with a bias (c) or, with BatchNorm, no bias
    # but a scale and an offset (2c)
    per_conv_extra = 2 * c if bn else c
    return 9 * cin * c + 9 * c * c + 2 * per_conv_extra


def _unet_formula(in_ch=1, classes=2, base=64, depth=4, bn=False):
    widths = [base * 2**i for i in range(depth + 1)]
    n = _double_conv(in_ch, widths[0], bn)
    n += sum(_double_conv(widths[i - 1], widths[i], bn) for i in range(1, depth + 1))
    for c in widths[:-1]:
        n += 2 * 2 * (2 * c) * c + c  # up-conv 2x2 from 2c to c channels, with bias
        n += _double_conv(2 * c, c, bn)  # after concatenating the skip: 2c -> c
    return n + widths[0] * classes + classes  # 1x1 head


def test_unet_default_param_count_matches_the_layer_formula():
    assert _unet_formula() == 31_030_658
    assert _unet_formula(bn=True) == 31_036_546
    assert _unet_formula(in_ch=3, bn=True) == 31_037_698  # milesial/Pytorch-UNet prints this
    x = (1, 64, 64, 1)
    assert models.count_params(models.create_model("unet"), x) == _unet_formula()
    assert (
        models.count_params(models.create_model("unet", padding="valid"), (1, 188, 188, 1))
        == _unet_formula()
    )
    assert models.count_params(models.create_model("unet_bn"), x) == _unet_formula(bn=True)
    small = models.create_model("unet_small", base_width=16, depth=4)
    assert models.count_params(small, x) == _unet_formula(1, 11, 16, 4, bn=True)
    assert models.model_info("unet").params == 31_030_658


def test_valid_padding_gives_the_papers_572_to_388():
    model = models.create_model("unet", padding="valid")
    x = jax.ShapeDtypeStruct((1, 572, 572, 1), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    out = jax.eval_shape(model.apply, variables, x)
    assert out.shape == (1, 388, 388, 2)
    assert valid_min_size(4) == 188
    small = jax.ShapeDtypeStruct((1, 188, 188, 1), jnp.float32)
    assert jax.eval_shape(model.apply, variables, small).shape == (1, 4, 4, 2)
    with pytest.raises(ValueError, match="188"):
        model.apply(variables, jnp.zeros((1, 180, 180, 1)))


def test_same_padding_keeps_size_and_rejects_non_multiples():
    model = models.create_model("unet_small", base_width=4, depth=2)
    v = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 16, 1)))
    chex.assert_shape(jax.eval_shape(model.apply, v, jnp.zeros((2, 24, 24, 1))), (2, 24, 24, 11))
    with pytest.raises(ValueError, match="4"):
        jax.eval_shape(model.apply, v, jnp.zeros((1, 18, 18, 1)))


def test_upconv_equals_transposed_convolution():
    from jaxcnn.layers import ConvTranspose2d
    from jaxcnn.models.unet import UpConv2x2

    x = jax.random.normal(jax.random.key(1), (2, 5, 6, 7))
    v = jax.jit(ConvTranspose2d(3).init)(jax.random.key(0), x)
    v = jax.tree.map(lambda a: a + 0.1, v)  # a non-zero bias too
    chex.assert_trees_all_close(
        jax.jit(UpConv2x2(3).apply)(v, x), jax.jit(ConvTranspose2d(3).apply)(v, x), atol=1e-5
    )


# ---------------------------------------------------------------------------------------------
# Metrics and losses on hand-made cases

TRUTH = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 0, 0], [2, 2, 0, 0]])
PRED = np.array([[0, 0, 1, 0], [0, 1, 1, 0], [2, 0, 0, 0], [2, 2, 0, 0]])
# by hand: class 0: 8 true, 10 predicted, 7 both -> 7 / 11; class 1: 4 true, 3 predicted,
# 2 both -> 2 / 5; class 2: 4 true, 3 predicted, 3 both -> 3 / 4; class 3 absent from both.
IOU = [7 / 11, 2 / 5, 3 / 4]


def test_iou_of_a_hand_made_mask_pair():
    cm = seg.confusion_matrix(PRED, TRUTH, 4)
    assert cm.sum() == 16 and cm[0, 0] == 7 and cm[1, 0] == 2 and cm[0, 1] == 1
    iou = seg.iou_per_class(cm)
    np.testing.assert_allclose(iou[:3], IOU)
    assert np.isnan(iou[3])  # absent from truth and prediction: excluded from the mean
    assert seg.mean_iou(cm) == pytest.approx(np.mean(IOU))
    assert seg.pixel_accuracy(cm) == pytest.approx(12 / 16)
    np.testing.assert_allclose(seg.dice_per_class(cm)[:3], [14 / 18, 4 / 7, 6 / 7])


def test_metrics_are_jit_friendly_and_agree_with_numpy():
    @jax.jit
    def f(p, t):
        cm = seg.confusion_matrix(p, t, 4)
        return cm, seg.mean_iou(cm), seg.pixel_accuracy(cm)

    cm, miou, acc = f(jnp.asarray(PRED), jnp.asarray(TRUTH))
    np.testing.assert_array_equal(np.asarray(cm), seg.confusion_matrix(PRED, TRUTH, 4))
    assert float(miou) == pytest.approx(np.mean(IOU), rel=1e-6)
    assert float(acc) == pytest.approx(0.75)
    # weights drop pixels: masking the bottom half leaves classes 0 and 1 only
    w = np.repeat([[1.0], [1.0], [0.0], [0.0]], 4, 1)
    cmw = seg.confusion_matrix(jnp.asarray(PRED), jnp.asarray(TRUTH), 4, jnp.asarray(w))
    np.testing.assert_allclose(np.asarray(seg.iou_per_class(cmw))[:2], [3 / 6, 2 / 5])


def test_dice_loss_of_a_hand_made_case():
    probs = np.array([[[[0.8, 0.2], [0.4, 0.6]]]])  # (1, 1, 2, 2): two pixels
    labels = np.array([[[0, 1]]])
    logits = jnp.log(jnp.asarray(probs))
    # class 0: 2 * 0.8 / (1.2 + 1); class 1: 2 * 0.6 / (0.8 + 1)
    expected = 1 - (1.6 / 2.2 + 1.2 / 1.8) / 2
    assert float(seg.dice_loss(logits, labels, eps=0.0)) == pytest.approx(expected, rel=1e-5)
    perfect = jnp.log(jnp.asarray([[[[1 - 1e-7, 1e-7], [1e-7, 1 - 1e-7]]]]))
    assert float(seg.dice_loss(perfect, labels, eps=0.0)) == pytest.approx(0.0, abs=1e-5)
    # masking pixel 1 leaves pixel 0 (class 0): class 0 scores 1.6 / 1.8, class 1 0 / 0.2
    masked = seg.dice_loss(logits, labels, weights=np.array([[[1.0, 0.0]]]), eps=0.0)
    assert float(masked) == pytest.approx(1 - (1.6 / 1.8 + 0.0) / 2, rel=1e-5)


def test_pixel_cross_entropy_weights():
    probs = np.array([[[[0.8, 0.2], [0.4, 0.6]]]])
    logits, labels = jnp.log(jnp.asarray(probs)), np.array([[[0, 1]]])
    ce = [-np.log(0.8), -np.log(0.6)]
    assert float(seg.pixel_cross_entropy(logits, labels)) == pytest.approx(np.mean(ce), 1e-5)
    w = np.array([[[1.0, 3.0]]])
    assert float(seg.pixel_cross_entropy(logits, labels, w)) == pytest.approx(
        (ce[0] + 3 * ce[1]) / 4, 1e-5
    )
    assert float(
        seg.pixel_cross_entropy(logits, labels, class_weights=[1.0, 3.0])
    ) == pytest.approx((ce[0] + 3 * ce[1]) / 4, 1e-5)
    assert float(seg.pixel_cross_entropy(logits, labels, np.array([0.0]))) == 0.0


# ---------------------------------------------------------------------------------------------
# Digit canvases


@pytest.fixture(scope="module")
def digits():
    return canvas.load_digit_source(source="digits")


def test_canvases_shapes_labels_and_determinism(digits):
    images, labels, name = digits
    assert name == "digits" and images.shape[1:] == (28, 28) and images.max() <= 1.0
    (trx, tr_y), _ = canvas.split_digits(images, labels)
    x, y = canvas.canvas_batch(trx, tr_y, 6, seed=0, step=3)
    chex.assert_shape(x, (6, 64, 64, 1))
    chex.assert_shape(y, (6, 64, 64))
    assert x.dtype == np.float32 and y.dtype == np.int32 and y.min() >= 0 and y.max() <= 10
    # a pixel is a digit's exactly where the ink is above the threshold
    np.testing.assert_array_equal(y > 0, x[..., 0] > 0.5)
    x2, y2 = canvas.canvas_batch(trx, tr_y, 6, seed=0, step=3)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    x3, _ = canvas.canvas_batch(trx, tr_y, 6, seed=0, step=4)
    assert not np.array_equal(x, x3)
    # every canvas carries 1..3 digits, each labelled with one class per connected place
    counts = [len(np.unique(m)) - 1 for m in y]
    assert all(1 <= c <= 3 for c in counts)


def test_held_out_canvases_use_only_held_out_digits(digits):
    images, labels, _ = digits
    (trx, tr_y), (tex, te_y) = canvas.split_digits(images, labels)
    assert len(trx) + len(tex) == len(images) == 1797 and len(tex) == 359
    x, y = canvas.make_canvases(tex, te_y, 20, np.random.default_rng(1), min_digits=1, max_digits=1)
    held = {canvas._ink_box(d).tobytes() for d in tex}
    train = {canvas._ink_box(d).tobytes() for d in trx}
    for img in x[..., 0]:
        patch = canvas._ink_box(img).tobytes()
        assert patch in held and patch not in train


def test_digit_canvas_data_splits_before_composing(digits):
    data = canvas.digit_canvas_data(num_test=10, source="digits")
    assert data["source"] == "digits" and len(data["train_digits"][0]) == 1438
    chex.assert_shape(data["test"][0], (10, 64, 64, 1))
    again = canvas.digit_canvas_data(num_test=10, source="digits")
    np.testing.assert_array_equal(data["test"][1], again["test"][1])


def test_mnist_canvases_when_the_shared_folder_exists():
    from jaxcnn.data.sources import default_mnist_dir

    if not default_mnist_dir().is_dir():
        pytest.skip(f"real MNIST test set not found at {default_mnist_dir()}")
    images, labels, name = canvas.load_digit_source()
    assert name == "mnist" and images.shape == (10000, 28, 28)
    (trx, _), (tex, _) = canvas.split_digits(images, labels)
    assert len(trx) == 8000 and len(tex) == 2000


# ---------------------------------------------------------------------------------------------
# Training


def test_one_training_step_with_the_generic_step():
    model = models.create_model("unet_small", base_width=4, depth=2)
    state = create_train_state(model, optax.adam(1e-2), (1, 16, 16, 1))
    x = jax.random.uniform(jax.random.key(0), (4, 16, 16, 1))
    y = (x[..., 0] > 0.5).astype(jnp.int32) * 3  # classes 0 and 3
    step = make_train_step(loss_fn=seg.make_seg_loss(0.5))
    batch = {"image": x, "label": y}
    before = jax.tree.map(np.asarray, state.params)
    losses = []
    for _ in range(4):
        state, m = step(state, batch)
        losses.append(float(m["loss_sum"] / m["count"]))
    assert m["count"] == 4 * 16 * 16
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert not np.allclose(before["head"]["kernel"], np.asarray(state.params["head"]["kernel"]))
    ev = seg.evaluate_segmentation(
        seg.make_seg_eval_step(11), state, np.asarray(x)[:3], np.asarray(y)[:3], batch_size=2
    )  # one padded batch
    assert ev["confusion"].sum() == 3 * 16 * 16
    assert ev["iou_per_class"][5] is None  # class 5 absent everywhere


def _tiny_config(**kw):
    c = dict(
        model="unet_small",
        model_kwargs={"base_width": 4, "depth": 2},
        source="digits",
        num_train_digits=400,
        validation_split=40,
        num_validation=6,
        num_test=6,
        canvas_size=32,
        max_digits=1,
        batch_size=4,
        eval_batch_size=4,
        epochs=2,
        steps_per_epoch=2,
        progress=False,
        num_pictures=2,
    )
    c.update(kw)
    return c


def _seg_run(workdir, resume=False, stop_at_step=None, **kw):
    from jaxcnn.tasks import Segmentation
    from jaxcnn.train import Trainer

    return Trainer(Segmentation(), _tiny_config(**kw), str(workdir), resume=resume).run(
        stop_at_step=stop_at_step
    )


@pytest.mark.slow  # three tiny runs on the engine: ~1 min on a quiet 2-core machine
def test_segmentation_task_writes_outputs_selects_on_validation_and_resumes(tmp_path):
    full = _seg_run(tmp_path / "full")
    for f in ("metrics.json", "predictions.png", "curves.png"):
        assert (tmp_path / "full" / f).stat().st_size > 0
    m = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert m["task"] == "segmentation"
    assert [h["step"] for h in m["history"]] == [2, 4]
    # selection on the validation canvases only; the test canvases at the end
    assert all("val_mean_iou" in h and "test_mean_iou" not in h for h in m["history"])
    assert np.array(m["final"]["test_confusion"]).sum() == 6 * 32 * 32
    assert 0.0 <= m["final"]["test_mean_iou"] <= 1.0
    assert m["facts"]["num_validation_digits"] == 40 and m["facts"]["num_train_digits"] == 360
    part = _seg_run(tmp_path / "part", stop_at_step=3)
    assert part["preempted"] and part["step"] == 3
    resumed = _seg_run(tmp_path / "part", resume=True)
    chex.assert_trees_all_close(resumed["state"].params, full["state"].params, atol=1e-5)
    assert resumed["test_mean_iou"] == pytest.approx(full["test_mean_iou"])


def test_segmentation_task_rejects_bad_configs_before_training(tmp_path):
    from jaxcnn.train.config import ConfigError

    with pytest.raises(ConfigError, match="classification model"):
        _seg_run(tmp_path / "a", model="resnet18", model_kwargs={})
    with pytest.raises(ConfigError, match="min_digits <= max_digits"):
        _seg_run(tmp_path / "b", min_digits=3, max_digits=2)
    with pytest.raises(ConfigError, match="precision"):
        _seg_run(tmp_path / "c", precision="bf16")
    assert not (tmp_path / "a" / "checkpoints").exists() or not any(
        (tmp_path / "a" / "checkpoints").iterdir()
    )


@pytest.mark.slow
def test_short_experiment_learns_digit_classes(tmp_path):
    """A 500-step version of experiments/configs/unet_canvas.py (~10 min on 2 cores): the
    network must go beyond ink vs background (all-background scores mean IoU ~0.09)."""
    from experiments.configs import unet_canvas
    from jaxcnn.tasks import Segmentation
    from jaxcnn.train import Trainer

    c = unet_canvas.get_config()
    c.update(num_test=200, num_validation=100, epochs=1, steps_per_epoch=500, progress=False)
    r = Trainer(Segmentation(), c, str(tmp_path)).run()
    assert r["test_pixel_accuracy"] > 0.97 and r["test_mean_iou"] > 0.4
