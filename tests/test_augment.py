"""Host augmentation policies (jaxcnn.data.augment): identity at magnitude 0, erasing area,
determinism by seed, every policy changes images at a nonzero setting."""

import numpy as np
import pytest

from jaxcnn.data import augment as A


def _image(channels=3, size=32, seed=0):
    """A smooth image with structure (gradients + a bright square), full 0-255 range."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    base = np.stack([x * 255 / (size - 1), y * 255 / (size - 1), (x + y) * 255 / (2 * size - 2)])
    img = base.transpose(1, 2, 0)[..., :channels]
    img[size // 4 : size // 2, size // 4 : size // 2] = 250
    img = img + rng.normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


# Ops that depend on the magnitude and are the identity at 0 (timm's "increasing" set, plus
# the plain geometric ones). AutoContrast, Equalize and Invert take no magnitude; timm's
# PosterizeIncreasing keeps 4 bits at level 0, so it is not the identity either.
IDENTITY_AT_ZERO = [
    "Rotate",
    "SolarizeIncreasing",
    "SolarizeAdd",
    "ColorIncreasing",
    "ContrastIncreasing",
    "BrightnessIncreasing",
    "SharpnessIncreasing",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
]


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("op", IDENTITY_AT_ZERO)
def test_randaugment_magnitude_zero_is_identity(op, channels):
    img = _image(channels)
    ra = A.RandAugment(num_ops=3, magnitude=0, magnitude_std=0, prob=1.0, ops=(op,))
    for seed in range(3):
        out = ra(img, np.random.default_rng(seed))
        np.testing.assert_array_equal(out, img)
    # ... and the same op at magnitude 9 changes the image (colour ops need colour).
    if channels == 1 and op == "ColorIncreasing":
        return
    ra9 = A.RandAugment(num_ops=1, magnitude=9, magnitude_std=0, prob=1.0, ops=(op,))
    assert not np.array_equal(ra9(img, np.random.default_rng(0)), img)


@pytest.mark.parametrize("op", ["AutoContrast", "Equalize", "Invert", "PosterizeIncreasing"])
def test_randaugment_magnitude_free_ops_change_images(op):
    img = _image(3) // 2 + 40  # low contrast, so AutoContrast / Equalize have work to do
    ra = A.RandAugment(num_ops=1, magnitude=0, magnitude_std=0, prob=1.0, ops=(op,))
    assert not np.array_equal(ra(img, np.random.default_rng(0)), img)


def test_randaugment_magnitude_scale_follows_timm():
    # Rotate at magnitude 10 turns by 30 degrees (timm's max); a 90-degree turn of a square
    # image equals np.rot90, so check the scale through a magnitude of 30 (clipped at 10 unless
    # magnitude_max allows it).
    img = _image(3)
    rot = A.RandAugment(
        num_ops=1,
        magnitude=30,
        magnitude_std=0,
        prob=1.0,
        ops=("Rotate",),
        magnitude_max=30,
        interpolation="nearest",
    )
    out = rot(img, np.random.default_rng(0))
    turned = [np.rot90(img, 1), np.rot90(img, -1)]
    assert any(np.array_equal(out, t) for t in turned)


def test_posterize_keeps_high_bits_down_to_zero_bits():
    img = _image(3)
    for bits in (7, 4, 1):
        out = A.apply_op(img, "Posterize", bits)
        np.testing.assert_array_equal(out, img & (0xFF << (8 - bits) & 0xFF))
    np.testing.assert_array_equal(A.apply_op(img, "Posterize", 8), img)
    # timm's PosterizeIncreasing at level 10 keeps 0 bits: black (Pillow >= 12 refuses 0 itself)
    ra = A.RandAugment(
        num_ops=1, magnitude=10, magnitude_std=0, prob=1.0, ops=("PosterizeIncreasing",)
    )
    assert not ra(img, np.random.default_rng(0)).any()


def test_randaugment_prob_zero_and_num_ops_zero_are_identity():
    img = _image(3)
    for ra in (A.RandAugment(prob=0.0), A.RandAugment(num_ops=0)):
        np.testing.assert_array_equal(ra(img, np.random.default_rng(1)), img)


def _policies():
    return {
        "randaugment": A.RandAugment(num_ops=2, magnitude=9),
        "trivialaugment": A.TrivialAugment(),
        "autoaugment": A.AutoAugment(),
        "colorjitter": A.ColorJitter(0.4, 0.4, 0.4, 0.1),
    }


@pytest.mark.parametrize("name", list(_policies()))
def test_policies_deterministic_by_seed_and_change_images(name):
    pol = _policies()[name]
    imgs = [_image(3, seed=i) for i in range(12)]

    def run(seed):
        rng = np.random.default_rng(seed)
        return [pol(im, rng) for im in imgs]

    a, b, c = run(7), run(7), run(8)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, y) for x, y in zip(a, c)), "seed does not matter"
    changed = sum(not np.array_equal(x, im) for x, im in zip(a, imgs))
    assert changed >= 6, f"{name} changed only {changed} of 12 images"
    for x in a:
        assert x.dtype == np.uint8 and x.shape == (32, 32, 3)


@pytest.mark.parametrize("name", ["randaugment", "trivialaugment", "autoaugment"])
def test_policies_keep_grayscale_shape(name):
    pol = _policies()[name]
    img = _image(1)
    out = [pol(img, np.random.default_rng(s)) for s in range(8)]
    assert all(o.shape == (32, 32, 1) and o.dtype == np.uint8 for o in out)
    assert any(not np.array_equal(o, img) for o in out)


def test_trivialaugment_and_autoaugment_use_their_op_sets():
    assert len(A._TRIVIAL_OPS) == 14 and "Invert" not in A._TRIVIAL_OPS
    assert len(A.AUTOAUGMENT_IMAGENET) == 25
    ops = {op for sub in A.AUTOAUGMENT_IMAGENET for op, _, _ in sub}
    assert ops <= set(A.OPS)


def test_colour_jitter_zero_is_identity_and_saturation_skips_gray():
    img = _image(3)
    np.testing.assert_array_equal(A.ColorJitter()(img, np.random.default_rng(0)), img)
    gray = _image(1)
    cj = A.ColorJitter(saturation=0.8, hue=0.4)
    np.testing.assert_array_equal(cj(gray, np.random.default_rng(0)), gray)
    assert not np.array_equal(cj(img, np.random.default_rng(0)), img)


@pytest.mark.parametrize("mode", ["const", "rand", "pixel"])
def test_random_erasing_area_and_fill(mode):
    er = A.RandomErasing(prob=1.0, area=(0.1, 0.2), min_aspect=0.5, mode=mode)
    h, w = 40, 50
    for seed in range(20):
        img = np.full((h, w, 3), 7.0, np.float32)
        out = er(img, np.random.default_rng(seed))
        erased = np.any(out != 7.0, axis=-1)
        ys, xs = np.nonzero(erased)
        bh, bw = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        assert erased.sum() == bh * bw, "erased region is not one rectangle"
        frac = bh * bw / (h * w)
        assert 0.1 * 0.8 <= frac <= 0.2 * 1.25, frac  # rounding of h, w to whole pixels
        assert 0.5 / 1.3 <= bh / bw <= 2.0 * 1.3
        box = out[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
        if mode == "const":
            assert np.all(box == 0)
        elif mode == "rand":
            assert np.all(box == box[:1, :1])  # one colour per box
        else:
            assert np.unique(box).size > bh * bw  # per-pixel noise
            assert abs(box.mean()) < 0.5 and 0.6 < box.std() < 1.4
        np.testing.assert_array_equal(img, 7.0)  # input not modified


def test_random_erasing_probability_and_uint8():
    er = A.RandomErasing(prob=0.25)
    img = np.full((32, 32, 3), 100, np.uint8)
    rng = np.random.default_rng(0)
    fired = sum(not np.array_equal(er(img, rng), img) for _ in range(400))
    assert 70 <= fired <= 130, fired
    out = A.RandomErasing(prob=1.0, mode="pixel")(img, np.random.default_rng(1))
    assert out.dtype == np.uint8 and (out != 100).sum() > 20


def test_policies_from_config():
    pol = A.policies_from_config({})
    assert pol.image is None and pol.normalized is None
    pol = A.policies_from_config(
        {
            "augment_policy": "randaugment",
            "randaugment_num_ops": 3,
            "randaugment_magnitude": 7,
            "color_jitter": 0.4,
            "random_erasing": 0.25,
            "unrelated_key": 1,
        }
    )
    ra, cj = pol.image.policies
    assert ra.num_ops == 3 and ra.magnitude == 7 and ra.ops == A.RAND_INCREASING_OPS
    assert (cj.brightness, cj.contrast, cj.saturation, cj.hue) == (0.4, 0.4, 0.4, 0.0)
    assert pol.normalized.prob == 0.25 and pol.normalized.mode == "pixel"
    assert isinstance(
        A.policies_from_config({"augment_policy": "trivialaugment"}).image, A.TrivialAugment
    )
    assert isinstance(
        A.policies_from_config({"augment_policy": "autoaugment"}).image, A.AutoAugment
    )
    with pytest.raises(ValueError, match="augment_policy 'randaug'"):
        A.policies_from_config({"augment_policy": "randaug"})
    with pytest.raises(ValueError, match="mode"):
        A.policies_from_config({"random_erasing": 0.5, "random_erasing_mode": "zeros"})


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="uint8"):
        A.RandAugment()(np.zeros((8, 8, 3), np.float32), np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown ops"):
        A.RandAugment(ops=("Rotate", "Wobble"))


@pytest.mark.parametrize("channels", [1, 3])
def test_every_op_runs_at_every_magnitude(channels):
    # Every op of every policy at its extremes: no Pillow argument error anywhere in the range.
    img = _image(channels)
    for ops in (A.RAND_OPS, A.RAND_INCREASING_OPS):
        for m in (0, 5, 10):
            for op in ops:
                ra = A.RandAugment(num_ops=1, magnitude=m, magnitude_std=0, prob=1.0, ops=(op,))
                out = ra(img, np.random.default_rng(m))
                assert out.shape == img.shape and out.dtype == np.uint8
    rng = np.random.default_rng(0)
    for pol in (A.TrivialAugment(), A.AutoAugment(), A.RandAugment(magnitude=10, magnitude_std=1)):
        for _ in range(150):
            assert pol(img, rng).shape == img.shape
