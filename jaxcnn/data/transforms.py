"""Per-example image transforms on the host (PIL), seeded per example, and :class:`Preprocess`.

Each function takes one image ``(H, W, C)``, uint8 (0..255) or float (0..1), and returns one;
random ones take a ``numpy.random.Generator``. The standard train/eval pairs:

- ``"mnist"``: fit to the input size (pad when at most 4 px short, else antialiased resize);
  train: random shift by up to ``shift`` px (zero fill), optional flip;
- ``"cifar"``: the same with ``shift=4`` (4-px zero pad + random crop) and a horizontal flip;
- ``"imagenet"``: train: random-resized-crop (scale 0.08-1, ratio 3/4-4/3) + flip; eval:
  resize the shorter side to ``size / crop_pct`` and take the centre crop (timm / torchvision);
- ``"none"``: fit to the input size only.

Then gray -> RGB (repeat) or RGB -> gray (ITU-R 601 luma) to the model's channels, scale to
[0, 1] and normalise with ``mean``/``std``. Geometry matches torchvision's (``Resize``,
``CenterCrop``, ``RandomResizedCrop``) so that converted weights see the inputs they were
trained on.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Callable

import numpy as np
from PIL import Image

__all__ = [
    "Preprocess",
    "preprocess_from_config",
    "splits_from_config",
    "imagenet_eval",
    "compute_mean_std",
    "auto_kind",
    "fit_size",
    "resize",
    "resize_shorter",
    "center_crop",
    "random_resized_crop",
    "random_shift",
    "hflip",
    "to_channels",
    "to_float",
    "load_image",
    "CONFIG_DEFAULTS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "KINDS",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
KINDS = ("mnist", "cifar", "imagenet", "none")
INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


def _resample(interpolation: str):
    try:
        return INTERPOLATIONS[interpolation]
    except KeyError:
        raise ValueError(
            f"interpolation={interpolation!r}; expected one of {sorted(INTERPOLATIONS)}"
        ) from None


def _pil_resize(img: np.ndarray, size_hw, interpolation: str, box=None) -> np.ndarray:
    """Resize ``img`` (optionally its ``box`` (x0, y0, x1, y1)) to ``size_hw`` with PIL (which
    antialiases when shrinking). uint8 1/3/4-channel images go through PIL's 8-bit modes; float
    images (or other channel counts) channel by channel in mode ``F``."""
    h, w = int(size_hw[0]), int(size_hw[1])
    resample = _resample(interpolation)
    if img.dtype == np.uint8 and img.shape[2] in (1, 3, 4):
        mode = {1: "L", 3: "RGB", 4: "RGBA"}[img.shape[2]]
        src = img[..., 0] if img.shape[2] == 1 else img
        out = np.asarray(Image.fromarray(src, mode).resize((w, h), resample, box=box))
        return out.reshape(h, w, img.shape[2])
    chans = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(img[..., c], np.float32), "F").resize(
                (w, h), resample, box=box
            )
        )
        for c in range(img.shape[2])
    ]
    out = np.stack(chans, -1)
    return out.astype(img.dtype) if img.dtype != np.uint8 else np.clip(out, 0, 255).astype(np.uint8)


def resize(img: np.ndarray, size, interpolation: str = "bilinear") -> np.ndarray:
    """Resize to ``size`` ``(h, w)``."""
    if tuple(img.shape[:2]) == tuple(size):
        return img
    return _pil_resize(img, size, interpolation)


def resize_shorter(img: np.ndarray, side: int, interpolation: str = "bilinear") -> np.ndarray:
    """Resize so that the shorter side is ``side`` (the longer one ``int(side * long / short)``,
    as torchvision's ``Resize(int)``)."""
    h, w = img.shape[:2]
    if h <= w:
        size = (side, int(side * w / h))
    else:
        size = (int(side * h / w), side)
    return resize(img, size, interpolation)


def center_crop(img: np.ndarray, size) -> np.ndarray:
    """The centre ``(h, w)`` crop (torchvision's rounding); zero-padded first when smaller."""
    th, tw = size
    h, w = img.shape[:2]
    if h < th or w < tw:
        ph, pw = max(th - h, 0), max(tw - w, 0)
        img = np.pad(img, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
        h, w = img.shape[:2]
    top, left = int(round((h - th) / 2.0)), int(round((w - tw) / 2.0))
    return img[top : top + th, left : left + tw]


def fit_size(img: np.ndarray, size, interpolation: str = "bilinear") -> np.ndarray:
    """Pad (zeros, centred) when at most 4 px short on each axis (MNIST 28 -> 32), else resize
    (antialiased) to ``size``."""
    h, w = img.shape[:2]
    th, tw = size
    if (h, w) == (th, tw):
        return img
    if 0 <= th - h <= 4 and 0 <= tw - w <= 4:
        ph, pw = th - h, tw - w
        return np.pad(img, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    return resize(img, size, interpolation)


def random_shift(img: np.ndarray, max_shift: int, rng: np.random.Generator) -> np.ndarray:
    """Translate by up to ``max_shift`` px on each axis, zero fill (= pad by ``max_shift`` and
    take a random crop of the original size: the CIFAR 4-px pad + crop)."""
    if max_shift <= 0:
        return img
    h, w = img.shape[:2]
    k = int(max_shift)
    padded = np.pad(img, ((k, k), (k, k), (0, 0)))
    dy, dx = rng.integers(0, 2 * k + 1, 2)
    return padded[dy : dy + h, dx : dx + w]


def hflip(img: np.ndarray) -> np.ndarray:
    return img[:, ::-1]


def random_resized_crop(
    img: np.ndarray,
    size,
    rng: np.random.Generator,
    scale=(0.08, 1.0),
    ratio=(3 / 4, 4 / 3),
    interpolation: str = "bilinear",
) -> np.ndarray:
    """torchvision's ``RandomResizedCrop``: a crop of ``scale`` of the area and aspect ``ratio``
    (10 tries, then the centre crop clamped to ``ratio``), resized to ``size``."""
    h, w = img.shape[:2]
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(rng.integers(0, h - ch + 1))
            left = int(rng.integers(0, w - cw + 1))
            break
    else:
        in_ratio = w / h
        if in_ratio < min(ratio):
            cw, ch = w, int(round(w / min(ratio)))
        elif in_ratio > max(ratio):
            ch, cw = h, int(round(h * max(ratio)))
        else:
            cw, ch = w, h
        top, left = (h - ch) // 2, (w - cw) // 2
    return _pil_resize(img, size, interpolation, box=(left, top, left + cw, top + ch))


def to_float(img: np.ndarray) -> np.ndarray:
    """float32 in [0, 1] (uint8 / 255; float images are taken as already in [0, 1])."""
    if img.dtype == np.uint8:
        return img.astype(np.float32) * np.float32(1 / 255)
    return img.astype(np.float32, copy=False)


_LUMA = np.asarray([0.299, 0.587, 0.114], np.float32)


def to_channels(x: np.ndarray, channels: int) -> np.ndarray:
    """Gray -> RGB by repetition, RGB -> gray by ITU-R 601 luma, RGBA -> RGB by dropping
    alpha."""
    c = x.shape[2]
    if c == channels:
        return x
    if c == 4 and channels in (1, 3):
        x, c = x[..., :3], 3
        if channels == 3:
            return x
    if c == 1:
        return np.repeat(x, channels, axis=2)
    if c == 3 and channels == 1:
        return (to_float(x) @ _LUMA)[..., None]
    raise ValueError(f"image has {c} channels; the model expects {channels}")


def load_image(image) -> np.ndarray:
    """A path (or file object), a PIL image or an array as an ``(H, W, C)`` array (PIL images
    are converted to RGB unless gray)."""
    if isinstance(image, np.ndarray):
        return image[..., None] if image.ndim == 2 else image
    if isinstance(image, (str, os.PathLike)) or hasattr(image, "read"):
        try:
            with Image.open(image) as im:
                return load_image(im.convert("L" if im.mode in ("L", "1") else "RGB"))
        except (OSError, ValueError, SyntaxError) as e:
            raise ValueError(f"cannot decode image {image}: {type(e).__name__}: {e}") from None
    if isinstance(image, Image.Image):
        if image.mode not in ("L", "RGB"):
            image = image.convert("RGB")
        return load_image(np.asarray(image))
    raise TypeError(f"expected a path, a PIL image or an array, got {type(image).__name__}")


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """How one example becomes a model input: ``pre(image)`` (eval) or ``pre(image, rng)``
    (train; ``rng`` a ``numpy.random.Generator``) returns float32 ``(H, W, channels)``.

    ``size`` ``(h, w)`` and ``channels`` are the model's input; ``mean``/``std`` (per channel, on
    the [0, 1] scale) normalise; ``kind`` picks the geometry (module docstring); ``shift`` (px,
    mnist/cifar) and ``flip`` are the train-time augmentations; ``crop_pct``, ``interpolation``,
    ``scale`` and ``ratio`` parametrise the ImageNet pair. ``policy(image, rng)`` (e.g.
    RandAugment from :mod:`jaxcnn.data.augment`) runs in train mode on the uint8 image after the
    geometry; ``erasing(x, rng)`` (random erasing) on the normalised float image.
    """

    size: tuple[int, int]
    channels: int = 3
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    kind: str = "none"
    shift: int = 0
    flip: bool = False
    crop_pct: float = 0.875
    interpolation: str = "bilinear"
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    policy: Callable | None = None
    erasing: Callable | None = None
    # set by __post_init__ from mean and std
    _mean: np.ndarray = dataclasses.field(init=False, repr=False, compare=False)
    _inv_std: np.ndarray = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"transform kind {self.kind!r}; expected one of {KINDS}")
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"size must be (height, width), got {self.size!r}")
        _resample(self.interpolation)
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop_pct must lie in (0, 1], got {self.crop_pct}")
        for name in ("mean", "std"):
            v = getattr(self, name)
            if len(v) not in (1, self.channels):
                raise ValueError(
                    f"{name} has {len(v)} values; expected 1 or channels={self.channels}"
                )
        if min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {self.std}")
        object.__setattr__(self, "size", tuple(int(s) for s in self.size))
        object.__setattr__(self, "_mean", np.asarray(self.mean, np.float32))
        object.__setattr__(self, "_inv_std", 1 / np.asarray(self.std, np.float32))

    def geometry(self, img: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """The spatial part (train when ``rng`` is given), in the input's dtype."""
        if self.kind == "imagenet":
            if rng is None:
                side = int(math.floor(min(self.size) / self.crop_pct))
                return center_crop(resize_shorter(img, side, self.interpolation), self.size)
            img = random_resized_crop(
                img, self.size, rng, self.scale, self.ratio, self.interpolation
            )
        else:
            img = fit_size(img, self.size, self.interpolation)
            if rng is not None and self.kind != "none":
                img = random_shift(img, self.shift, rng)
        if rng is not None and self.flip and rng.random() < 0.5:
            img = hflip(img)
        return img

    def unnormalised(self, image, rng: np.random.Generator | None = None) -> np.ndarray:
        """float32 in [0, 1] at the model's size and channels, before mean/std."""
        img = self.geometry(load_image(image), rng)
        if rng is not None and self.policy is not None:
            if img.dtype != np.uint8:  # policies work on uint8 (PIL)
                img = np.clip(np.rint(to_float(img) * 255), 0, 255).astype(np.uint8)
            img = self.policy(img, rng)
        return to_channels(to_float(img), self.channels)

    def __call__(self, image, rng: np.random.Generator | None = None) -> np.ndarray:
        x = self.unnormalised(image, rng)
        x = ((x - self._mean) * self._inv_std).astype(np.float32, copy=False)
        if rng is not None and self.erasing is not None:
            x = np.asarray(self.erasing(x, rng), np.float32)
        return x

    def replace(self, **changes) -> "Preprocess":
        return dataclasses.replace(self, **changes)


def imagenet_eval(
    image,
    size: int | tuple[int, int] = 224,
    *,
    crop_pct: float = 0.875,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    interpolation: str = "bilinear",
) -> np.ndarray:
    """The standard ImageNet evaluation transform of one image (a path, a PIL image or an
    ``(H, W, C)`` array): resize the shorter side to ``floor(size / crop_pct)``, centre-crop
    ``size``, scale to [0, 1], normalise with ``mean``/``std``. Returns float32
    ``(size, size, 3)`` (timm's eval transform with the same arguments)."""
    hw = (size, size) if isinstance(size, int) else size  # Preprocess makes it a tuple
    pre = Preprocess(
        hw, 3, tuple(mean), tuple(std), "imagenet", crop_pct=crop_pct, interpolation=interpolation
    )
    return pre(image)


def compute_mean_std(source, pre: Preprocess, *, max_examples: int = 20000, seed: int = 0):
    """Per-channel mean and std of ``pre``'s eval-time input (before normalisation) over
    ``source`` in one streaming pass (a seeded sample of ``max_examples`` when larger)."""
    n = len(source)
    idx = (
        np.arange(n)
        if n <= max_examples
        else np.sort(np.random.default_rng(seed).choice(n, max_examples, replace=False))
    )
    s: np.ndarray | None = None
    s2: np.ndarray | None = None
    count = 0
    for i in idx:
        x = pre.unnormalised(source[int(i)]["image"]).astype(np.float64)
        flat = x.reshape(-1, x.shape[-1])
        s = flat.sum(0) if s is None else s + flat.sum(0)
        s2 = (flat**2).sum(0) if s2 is None else s2 + (flat**2).sum(0)
        count += len(flat)
    if s is None or s2 is None:
        raise ValueError(f"cannot compute a mean and std over {source!r}: it has no examples")
    mean = s / count
    std = np.sqrt(np.maximum(s2 / count - mean**2, 0)) + 1e-6
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def auto_kind(splits) -> str:
    """The usual transform of a dataset: MNIST-style for digits/MNIST/IDX and small gray
    images, CIFAR-style for small colour images, ImageNet-style for larger ones."""
    name = splits.name
    if name in ("digits", "mnist", "mnist_idx", "idx"):
        return "mnist"
    img = splits.train[0]["image"]
    if min(img.shape[:2]) >= 64:
        return "imagenet"
    return "mnist" if img.shape[2] == 1 else "cifar"


# Config keys preprocess_from_config / splits_from_config read, with their defaults.
CONFIG_DEFAULTS = dict(
    dataset="digits",
    data_dir="",
    validation_split=0.1,
    split_seed=0,
    test_split=None,
    num_train=0,
    input_size=(),
    channels=0,
    transform="auto",
    augment_shift=-1,
    augment_flip=-1,
    mean=(),
    std=(),
    crop_pct=0.0,
    interpolation="",
    num_workers=0,
)


def _model_meta(info, key):
    """A preprocessing value the model registry knows (``info.<key>``, ``info.extra[key]`` or
    ``info.extra["pretrained_cfg"][key]``), else ``None``."""
    v = getattr(info, key, None)
    extra = getattr(info, "extra", None) or {}
    if v is None:
        v = extra.get(key)
    if v is None:
        v = (extra.get("pretrained_cfg") or {}).get(key)
    return v


def splits_from_config(cfg: dict):
    """:func:`jaxcnn.data.load_splits` with the config keys of :data:`CONFIG_DEFAULTS`."""
    from jaxcnn.data.splits import load_splits

    c = {**CONFIG_DEFAULTS, **dict(cfg)}
    test = c["test_split"]
    if test is not None and float(test) >= 1:
        test = int(test)
    return load_splits(
        c["dataset"],
        c["data_dir"] or None,
        validation_split=c["validation_split"],
        split_seed=c["split_seed"],
        test_split=test,
        num_train=c["num_train"] or None,
    )


def preprocess_from_config(cfg: dict, info, splits) -> Preprocess:
    """The :class:`Preprocess` for a config (keys of :data:`CONFIG_DEFAULTS`), a model's
    :class:`~jaxcnn.models.ModelInfo` and the dataset's :class:`~jaxcnn.data.Splits`.

    Empty / -1 values mean "the usual": size and channels from the model (``model_kwargs
    ["in_channels"]`` too), kind from the dataset (:func:`auto_kind`), shift 4 for cifar and 0
    otherwise, flip for cifar/imagenet, mean/std from the model's metadata or ImageNet's for the
    imagenet kind and computed on the train split otherwise, crop_pct and interpolation from the
    model's metadata, else 0.875 and bilinear. The augmentation policy keys of
    :data:`jaxcnn.data.augment.AUGMENT_DEFAULTS` (``augment_policy``, ``color_jitter``,
    ``random_erasing``...) add ``policy`` / ``erasing`` stages (train mode only).
    """
    c = {**CONFIG_DEFAULTS, **dict(cfg)}
    size = tuple(c["input_size"] or ()) or tuple(info.input_size[:2])
    channels = (
        int(c["channels"] or 0)
        or int((c.get("model_kwargs") or {}).get("in_channels", 0) or 0)
        or int(info.input_size[2])
    )
    kind = c["transform"] or "auto"
    kind = auto_kind(splits) if kind == "auto" else kind
    shift = int(c["augment_shift"])
    shift = (4 if kind == "cifar" else 0) if shift < 0 else shift
    flip = c["augment_flip"]
    flip = kind in ("cifar", "imagenet") if flip in (None, -1, "auto") else bool(flip)
    crop_pct = float(c["crop_pct"] or _model_meta(info, "crop_pct") or 0.875)
    interp = c["interpolation"] or _model_meta(info, "interpolation") or "bilinear"
    pre = Preprocess(
        size, channels, kind=kind, shift=shift, flip=flip, crop_pct=crop_pct, interpolation=interp
    )
    mean, std = tuple(c["mean"] or ()), tuple(c["std"] or ())
    if not mean or not std:
        meta_mean, meta_std = _model_meta(info, "mean"), _model_meta(info, "std")
        if meta_mean is not None and meta_std is not None and len(meta_mean) == channels:
            mean, std = mean or tuple(meta_mean), std or tuple(meta_std)
        elif kind == "imagenet" and channels == 3:
            mean, std = mean or IMAGENET_MEAN, std or IMAGENET_STD
        else:
            m, s = compute_mean_std(splits.train, pre)
            mean, std = mean or m, std or s
    mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    from jaxcnn.data.augment import policies_from_config

    fill = tuple(int(round(255 * m)) for m in mean)
    stages = policies_from_config(c, fill=fill if len(fill) > 1 else fill[0], interpolation=interp)
    return pre.replace(mean=mean, std=std, policy=stages.image, erasing=stages.normalized)
