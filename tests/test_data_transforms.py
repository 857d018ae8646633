"""Host-side transforms (PIL): the CIFAR / ImageNet / MNIST train-eval pairs, channel and size
fitting, normalisation, seeded determinism, and preprocess_from_config's choices."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from jaxcnn import data
from jaxcnn.data import transforms as T
from jaxcnn.models import ModelInfo


def rng(seed=0):
    return np.random.default_rng(seed)


def test_fit_size_pads_small_gaps_and_resizes_large_ones():
    img = np.full((28, 28, 1), 200, np.uint8)
    out = T.fit_size(img, (32, 32))
    assert out.shape == (32, 32, 1) and out[:2].max() == 0 and out[2:30, 2:30].min() == 200
    out = T.fit_size(np.full((8, 8, 1), 0.5, np.float32), (28, 28))  # float: mode F
    assert out.shape == (28, 28, 1) and out.dtype == np.float32
    np.testing.assert_allclose(out, 0.5, atol=1e-5)
    big = T.fit_size(np.full((64, 48, 3), 90, np.uint8), (32, 32))
    assert big.shape == (32, 32, 3) and big.dtype == np.uint8 and np.all(big == 90)


def test_imagenet_eval_resizes_shorter_side_and_centre_crops():
    # a 300x400 image whose centre 224x224 after resizing to 256 is white, the rest black
    h, w = 300, 400
    img = np.zeros((h, w, 3), np.uint8)
    img[h // 2 - 100 : h // 2 + 100, w // 2 - 100 : w // 2 + 100] = 255
    x = T.imagenet_eval(img, 224, mean=(0, 0, 0), std=(1, 1, 1))
    assert x.shape == (224, 224, 3) and x.dtype == np.float32
    # the same through PIL by hand: shorter side 256 (floor(224 / 0.875)), centre crop
    ref = Image.fromarray(img).resize((int(256 * w / h), 256), Image.Resampling.BILINEAR)
    rw, rh = ref.size
    left, top = int(round((rw - 224) / 2)), int(round((rh - 224) / 2))
    ref = np.asarray(ref.crop((left, top, left + 224, top + 224)), np.float32) / 255
    np.testing.assert_allclose(x, ref, atol=1e-6)
    norm = T.imagenet_eval(img, 224)
    np.testing.assert_allclose(norm[0, 0], (0 - np.array(T.IMAGENET_MEAN)) / T.IMAGENET_STD, 1e-5)
    y = T.imagenet_eval(img, 224, crop_pct=1.0, interpolation="bicubic")
    assert y.shape == (224, 224, 3) and not np.allclose(y, norm)
    with pytest.raises(ValueError, match="interpolation='cubic'"):
        T.imagenet_eval(img, 224, interpolation="cubic")


def test_imagenet_eval_accepts_paths_and_pil(tmp_path):
    img = rng().integers(0, 255, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "a.png")
    a = T.imagenet_eval(tmp_path / "a.png", 32)
    b = T.imagenet_eval(Image.open(tmp_path / "a.png"), 32)
    c = T.imagenet_eval(img, 32)
    np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(b, c)
    (tmp_path / "bad.jpg").write_bytes(b"xx")
    with pytest.raises(ValueError, match="cannot decode image .*bad.jpg"):
        T.imagenet_eval(tmp_path / "bad.jpg", 32)


def test_random_resized_crop_and_flip():
    img = np.arange(40 * 60 * 3, dtype=np.uint8).reshape(40, 60, 3)
    out = T.random_resized_crop(img, (24, 24), rng(1))
    assert out.shape == (24, 24, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, T.random_resized_crop(img, (24, 24), rng(1)))
    assert not np.array_equal(out, T.random_resized_crop(img, (24, 24), rng(2)))
    whole = T.random_resized_crop(img, (40, 60), rng(0), scale=(1, 1), ratio=(1.5, 1.5))
    np.testing.assert_array_equal(whole, img)  # the full image at its own size
    np.testing.assert_array_equal(T.hflip(img)[:, 0], img[:, -1])


def test_random_shift_is_bounded_and_zero_filled():
    img = np.zeros((9, 9, 1), np.uint8)
    img[4, 4] = 255
    seen = set()
    for s in range(60):
        out = T.random_shift(img, 2, rng(s))
        (r,), (c,) = np.nonzero(out[..., 0])
        assert abs(r - 4) <= 2 and abs(c - 4) <= 2 and out.sum() == 255
        seen.add((r, c))
    assert len(seen) > 15  # all 25 offsets are possible


def test_channels_and_normalisation():
    gray = np.full((4, 4, 1), 0.5, np.float32)
    assert T.to_channels(gray, 3).shape == (4, 4, 3)
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 1] = 255
    np.testing.assert_allclose(T.to_channels(rgb, 1), 0.587, atol=1e-6)  # luma of pure green
    with pytest.raises(ValueError, match="2 channels; the model expects 3"):
        T.to_channels(np.zeros((4, 4, 2), np.float32), 3)
    pre = data.Preprocess((4, 4), 3, mean=(0.5,), std=(0.25,))
    np.testing.assert_allclose(pre(gray), 0.0, atol=1e-6)
    with pytest.raises(ValueError, match="mean has 2 values"):
        data.Preprocess((4, 4), 3, mean=(0.5, 0.5))
    with pytest.raises(ValueError, match="transform kind 'resnet'"):
        data.Preprocess((4, 4), 3, kind="resnet")


def test_cifar_pair():
    img = rng().integers(0, 255, (32, 32, 3), dtype=np.uint8)
    pre = data.Preprocess((32, 32), 3, kind="cifar", shift=4, flip=True)
    np.testing.assert_array_equal(pre(img), T.to_float(img))  # eval: none
    outs = [pre(img, rng(s)) for s in range(20)]
    assert all(o.shape == (32, 32, 3) for o in outs)
    assert len({o.tobytes() for o in outs}) > 10
    flip_only = pre.replace(shift=0)
    seen = {flip_only(img, rng(s)).tobytes() for s in range(20)}
    assert seen == {T.to_float(img).tobytes(), T.to_float(img)[:, ::-1].tobytes()}


def info(size=(32, 32, 3), **extra):
    return ModelInfo("m", "f", 1, size, extra=extra)


def test_preprocess_from_config_choices(tmp_path):
    digits = data.load_splits("digits")
    pre = data.preprocess_from_config({"augment_shift": 2}, info((28, 28, 1)), digits)
    assert (pre.kind, pre.size, pre.channels, pre.shift, pre.flip) == (
        "mnist",
        (28, 28),
        1,
        2,
        False,
    )
    x = np.stack([pre(digits.train[i]["image"]) for i in range(len(digits.train))])
    np.testing.assert_allclose(x.mean(), 0, atol=1e-3)  # mean/std from the train split
    np.testing.assert_allclose(x.std(), 1, atol=1e-3)
    x = rng().integers(0, 255, (40, 16, 16, 3), dtype=np.uint8)
    small = data.load_splits("arrays", arrays=(x, np.arange(40) % 2))
    pre = data.preprocess_from_config({}, info(), small)
    assert (pre.kind, pre.shift, pre.flip, len(pre.mean)) == ("cifar", 4, True, 3)
    pre = data.preprocess_from_config(
        {"augment_flip": 0, "mean": (0.5,), "std": (0.2,)}, info(), small
    )
    assert pre.flip is False and pre.mean == (0.5,) and pre.std == (0.2,)
    big = data.load_splits(
        "arrays", arrays=(np.zeros((10, 80, 96, 3), np.uint8), np.arange(10) % 2)
    )
    pre = data.preprocess_from_config(
        {}, info((224, 224, 3), crop_pct=0.9, interpolation="bicubic"), big
    )
    assert (pre.kind, pre.mean, pre.crop_pct, pre.interpolation) == (
        "imagenet",
        T.IMAGENET_MEAN,
        0.9,
        "bicubic",
    )
    pre = data.preprocess_from_config({"input_size": (64, 64), "transform": "none"}, info(), big)
    assert (
        pre.size == (64, 64)
        and pre.kind == "none"
        and pre(big.train[0]["image"]).shape == (64, 64, 3)
    )


def test_augment_policies_from_config_join_the_train_transform():
    import pickle

    x = rng().integers(0, 255, (20, 16, 16, 3), dtype=np.uint8)
    small = data.load_splits("arrays", arrays=(x, np.arange(20) % 2))
    cfg = {
        "augment_policy": "randaugment",
        "random_erasing": 1.0,
        "mean": (0.5,) * 3,
        "std": (0.25,) * 3,
    }
    pre = data.preprocess_from_config(cfg, info((16, 16, 3)), small)
    plain = data.preprocess_from_config(
        {k: cfg[k] for k in ("mean", "std")}, info((16, 16, 3)), small
    )
    assert pre.policy is not None and pre.erasing is not None and plain.policy is None
    img = small.train[0]["image"]
    np.testing.assert_array_equal(pre(img), plain(img))  # eval: no augmentation
    a, b = pre(img, rng(3)), pre(img, rng(3))
    np.testing.assert_array_equal(a, b)  # seeded
    assert a.shape == (16, 16, 3) and a.dtype == np.float32
    assert not np.array_equal(a, plain(img, rng(3)))
    clone = pickle.loads(pickle.dumps(pre))  # what a grain worker receives
    np.testing.assert_array_equal(clone(img, rng(3)), a)
