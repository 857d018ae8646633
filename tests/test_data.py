"""Data sources and pipeline: digits, IDX (real MNIST), image folders, TFDS (mock), batching."""

import gzip

import numpy as np
import pytest

from jaxcnn import data


def test_digits_source_and_preprocess():
    ds = data.load_dataset("digits")
    assert len(ds) == 1797 and ds.images.shape == (1797, 8, 8, 1) and ds.num_classes == 10
    tr, te = data.split(ds, 0.2, seed=0)
    assert len(tr) + len(te) == 1797 and len(te) == 359
    x, y, (mean, std) = data.preprocess(tr, (28, 28), 1)
    assert x.shape == (len(tr), 28, 28, 1) and x.dtype == np.float32
    np.testing.assert_allclose(x.mean(), 0, atol=1e-4)
    np.testing.assert_allclose(x.std(), 1, atol=1e-3)
    xt, _, _ = data.preprocess(te, (28, 28), 3, mean, std)  # gray -> RGB
    assert xt.shape == (len(te), 28, 28, 3)


def test_mnist_idx_source(mnist_dir):
    ds = data.load_dataset("mnist_idx", str(mnist_dir))
    assert ds.images.shape == (10000, 28, 28, 1) and ds.images.dtype == np.uint8
    assert list(ds.labels[:10]) == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    tr, te = data.split(ds, 2000, seed=None)  # first 8,000 / last 2,000
    assert len(tr) == 8000 and len(te) == 2000
    np.testing.assert_array_equal(te.labels, ds.labels[8000:])
    x, _, _ = data.preprocess(te, (32, 32), 1)  # padded, not resized
    assert x.shape == (2000, 32, 32, 1)
    assert np.all(x[:, :2] == x[0, 0, 0])  # zero border after padding (normalised)


def write_idx(path, arr, code=0x08):
    header = bytes([0, 0, code, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    payload = header + arr.astype(">u1" if code == 0x08 else ">i4").tobytes()
    if str(path).endswith(".gz"):
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def test_idx_roundtrip_and_corrupt_files(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 255, (5, 4, 3), dtype=np.uint8)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", imgs)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(5, dtype=np.uint8))
    x, y = data.load_idx_folder(tmp_path)
    np.testing.assert_array_equal(x, imgs)
    np.testing.assert_array_equal(y, np.arange(5))
    # truncated payload
    raw = gzip.decompress((tmp_path / "t10k-images-idx3-ubyte.gz").read_bytes())
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw[:-7]))
    with pytest.raises(ValueError, match="truncated or corrupt"):
        data.load_idx_folder(tmp_path)
    # not IDX at all (an HTML error page), and a broken gzip stream
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"<html>404</html>"))
    with pytest.raises(ValueError, match="not an IDX file"):
        data.read_idx(tmp_path / "t10k-images-idx3-ubyte.gz")
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b\x08garbage")
    with pytest.raises(ValueError, match="not a readable IDX file"):
        data.read_idx(tmp_path / "t10k-images-idx3-ubyte.gz")
    # labels that do not pair with images
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", imgs[:4])
    with pytest.raises(ValueError, match="do not pair up"):
        data.load_idx_folder(tmp_path)


def test_missing_folder_and_unknown_dataset(tmp_path):
    with pytest.raises(FileNotFoundError, match="MNIST IDX folder not found"):
        data.load_dataset("mnist_idx", str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="expected t10k-images"):
        data.load_dataset("mnist_idx", str(tmp_path))
    with pytest.raises(ValueError, match="unknown dataset 'digit'.*did you mean digits"):
        data.load_dataset("digit")


def test_image_folder_source(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (10, 12, 3), dtype=np.uint8)).save(
                tmp_path / c / f"{i}.png"
            )
    ds = data.load_dataset("folder", str(tmp_path))
    assert ds.images.shape == (6, 10, 12, 3) and ds.class_names == ("cat", "dog")
    assert list(ds.labels) == [0, 0, 0, 1, 1, 1]


def test_tfds_source_with_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12):
        ds = data.load_dataset("tfds:mnist", tfds_split="train")
    assert ds.images.shape == (12, 28, 28, 1) and ds.num_classes == 10 and ds.name == "tfds:mnist"


def test_batches_static_shapes_mask_and_determinism():
    x = np.arange(10, dtype=np.float32)[:, None, None, None]
    y = np.arange(10)
    ev = list(data.batches(x, y, 4))
    assert [b["image"].shape[0] for b in ev] == [4, 4, 4]
    np.testing.assert_array_equal(ev[-1]["mask"], [1, 1, 0, 0])
    tr = list(data.batches(x, y, 4, shuffle=True, seed=1, epoch=3, drop_remainder=True))
    assert len(tr) == 2
    again = list(data.batches(x, y, 4, shuffle=True, seed=1, epoch=3, drop_remainder=True))
    np.testing.assert_array_equal(tr[1]["label"], again[1]["label"])
    resumed = list(
        data.batches(x, y, 4, shuffle=True, seed=1, epoch=3, drop_remainder=True, start=1)
    )
    np.testing.assert_array_equal(resumed[0]["label"], tr[1]["label"])
    other = np.concatenate(
        [
            b["label"]
            for b in data.batches(x, y, 4, shuffle=True, seed=1, epoch=4, drop_remainder=True)
        ]
    )
    assert not np.array_equal(other, np.concatenate([b["label"] for b in tr]))
    with pytest.raises(ValueError, match="larger than the 10 training examples"):
        list(data.batches(x, y, 16, drop_remainder=True))


def test_augment_batch_shifts_within_bounds():
    import jax
    import jax.numpy as jnp

    img = jnp.zeros((3, 8, 8, 1)).at[:, 4, 4, 0].set(1.0)
    out = data.augment_batch(jax.random.key(0), img, max_shift=2)
    for i in range(3):
        (r,), (c,) = (
            np.nonzero(np.asarray(out[i, :, :, 0]).sum(1)),
            np.nonzero(np.asarray(out[i, :, :, 0]).sum(0)),
        )
        assert abs(r - 4) <= 2 and abs(c - 4) <= 2
