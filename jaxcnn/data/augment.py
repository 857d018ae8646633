"""Per-example augmentation policies on the host: RandAugment, TrivialAugment, AutoAugment,
colour jitter and random erasing.

Every policy is a callable ``policy(image, rng) -> image`` on one ``(H, W, C)`` image (C = 1 or
3) that draws all of its randomness from the ``numpy.random.Generator`` it is given, so a seeded
pipeline (Grain hands each record its own generator in ``RandomMapTransform.random_map``) gives
the same images on every run. The image policies (:class:`RandAugment`, :class:`TrivialAugment`,
:class:`AutoAugment`, :class:`ColorJitter`) take and return ``uint8``; :class:`RandomErasing`
acts on the *normalised float* image (after mean/std), as timm's does, so a zero fill is the
dataset mean.

The pixel operations are Pillow's (``ImageOps``, ``ImageEnhance``, affine ``transform``), the
same calls timm and torchvision make on PIL images; what is written here is only the policy
logic (which op, which magnitude, how often), with no torch or TensorFlow dependency. Op lists
and magnitude scales follow their references:

- :class:`RandAugment` follows timm's ``rand-m{M}-n{N}-mstd{S}-inc1`` (the DeiT, ConvNeXt and
  ResNet-A1/A2/A3 recipes): magnitude on timm's 0-10 scale, each chosen op applied with
  probability ``prob`` (0.5), Gaussian noise of ``magnitude_std`` on the magnitude, the
  "increasing" op set (``increasing=False`` gives timm's plain set).
- :class:`TrivialAugment` follows torchvision's ``TrivialAugmentWide`` (torchvision's v2 ResNet
  recipe): one op, a uniform magnitude bin out of 31, random sign.
- :class:`AutoAugment` is the paper's ImageNet policy with torchvision's magnitude bins.
- :class:`ColorJitter` is torchvision's (brightness, contrast, saturation, hue in random order).
- :class:`RandomErasing` is timm's (area 2%-33%, log-uniform aspect 0.3-3.3, ``const`` /
  ``rand`` / ``pixel`` fill, up to ``max_count`` boxes).

:func:`policies_from_config` builds both stages from config keys (see ``AUGMENT_DEFAULTS``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, NamedTuple, Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

__all__ = [
    "AUGMENT_DEFAULTS",
    "AUTOAUGMENT_IMAGENET",
    "AugmentPolicies",
    "AutoAugment",
    "ColorJitter",
    "Compose",
    "OPS",
    "RAND_INCREASING_OPS",
    "RAND_OPS",
    "RandAugment",
    "RandomErasing",
    "TrivialAugment",
    "apply_op",
    "policies_from_config",
]

Policy = Callable[[np.ndarray, np.random.Generator], np.ndarray]

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


# ---------------------------------------------------------------------------------------------
# Pixel operations: (PIL image, value, fill, resample) -> PIL image. ``value`` is the op's own
# argument (degrees, enhancement factor, bits, threshold, shear factor, pixels).


def _affine(img, matrix, fill, resample):
    return img.transform(img.size, Image.Transform.AFFINE, matrix, resample, fillcolor=fill)


def _solarize_add(img, add, thresh=128):
    lut = [min(255, i + int(add)) if i < thresh else i for i in range(256)]
    return img.point(lut * len(img.getbands()))


def _posterize(img, bits):
    # Keep the ``bits`` high bits. Pillow >= 12 refuses bits=0, which timm's PosterizeIncreasing
    # reaches at level 10: there it keeps none (a black image), as older Pillow did.
    bits = int(bits)
    if bits >= 8:
        return img
    mask = ~(2 ** (8 - max(bits, 0)) - 1) & 0xFF
    return img.point([i & mask for i in range(256)] * len(img.getbands()))


OPS: dict[str, Callable] = {
    "Identity": lambda img, v, fill, rs: img,
    "AutoContrast": lambda img, v, fill, rs: ImageOps.autocontrast(img),
    "Equalize": lambda img, v, fill, rs: ImageOps.equalize(img),
    "Invert": lambda img, v, fill, rs: ImageOps.invert(img),
    "Rotate": lambda img, v, fill, rs: img.rotate(v, resample=rs, fillcolor=fill),
    "Posterize": lambda img, v, fill, rs: _posterize(img, v),
    "Solarize": lambda img, v, fill, rs: ImageOps.solarize(img, v),
    "SolarizeAdd": lambda img, v, fill, rs: _solarize_add(img, v),
    "Color": lambda img, v, fill, rs: ImageEnhance.Color(img).enhance(v),
    "Contrast": lambda img, v, fill, rs: ImageEnhance.Contrast(img).enhance(v),
    "Brightness": lambda img, v, fill, rs: ImageEnhance.Brightness(img).enhance(v),
    "Sharpness": lambda img, v, fill, rs: ImageEnhance.Sharpness(img).enhance(v),
    "ShearX": lambda img, v, fill, rs: _affine(img, (1, v, 0, 0, 1, 0), fill, rs),
    "ShearY": lambda img, v, fill, rs: _affine(img, (1, 0, 0, v, 1, 0), fill, rs),
    "TranslateX": lambda img, v, fill, rs: _affine(img, (1, 0, v, 0, 1, 0), fill, rs),
    "TranslateY": lambda img, v, fill, rs: _affine(img, (1, 0, 0, 0, 1, v), fill, rs),
}


def _to_pil(image: np.ndarray) -> Image.Image:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(
            f"augmentation policies take uint8 (H, W, 1 or 3) images; got {image.dtype} "
            f"{tuple(image.shape)}"
        )
    return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def _from_pil(img: Image.Image, channels: int) -> np.ndarray:
    out = np.asarray(img, np.uint8)
    return out[..., None] if channels == 1 else out


def _fill(fill, channels: int):
    if isinstance(fill, (int, float)):
        return int(fill) if channels == 1 else (int(fill),) * 3
    fill = tuple(int(f) for f in fill)
    return int(round(sum(fill) / len(fill))) if channels == 1 else fill


def apply_op(
    image: np.ndarray, name: str, value: float = 0.0, fill=128, interpolation: str = "bilinear"
) -> np.ndarray:
    """Apply one named op of :data:`OPS` with its own argument ``value`` to a uint8 image."""
    if name not in OPS:
        raise ValueError(f"unknown augmentation op {name!r}; expected one of {sorted(OPS)}")
    c = image.shape[-1]
    img = OPS[name](_to_pil(image), value, _fill(fill, c), _RESAMPLE[interpolation])
    return _from_pil(img, c)


def _check_interpolation(interpolation: str):
    if interpolation not in _RESAMPLE:
        raise ValueError(f"interpolation {interpolation!r}: expected one of {sorted(_RESAMPLE)}")


# ---------------------------------------------------------------------------------------------
# RandAugment (timm's level functions; level on the 0-10 scale).

_LEVEL_DENOM = 10.0

# timm's ``_RAND_TRANSFORMS`` and ``_RAND_INCREASING_TRANSFORMS`` (Cutout is RandomErasing).
RAND_OPS = tuple(
    "AutoContrast Equalize Invert Rotate Posterize Solarize SolarizeAdd Color Contrast "
    "Brightness Sharpness ShearX ShearY TranslateXRel TranslateYRel".split()
)
_INCREASING = ("Posterize", "Solarize", "Color", "Contrast", "Brightness", "Sharpness")
RAND_INCREASING_OPS = tuple(o + "Increasing" if o in _INCREASING else o for o in RAND_OPS)


def _signed(v, rng):
    return -v if rng.random() > 0.5 else v


def _enhance_increasing(level, rng, size):
    return max(0.1, 1.0 + _signed(level / _LEVEL_DENOM * 0.9, rng))


# name -> (op of OPS, level -> value); the level functions are timm's ``LEVEL_TO_ARG``.
_RAND_LEVELS: dict[str, tuple[str, Callable]] = {
    "AutoContrast": ("AutoContrast", lambda level, rng, size: 0.0),
    "Equalize": ("Equalize", lambda level, rng, size: 0.0),
    "Invert": ("Invert", lambda level, rng, size: 0.0),
    "Rotate": ("Rotate", lambda level, rng, size: _signed(level / _LEVEL_DENOM * 30.0, rng)),
    "Posterize": ("Posterize", lambda level, rng, size: int(level / _LEVEL_DENOM * 4)),
    "PosterizeIncreasing": (
        "Posterize",
        lambda level, rng, size: 4 - int(level / _LEVEL_DENOM * 4),
    ),
    "Solarize": ("Solarize", lambda level, rng, size: min(256, int(level / _LEVEL_DENOM * 256))),
    "SolarizeIncreasing": (
        "Solarize",
        lambda level, rng, size: 256 - min(256, int(level / _LEVEL_DENOM * 256)),
    ),
    "SolarizeAdd": ("SolarizeAdd", lambda level, rng, size: min(128, int(level / 10.0 * 110))),
    "Color": ("Color", lambda level, rng, size: level / _LEVEL_DENOM * 1.8 + 0.1),
    "ColorIncreasing": ("Color", _enhance_increasing),
    "Contrast": ("Contrast", lambda level, rng, size: level / _LEVEL_DENOM * 1.8 + 0.1),
    "ContrastIncreasing": ("Contrast", _enhance_increasing),
    "Brightness": ("Brightness", lambda level, rng, size: level / _LEVEL_DENOM * 1.8 + 0.1),
    "BrightnessIncreasing": ("Brightness", _enhance_increasing),
    "Sharpness": ("Sharpness", lambda level, rng, size: level / _LEVEL_DENOM * 1.8 + 0.1),
    "SharpnessIncreasing": ("Sharpness", _enhance_increasing),
    "ShearX": ("ShearX", lambda level, rng, size: _signed(level / _LEVEL_DENOM * 0.3, rng)),
    "ShearY": ("ShearY", lambda level, rng, size: _signed(level / _LEVEL_DENOM * 0.3, rng)),
    "TranslateXRel": (
        "TranslateX",
        lambda level, rng, size: _signed(level / _LEVEL_DENOM * 0.45, rng) * size[1],
    ),
    "TranslateYRel": (
        "TranslateY",
        lambda level, rng, size: _signed(level / _LEVEL_DENOM * 0.45, rng) * size[0],
    ),
}


@dataclass(frozen=True)
class RandAugment:
    """RandAugment (Cubuk et al. 2020) with timm's semantics: ``num_ops`` ops drawn uniformly
    with replacement from ``ops``; each applied with probability ``prob`` at ``magnitude`` (0-10
    scale, 10 = each op's maximum: 30 degrees, shear 0.3, translate 45%, enhance x(1 +/- 0.9)),
    plus ``N(0, magnitude_std)`` noise per op (``inf``: uniform in [0, magnitude]), clipped to
    [0, ``magnitude_max``]. ``fill`` is the colour uncovered by geometric ops (timm: the
    dataset mean, 128 by default)."""

    num_ops: int = 2
    magnitude: float = 9.0
    magnitude_std: float = 0.5
    prob: float = 0.5
    ops: Sequence[str] = RAND_INCREASING_OPS
    magnitude_max: float = 10.0
    fill: int | tuple = 128
    interpolation: str = "bilinear"

    def __post_init__(self):
        bad = [o for o in self.ops if o not in _RAND_LEVELS]
        if bad:
            raise ValueError(f"RandAugment: unknown ops {bad}; expected some of {RAND_OPS}")
        if self.num_ops < 0 or self.magnitude < 0 or not 0 <= self.prob <= 1:
            raise ValueError(
                f"RandAugment: num_ops >= 0, magnitude >= 0 and 0 <= prob <= 1 expected; got "
                f"num_ops={self.num_ops}, magnitude={self.magnitude}, prob={self.prob}"
            )
        _check_interpolation(self.interpolation)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        size = image.shape[:2]
        for i in rng.integers(0, len(self.ops), self.num_ops):
            if self.prob < 1.0 and rng.random() > self.prob:
                continue
            m = self.magnitude
            if self.magnitude_std == float("inf"):
                m = rng.uniform(0, m)
            elif self.magnitude_std > 0:
                m = rng.normal(m, self.magnitude_std)
            m = max(0.0, min(m, self.magnitude_max))
            op, level = _RAND_LEVELS[self.ops[i]]
            image = apply_op(image, op, level(m, rng, size), self.fill, self.interpolation)
        return image


# ---------------------------------------------------------------------------------------------
# TrivialAugment and AutoAugment (torchvision's magnitude bins).


def _bins(lo, hi, n):
    return np.linspace(lo, hi, n)


def _tv_space(num_bins: int, size, wide: bool) -> dict[str, tuple[np.ndarray | None, bool]]:
    """torchvision's ``_augmentation_space``: op -> (magnitude per bin, signed)."""
    h, w = size
    enh = 0.99 if wide else 0.9
    post = 6 if wide else 4
    return {
        "Identity": (None, False),
        "ShearX": (_bins(0, 0.99 if wide else 0.3, num_bins), True),
        "ShearY": (_bins(0, 0.99 if wide else 0.3, num_bins), True),
        "TranslateX": (_bins(0, 32.0 if wide else 150.0 / 331.0 * w, num_bins), True),
        "TranslateY": (_bins(0, 32.0 if wide else 150.0 / 331.0 * h, num_bins), True),
        "Rotate": (_bins(0, 135.0 if wide else 30.0, num_bins), True),
        "Brightness": (_bins(0, enh, num_bins), True),
        "Color": (_bins(0, enh, num_bins), True),
        "Contrast": (_bins(0, enh, num_bins), True),
        "Sharpness": (_bins(0, enh, num_bins), True),
        "Posterize": (8 - np.round(np.arange(num_bins) / ((num_bins - 1) / post)), False),
        "Solarize": (_bins(255.0, 0.0, num_bins), False),
        "AutoContrast": (None, False),
        "Equalize": (None, False),
        "Invert": (None, False),
    }


_ENHANCE = ("Brightness", "Color", "Contrast", "Sharpness")


def _tv_apply(image, op, magnitude, fill, interpolation):
    """torchvision's ``_apply_op``: enhance ops take ``1 + magnitude``; translations move the
    content by ``int(magnitude)`` pixels towards +x / +y (PIL's matrix takes the opposite)."""
    if op in _ENHANCE:
        magnitude = 1.0 + magnitude
    elif op in ("TranslateX", "TranslateY"):
        magnitude = -float(int(magnitude))
    return apply_op(image, op, magnitude, fill, interpolation)


_TRIVIAL_OPS = tuple(k for k in _tv_space(2, (1, 1), True) if k != "Invert")


@dataclass(frozen=True)
class TrivialAugment:
    """TrivialAugment Wide (Müller & Hutter 2021) as torchvision's ``TrivialAugmentWide``: one
    op drawn uniformly from 14 (identity included), a magnitude bin drawn uniformly out of
    ``num_magnitude_bins`` over the wide ranges (rotate 135 degrees, shear 0.99, translate 32
    px, enhance x(1 +/- 0.99), posterize to 2 bits, solarize), random sign."""

    num_magnitude_bins: int = 31
    fill: int | tuple = 0
    interpolation: str = "nearest"

    def __post_init__(self):
        if self.num_magnitude_bins < 2:
            raise ValueError(
                f"TrivialAugment: num_magnitude_bins >= 2, got {self.num_magnitude_bins}"
            )
        _check_interpolation(self.interpolation)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        space = _tv_space(self.num_magnitude_bins, image.shape[:2], wide=True)
        op = _TRIVIAL_OPS[rng.integers(len(_TRIVIAL_OPS))]
        mags, signed = space[op]
        m = float(mags[rng.integers(len(mags))]) if mags is not None else 0.0
        if signed and rng.integers(2):
            m = -m
        return _tv_apply(image, op, m, self.fill, self.interpolation)


# The ImageNet policy of AutoAugment (Cubuk et al. 2019, appendix), as torchvision lists it:
# 25 sub-policies of two (op, probability, magnitude bin of 10) each.
AUTOAUGMENT_IMAGENET = (
    (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
    (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
    (("Equalize", 0.4, None), ("Rotate", 0.8, 8)),
    (("Solarize", 0.6, 3), ("Equalize", 0.6, None)),
    (("Posterize", 0.8, 5), ("Equalize", 1.0, None)),
    (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
    (("Equalize", 0.6, None), ("Posterize", 0.4, 6)),
    (("Rotate", 0.8, 8), ("Color", 0.4, 0)),
    (("Rotate", 0.4, 9), ("Equalize", 0.6, None)),
    (("Equalize", 0.0, None), ("Equalize", 0.8, None)),
    (("Invert", 0.6, None), ("Equalize", 1.0, None)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
    (("Color", 0.8, 8), ("Solarize", 0.8, 7)),
    (("Sharpness", 0.4, 7), ("Invert", 0.6, None)),
    (("ShearX", 0.6, 5), ("Equalize", 1.0, None)),
    (("Color", 0.4, 0), ("Equalize", 0.6, None)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Invert", 0.6, None), ("Equalize", 1.0, None)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
)


@dataclass(frozen=True)
class AutoAugment:
    """AutoAugment's ImageNet policy: one of 25 sub-policies drawn uniformly; each of its two
    ops applied with its probability at its magnitude bin (torchvision's 10 bins), random sign
    for signed ops."""

    policy: tuple = AUTOAUGMENT_IMAGENET
    fill: int | tuple = 0
    interpolation: str = "nearest"

    def __post_init__(self):
        _check_interpolation(self.interpolation)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        space = _tv_space(10, image.shape[:2], wide=False)
        sub = self.policy[rng.integers(len(self.policy))]
        probs, signs = rng.random(2), rng.integers(0, 2, 2)
        for i, (op, p, bin_) in enumerate(sub):
            if probs[i] <= p:
                mags, signed = space[op]
                if bin_ is None:
                    m = 0.0
                elif mags is None:
                    raise ValueError(f"AutoAugment policy: {op} takes no magnitude, got bin {bin_}")
                else:
                    m = float(mags[bin_])
                if signed and signs[i] == 0:
                    m = -m
                image = _tv_apply(image, op, m, self.fill, self.interpolation)
        return image


# ---------------------------------------------------------------------------------------------
# Colour jitter and random erasing.


def _adjust_hue(img: Image.Image, hue: float) -> Image.Image:
    h, s, v = img.convert("HSV").split()
    np_h = np.asarray(h, np.uint8) + np.uint8(np.int32(hue * 255) % 256)
    return Image.merge("HSV", (Image.fromarray(np_h.astype(np.uint8), "L"), s, v)).convert("RGB")


@dataclass(frozen=True)
class ColorJitter:
    """torchvision's ``ColorJitter``: brightness, contrast and saturation factors uniform in
    [max(0, 1 - x), 1 + x], hue shift uniform in [-hue, hue] (fraction of the colour wheel), the
    four applied in a random order. Saturation and hue leave single-channel images alone."""

    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0

    def __post_init__(self):
        if min(self.brightness, self.contrast, self.saturation) < 0 or not 0 <= self.hue <= 0.5:
            raise ValueError(
                "ColorJitter: brightness, contrast, saturation >= 0 and 0 <= hue <= 0.5 expected; "
                f"got {self.brightness}, {self.contrast}, {self.saturation}, {self.hue}"
            )

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        c = image.shape[-1]
        img = _to_pil(image)
        order = rng.permutation(4)
        b, ct, s = (rng.uniform(max(0.0, 1 - x), 1 + x) for x in self._bcs())
        h = rng.uniform(-self.hue, self.hue)
        for i in order:
            if i == 0 and self.brightness:
                img = ImageEnhance.Brightness(img).enhance(b)
            elif i == 1 and self.contrast:
                img = ImageEnhance.Contrast(img).enhance(ct)
            elif i == 2 and self.saturation and c == 3:
                img = ImageEnhance.Color(img).enhance(s)
            elif i == 3 and self.hue and c == 3:
                img = _adjust_hue(img, h)
        return _from_pil(img, c)

    def _bcs(self):
        return self.brightness, self.contrast, self.saturation


@dataclass(frozen=True)
class RandomErasing:
    """Random erasing (Zhong et al. 2020) as timm's ``RandomErasing``, on one image *after*
    normalisation (float ``(H, W, C)``; uint8 works too). With probability ``prob``, erase
    ``count`` boxes (``count`` drawn from [1, ``max_count``]) each covering a fraction of the
    image uniform in ``area`` (divided by ``count``), aspect ratio log-uniform in
    ``[min_aspect, 1 / min_aspect]``; up to 10 tries per box to fit. ``mode``: ``"const"``
    fills zeros (the mean, after normalisation), ``"rand"`` one standard-normal colour per box,
    ``"pixel"`` standard-normal noise per pixel (uint8 images: uniform 0-255 instead)."""

    prob: float = 0.25
    area: tuple[float, float] = (0.02, 1 / 3)
    min_aspect: float = 0.3
    mode: str = "pixel"
    max_count: int = 1

    def __post_init__(self):
        if self.mode not in ("const", "rand", "pixel"):
            raise ValueError(f"RandomErasing: mode {self.mode!r}; expected const, rand or pixel")
        lo, hi = self.area
        if not (0 <= self.prob <= 1 and 0 < lo <= hi < 1 and 0 < self.min_aspect <= 1):
            raise ValueError(
                "RandomErasing: 0 <= prob <= 1, 0 < area[0] <= area[1] < 1, 0 < min_aspect <= 1 "
                f"expected; got prob={self.prob}, area={self.area}, min_aspect={self.min_aspect}"
            )
        if self.max_count < 1:
            raise ValueError(f"RandomErasing: max_count >= 1 expected, got {self.max_count}")

    def boxes(self, height: int, width: int, rng: np.random.Generator) -> list[tuple]:
        """The ``(top, left, h, w)`` boxes one call erases (empty when it does not fire)."""
        if rng.random() > self.prob:
            return []
        count = 1 if self.max_count == 1 else int(rng.integers(1, self.max_count + 1))
        log_aspect = (math.log(self.min_aspect), math.log(1 / self.min_aspect))
        out = []
        for _ in range(count):
            for _attempt in range(10):
                target = rng.uniform(*self.area) * height * width / count
                aspect = math.exp(rng.uniform(*log_aspect))
                h = int(round(math.sqrt(target * aspect)))
                w = int(round(math.sqrt(target / aspect)))
                if w < width and h < height:
                    out.append(
                        (
                            int(rng.integers(0, height - h + 1)),
                            int(rng.integers(0, width - w + 1)),
                            h,
                            w,
                        )
                    )
                    break
        return out

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        boxes = self.boxes(image.shape[0], image.shape[1], rng)
        if not boxes:
            return image
        image = np.array(image, copy=True)
        c = image.shape[-1]
        for top, left, h, w in boxes:
            shape = (h, w, c) if self.mode == "pixel" else (1, 1, c)
            if self.mode == "const":
                fill = np.zeros(shape, image.dtype)
            elif image.dtype == np.uint8:
                fill = rng.integers(0, 256, shape, dtype=np.uint8)
            else:
                fill = rng.standard_normal(shape).astype(image.dtype)
            image[top : top + h, left : left + w] = fill
        return image


@dataclass(frozen=True)
class Compose:
    """Apply ``policies`` in order, each with the same generator."""

    policies: tuple = field(default_factory=tuple)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        for p in self.policies:
            image = p(image, rng)
        return image


# ---------------------------------------------------------------------------------------------
# From a config.

AUGMENT_DEFAULTS: dict = {
    "augment_policy": "none",  # none | randaugment | trivialaugment | autoaugment
    "randaugment_num_ops": 2,
    "randaugment_magnitude": 9.0,  # timm's 0-10 scale
    "randaugment_magnitude_std": 0.5,
    "randaugment_prob": 0.5,
    "randaugment_increasing": True,  # timm's "inc1" op set
    "color_jitter": 0.0,  # float (brightness = contrast = saturation) or 3/4-tuple (+ hue)
    "random_erasing": 0.0,  # probability
    "random_erasing_mode": "pixel",  # const | rand | pixel
    "random_erasing_area": (0.02, 1 / 3),
    "random_erasing_min_aspect": 0.3,
    "random_erasing_count": 1,
}


class AugmentPolicies(NamedTuple):
    """``image``: apply to the uint8 image before normalisation; ``normalized``: apply to the
    normalised float image. Either is None when the config switches nothing on."""

    image: Policy | None
    normalized: Policy | None


def policies_from_config(
    cfg: Mapping, *, fill: int | tuple = 128, interpolation: str = "bilinear"
) -> AugmentPolicies:
    """Build the two augmentation stages from the keys of :data:`AUGMENT_DEFAULTS` (missing keys
    take those defaults; other keys are ignored). ``fill`` is the colour geometric ops leave
    uncovered (timm: the dataset mean in 0-255) and ``interpolation`` their resampling, both
    for RandAugment; TrivialAugment and AutoAugment keep torchvision's (black, nearest).

    Order: policy, then colour jitter (uint8), then random erasing (after normalisation).
    Unlike timm, colour jitter is not switched off when a policy is on: set what you want.
    """
    c = {**AUGMENT_DEFAULTS, **{k: cfg[k] for k in AUGMENT_DEFAULTS if k in cfg}}
    stages: list[Policy] = []
    name = (c["augment_policy"] or "none").lower()
    if name == "randaugment":
        ops = RAND_INCREASING_OPS if c["randaugment_increasing"] else RAND_OPS
        stages.append(
            RandAugment(
                num_ops=int(c["randaugment_num_ops"]),
                magnitude=float(c["randaugment_magnitude"]),
                magnitude_std=float(c["randaugment_magnitude_std"]),
                prob=float(c["randaugment_prob"]),
                ops=ops,
                fill=fill,
                interpolation=interpolation,
            )
        )
    elif name == "trivialaugment":
        stages.append(TrivialAugment())
    elif name == "autoaugment":
        stages.append(AutoAugment())
    elif name != "none":
        raise ValueError(
            f"augment_policy {c['augment_policy']!r}: expected none, randaugment, "
            "trivialaugment or autoaugment"
        )
    cj = c["color_jitter"]
    if cj:
        cj = (float(cj),) * 3 if isinstance(cj, (int, float)) else tuple(float(x) for x in cj)
        if len(cj) not in (3, 4):
            raise ValueError(
                f"color_jitter: a float or 3/4 values expected, got {c['color_jitter']!r}"
            )
        stages.append(ColorJitter(*cj))
    image = None if not stages else stages[0] if len(stages) == 1 else Compose(tuple(stages))
    normalized = None
    if c["random_erasing"]:
        area_lo, area_hi = c["random_erasing_area"]
        normalized = RandomErasing(
            prob=float(c["random_erasing"]),
            area=(float(area_lo), float(area_hi)),
            min_aspect=float(c["random_erasing_min_aspect"]),
            mode=c["random_erasing_mode"],
            max_count=int(c["random_erasing_count"]),
        )
    return AugmentPolicies(image, normalized)
