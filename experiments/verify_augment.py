"""Check jaxcnn's augmentation ops and magnitude tables against timm and torchvision.

Run with a Python that has torch, torchvision and timm (a separate virtual environment; jaxcnn
itself is not imported, only ``jaxcnn/data/augment.py`` by file, which needs numpy and Pillow):

    /path/to/torch-venv/bin/python experiments/verify_augment.py

It checks, on a real MNIST digit (gray) and a colour image built from three digits:
1. every pixel op at several arguments equals timm's op (``timm.data.auto_augment.NAME_TO_OP``)
   and torchvision's (``torchvision.transforms.autoaugment._apply_op``) on the same PIL image;
2. RandAugment's level -> argument table equals timm's ``LEVEL_TO_ARG`` at levels 0..10;
3. TrivialAugment's and AutoAugment's magnitude bins equal torchvision's
   ``_augmentation_space``; the AutoAugment ImageNet policy is torchvision's list.
It prints one line per check and exits non-zero on any mismatch.
"""

from __future__ import annotations

import gzip
import importlib.util
import pathlib
import sys
from unittest import mock

import numpy as np
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_augment():
    spec = importlib.util.spec_from_file_location("augment", ROOT / "jaxcnn/data/augment.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["augment"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def _digits(n=3):
    path = ROOT / "jaxcnn/data/assets/mnist/t10k-images-idx3-ubyte.gz"
    with gzip.open(path) as f:
        data = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    return data[:n]


def main() -> int:
    import timm.data.auto_augment as ta
    import torchvision.transforms.autoaugment as tva
    from torchvision.transforms import InterpolationMode

    A = _load_augment()
    d = _digits(3)
    gray = d[0][..., None]
    color = np.stack([d[0], d[1], d[2]], -1) // 2 + 60
    failures = 0

    def check(name, ok):
        nonlocal failures
        failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {name}")

    # 1. pixel ops against timm (bilinear, fill 128) and torchvision (nearest, fill 0)
    timm_ops = {
        "AutoContrast": [None], "Equalize": [None], "Invert": [None],
        "Rotate": [-27.0, 9.0], "Posterize": [1, 4, 7], "Solarize": [0, 100, 256],
        "SolarizeAdd": [0, 60, 110], "Color": [0.1, 1.0, 1.9], "Contrast": [0.1, 1.9],
        "Brightness": [0.1, 1.9], "Sharpness": [0.1, 1.9], "ShearX": [-0.3, 0.2],
        "ShearY": [0.3], "TranslateX": [-12.6, 5.0], "TranslateY": [12.6],
    }  # fmt: skip
    for img in (gray, color):
        pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
        fill = 128 if img.shape[-1] == 1 else (128,) * 3
        for op, values in timm_ops.items():
            for v in values:
                fn = ta.NAME_TO_OP[op if op not in ("TranslateX", "TranslateY") else op]
                args = () if v is None else (v,)
                ref = fn(pil, *args, fillcolor=fill, resample=Image.Resampling.BILINEAR)
                ref = np.asarray(ref).reshape(img.shape)
                got = A.apply_op(img, op, 0.0 if v is None else v, 128, "bilinear")
                check(f"timm {op}({v}) c={img.shape[-1]}", np.array_equal(got, ref))
        tv_ops = {
            "Identity": [0.0], "ShearX": [0.3, -0.99], "ShearY": [0.5], "TranslateX": [7.0],
            "TranslateY": [-7.0], "Rotate": [30.0, -135.0], "Brightness": [0.5, -0.9],
            "Color": [0.9], "Contrast": [-0.5], "Sharpness": [0.99], "Posterize": [2.0, 6.0],
            "Solarize": [128.0], "AutoContrast": [0.0], "Equalize": [0.0], "Invert": [0.0],
        }  # fmt: skip
        for op, values in tv_ops.items():
            for v in values:
                ref = tva._apply_op(pil, op, v, InterpolationMode.NEAREST, None)
                ref = np.asarray(ref).reshape(img.shape)
                got = A._tv_apply(img, op, v, 0, "nearest")
                check(f"torchvision {op}({v}) c={img.shape[-1]}", np.array_equal(got, ref))

    # 2. RandAugment level tables against timm's LEVEL_TO_ARG, random sign fixed to "+"
    class Plus:  # our ops negate when rng.random() > 0.5, timm's when random.random() > 0.5
        def random(self):
            return 0.0

    with mock.patch("random.random", return_value=0.0):
        for name in A.RAND_OPS + A.RAND_INCREASING_OPS:
            if ta.LEVEL_TO_ARG[name] is None:
                continue
            ok = True
            for level in range(11):
                (want,) = ta.LEVEL_TO_ARG[name](level, {"translate_pct": 0.45})
                got = A._RAND_LEVELS[name][1](level, Plus(), (100, 100))
                want = want * 100 if name.startswith("Translate") else want
                ok &= bool(np.isclose(got, want))
            check(f"RandAugment level table {name}", ok)

    # 3. torchvision magnitude bins and the AutoAugment ImageNet policy
    for wide, cls, bins in ((True, tva.TrivialAugmentWide(), 31), (False, tva.AutoAugment(), 10)):
        space = cls._augmentation_space(bins) if wide else cls._augmentation_space(bins, (50, 60))
        mine = A._tv_space(bins, (50, 60), wide=wide)
        for op, (mags, signed) in space.items():
            m, s = mine[op]
            ref = mags.numpy().astype(np.float64)
            ok = s == signed and (
                (m is None and ref.ndim == 0) or (m is not None and np.allclose(m, ref, atol=1e-4))
            )
            check(f"{'TrivialAugmentWide' if wide else 'AutoAugment'} bins {op}", ok)
    tv_policy = tva.AutoAugment(tva.AutoAugmentPolicy.IMAGENET).policies
    check(
        "AutoAugment ImageNet policy list",
        [tuple(p) for p in tv_policy] == list(A.AUTOAUGMENT_IMAGENET),
    )
    check(
        "TrivialAugment op set",
        set(tva.TrivialAugmentWide()._augmentation_space(31)) == set(A._TRIVIAL_OPS),
    )
    print(f"{failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
