"""Input pipeline measurements (docs/data.md quotes them).

Throughput: images/s of the ImageNet train transform (decode JPEG + random-resized-crop 224 +
flip + normalise) on local JPEGs, through ``jaxcnn.data.train_iterator`` with 0, 1, 2 worker
processes::

    python -m experiments.benchmark_input --images 512 --batch 32 --workers 0 1 2

RSS: the training process's peak resident memory while it reads one epoch of an on-disk
dataset (an uncompressed IDX file of 32x32x3 images, read per example) of 10,000 and of
100,000 examples, each in a fresh process; the dataset is never materialised whole, so the two
peaks agree within 20 %::

    python -m experiments.benchmark_input --rss --sizes 10000 100000

Datasets are written to a temporary folder first (deleted afterwards).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np


def write_jpeg_folder(root: str, n: int, classes: int = 10, size=(375, 500), seed: int = 0):
    """``n`` photo-like JPEGs (smooth colour fields plus noise, ImageNet's typical 375x500)
    in ``root/train/<class>/`` and 2 per class in ``root/val/``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for split, count in (("train", n), ("val", 2 * classes)):
        for i in range(count):
            c = i % classes
            d = os.path.join(root, split, f"c{c:03d}")
            os.makedirs(d, exist_ok=True)
            f = rng.uniform(0.005, 0.03, 3)
            phase = rng.uniform(0, 6.3, 3)
            img = np.stack(
                [127 + 100 * np.sin(f[k] * (xx + yy * (k + 1)) + phase[k]) for k in range(3)], -1
            )
            img += rng.normal(0, 12, img.shape)
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
                os.path.join(d, f"{i:06d}.jpg"), quality=90
            )


def throughput(args) -> list[dict]:
    from jaxcnn import data

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        write_jpeg_folder(tmp, args.images)
        print(f"wrote {args.images} JPEGs 375x500 in {time.time() - t0:.1f} s", flush=True)
        splits = data.load_splits("folder", tmp, validation_split=0)
        pre = data.Preprocess(
            (224, 224),
            3,
            data.transforms.IMAGENET_MEAN,
            data.transforms.IMAGENET_STD,
            "imagenet",
            flip=True,
        )
        steps = data.steps_per_epoch(len(splits.train), args.batch)
        for w in args.workers:
            it = data.train_iterator(
                splits.train,
                pre,
                args.batch,
                seed=0,
                num_workers=w,
                process_index=0,
                process_count=1,
            )
            t0 = time.time()
            for _ in range(min(2, steps - 1)):  # warm-up: worker start-up, first reads
                next(it)
            start = time.time()
            warm = start - t0
            timed = max(1, min(args.steps or steps, steps) - 2)
            for _ in range(timed):
                next(it)
            dt = time.time() - start
            it.close()
            rows.append(
                {
                    "workers": w,
                    "images_per_s": timed * args.batch / dt,
                    "batches": timed,
                    "warmup_s": warm,
                }
            )
            print(
                f"workers={w}: {timed * args.batch / dt:7.1f} images/s "
                f"({timed} batches of {args.batch}; warm-up {warm:.1f} s)",
                flush=True,
            )
    return rows


def write_idx(path: str, arr: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with open(path, "wb") as f:
        f.write(header)
        f.write(np.ascontiguousarray(arr, np.uint8).tobytes())


def _peak_rss_mib() -> float:
    """This process's peak resident memory: ``VmHWM`` (``ru_maxrss`` is no good in a child:
    Linux carries the parent's peak across ``exec``)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_child(folder: str, batch: int, workers: int) -> None:
    """One epoch over the IDX dataset in ``folder``; prints peak RSS (MiB) as JSON."""
    from jaxcnn import data

    splits = data.load_splits(f"idx:{folder}", validation_split=0)
    pre = data.Preprocess((32, 32), 3, kind="cifar", shift=4, flip=True)
    it = data.train_iterator(
        splits.train, pre, batch, seed=0, num_workers=workers, process_index=0, process_count=1
    )
    steps = data.steps_per_epoch(len(splits.train), batch)
    seen = 0
    t0 = time.time()
    for _ in range(steps):
        seen += len(next(it)["id"])
    it.close()
    peak = _peak_rss_mib()
    print(
        json.dumps(
            {
                "examples": len(splits.train),
                "seen": seen,
                "peak_rss_mib": peak,
                "epoch_s": time.time() - t0,
            }
        )
    )


def rss(args) -> list[dict]:
    rows = []
    rng = np.random.default_rng(0)
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            imgs = np.empty((n, 32, 32, 3), np.uint8)
            for i in range(0, n, 10000):
                imgs[i : i + 10000] = rng.integers(0, 255, (min(10000, n - i), 32, 32, 3))
            write_idx(os.path.join(tmp, "t10k-images-idx3-ubyte"), imgs)
            write_idx(os.path.join(tmp, "t10k-labels-idx1-ubyte"), np.arange(n) % 10)
            mib = imgs.nbytes / 2**20
            del imgs
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "experiments.benchmark_input",
                    "--rss-child",
                    tmp,
                    "--batch",
                    str(args.batch),
                    "--workers",
                    str(args.workers[0]),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            row = json.loads(out.stdout.strip().splitlines()[-1])
            row["dataset_mib"] = mib
            rows.append(row)
            print(
                f"{n:>7,} examples ({mib:6.1f} MiB on disk): peak RSS "
                f"{row['peak_rss_mib']:7.1f} MiB, epoch {row['epoch_s']:.1f} s",
                flush=True,
            )
    a, b = rows[0]["peak_rss_mib"], rows[-1]["peak_rss_mib"]
    print(f"peak RSS ratio {b / a:.3f} ({args.sizes[-1]:,} vs {args.sizes[0]:,} examples)")
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=0, help="timed batches (0: one epoch)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rss", action="store_true")
    p.add_argument("--sizes", type=int, nargs="+", default=[10000, 100000])
    p.add_argument("--rss-child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rss_child:
        return rss_child(args.rss_child, args.batch, args.workers[0])
    print(f"uptime: {os.getloadavg()}", flush=True)
    rows = rss(args) if args.rss else throughput(args)
    print(f"uptime: {os.getloadavg()}", flush=True)
    return rows


if __name__ == "__main__":
    main()
