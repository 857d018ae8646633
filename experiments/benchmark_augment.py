"""Host cost of the augmentation policies: images per second on one core, per policy and size.

    python -m experiments.benchmark_augment [--sizes 28 32 224] [--n 2000]

Images are real MNIST digits (bundled), resized to each size, gray at 28 and RGB otherwise;
each policy runs on ``n`` images with one seeded generator (min of 3 repeats). Prints a
Markdown table.
"""

from __future__ import annotations

import argparse
import gzip
import pathlib
import time

import numpy as np
from PIL import Image

from jaxcnn.data import augment as A

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _images(n: int, size: int) -> list[np.ndarray]:
    path = ROOT / "jaxcnn/data/assets/mnist/t10k-images-idx3-ubyte.gz"
    with gzip.open(path) as f:
        d = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:n]
    if size == 28:
        return [x[..., None] for x in d]
    out = []
    for i in range(n):
        rgb = np.stack([d[i], d[(i + 1) % n], d[(i + 2) % n]], -1)
        out.append(np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.BILINEAR)))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[28, 32, 224])
    ap.add_argument("--n", type=int, default=2000)
    args = ap.parse_args()
    policies = {
        "randaugment n2 m9": A.RandAugment(),
        "trivialaugment": A.TrivialAugment(),
        "autoaugment": A.AutoAugment(),
        "color_jitter 0.4": A.ColorJitter(0.4, 0.4, 0.4),
        "random_erasing 0.25 (float)": A.RandomErasing(0.25),
    }
    print("| policy | " + " | ".join(f"{s}x{s} img/s" for s in args.sizes) + " |")
    print("|---|" + "---|" * len(args.sizes))
    data = {s: _images(args.n, s) for s in args.sizes}
    floats = {s: [x.astype(np.float32) for x in data[s]] for s in args.sizes}
    for name, pol in policies.items():
        row = []
        for s in args.sizes:
            imgs = floats[s] if "erasing" in name else data[s]
            best = float("inf")
            for _ in range(3):
                rng = np.random.default_rng(0)
                t = time.perf_counter()
                for x in imgs:
                    pol(x, rng)
                best = min(best, time.perf_counter() - t)
            row.append(f"{len(imgs) / best:,.0f}")
        print(f"| {name} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
