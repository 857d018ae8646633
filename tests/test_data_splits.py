"""Published splits and random-access sources: no test or validation id ever reaches train,
for every source kind (bundled digits and MNIST, IDX folders, image folders, TFDS prepared
locally in array_record, in-memory arrays); stratification; short errors."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from PIL import Image

from jaxcnn import data
from jaxcnn.data import sources


def ids(src) -> np.ndarray:
    """Ids read through __getitem__ (what an iterator sees), checked against ``src.ids``."""
    got = np.array([src[i]["id"] for i in range(len(src))], np.int64)
    np.testing.assert_array_equal(got, src.ids)
    return got


def assert_disjoint(s: data.Splits) -> None:
    tr, te = set(ids(s.train)), set(ids(s.test))
    va = set(ids(s.validation)) if s.validation is not None else set()
    assert len(tr) == len(s.train) and len(te) == len(s.test) and len(va) == len(va)
    assert not tr & te and not tr & va and not te & va
    for src in (s.train, s.test) + ((s.validation,) if s.validation is not None else ()):
        labels = np.array([src[i]["label"] for i in range(len(src))])
        np.testing.assert_array_equal(labels, src.labels)
        assert labels.max() < s.num_classes
    assert set(s.provenance) == {"train", "validation", "test"}


def write_idx(path, arr):
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    payload = header + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if str(path).endswith(".gz") else payload)


def test_stratified_holdout_counts_and_seed():
    labels = np.repeat(np.arange(4), [40, 30, 20, 10])
    rest, held = data.stratified_holdout(labels, 10, 0)
    assert len(held) == 10 and len(rest) == 90 and not set(rest) & set(held)
    np.testing.assert_array_equal(np.bincount(labels[held]), [4, 3, 2, 1])
    again = data.stratified_holdout(labels, 10, 0)[1]
    np.testing.assert_array_equal(held, again)
    assert not np.array_equal(held, data.stratified_holdout(labels, 10, 1)[1])
    assert np.all(np.diff(rest) > 0) and np.all(np.diff(held) > 0)  # file order kept


def test_digits_bundled_splits():
    s = data.load_splits("digits")
    assert (len(s.train), len(s.validation), len(s.test)) == (1294, 144, 359)
    assert s.num_classes == 10 and s.class_names == tuple("0123456789")
    assert_disjoint(s)
    assert sorted(set(s.train.ids) | set(s.validation.ids) | set(s.test.ids)) == list(range(1797))
    # stratified: every class is in the test split in proportion (~20 %)
    counts = np.bincount(s.test.labels, minlength=10)
    full = np.bincount(data.sources.bundled_digits()[1], minlength=10)
    assert np.all(np.abs(counts - 0.2 * full) <= 1)
    ex = s.train[0]
    assert ex["image"].shape == (8, 8, 1) and ex["image"].dtype == np.float32
    assert 0 <= ex["image"].min() and ex["image"].max() <= 1
    # seeded: same seed same split, other seed other split; num_train keeps the first N
    np.testing.assert_array_equal(data.load_splits("digits").test.ids, s.test.ids)
    assert not np.array_equal(data.load_splits("digits", split_seed=1).test.ids, s.test.ids)
    small = data.load_splits("digits", num_train=100, validation_split=0)
    assert len(small.train) == 100 and small.validation is None
    np.testing.assert_array_equal(small.train.ids, np.sort(small.train.ids))
    assert "num_train" in small.provenance["train"]
    assert len(data.load_splits("digits", validation_split=200).validation) == 200


def test_mnist_bundled_is_the_real_test_set_with_the_established_split(monkeypatch):
    monkeypatch.delenv("JAXCNN_SHARED_DATA", raising=False)
    folder = data.bundled_mnist_dir()
    assert (folder / "NOTICE").read_text().count("CC BY-SA 3.0") == 1
    s = data.load_splits("mnist", data_dir=str(folder))
    assert (len(s.train), len(s.validation), len(s.test)) == (7200, 800, 2000)
    np.testing.assert_array_equal(s.test.ids, np.arange(8000, 10000))  # last 2,000, file order
    assert s.train.ids.max() < 8000 and s.validation.ids.max() < 8000
    assert_disjoint(s)
    full = data.load_dataset("mnist_idx", str(folder))
    assert [s.test[i]["label"] for i in range(3)] == list(full.labels[8000:8003])
    assert list(full.labels[:10]) == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert "jaxcnn/data/assets/mnist" in s.provenance["test"]  # no machine path


def test_idx_folder_published_split_read_from_disk_and_pickle(tmp_path):
    import pickle

    rng = np.random.default_rng(0)
    write_idx(tmp_path / "train-images-idx3-ubyte", rng.integers(0, 255, (50, 6, 5)))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.arange(50) % 3)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", rng.integers(0, 255, (12, 6, 5)))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(12) % 3)
    s = data.load_splits(f"idx:{tmp_path}", validation_split=0.2)
    assert (len(s.train), len(s.validation), len(s.test)) == (40, 10, 12)
    np.testing.assert_array_equal(s.test.ids, np.arange(50, 62))
    assert_disjoint(s)
    base = s.train.source
    assert isinstance(base, data.IdxSource) and not isinstance(base.images, np.ndarray)
    assert isinstance(data.open_idx(tmp_path / "train-images-idx3-ubyte"), np.memmap)
    clone = pickle.loads(pickle.dumps(base))
    assert len(pickle.dumps(base)) < 1000  # paths, not pixels
    np.testing.assert_array_equal(clone[7]["image"], base[7]["image"])
    with pytest.raises(ValueError, match="has a published test split"):
        data.load_splits(f"idx:{tmp_path}", test_split=5)


def make_folder(root, layout, n=4, size=(10, 12)):
    rng = np.random.default_rng(0)
    for sub in layout:
        for c in ("cat", "dog"):
            d = root / sub / c if sub else root / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(
                    d / f"{i}.png"
                )


def test_image_folder_layouts(tmp_path):
    make_folder(tmp_path / "a", ["train", "val"], n=10)
    s = data.load_splits("folder", str(tmp_path / "a"), validation_split=4)
    assert (len(s.train), len(s.validation), len(s.test)) == (16, 4, 20)
    assert "val/" in s.provenance["test"] and s.class_names == ("cat", "dog")
    assert_disjoint(s)
    make_folder(tmp_path / "b", ["train", "val", "test"])
    s = data.load_splits(f"folder:{tmp_path / 'b'}")
    assert (len(s.train), len(s.validation), len(s.test)) == (8, 8, 8)
    assert "val/" in s.provenance["validation"] and "test/" in s.provenance["test"]
    assert_disjoint(s)
    assert s.train[0]["image"].shape == (10, 12, 3) and s.train[0]["image"].dtype == np.uint8
    make_folder(tmp_path / "c", [""], n=10)  # flat class folders: seeded stratified test
    s = data.load_splits("folder", str(tmp_path / "c"), validation_split=0)
    assert (len(s.train), len(s.test)) == (16, 4) and np.bincount(s.test.labels).tolist() == [2, 2]
    assert_disjoint(s)
    (tmp_path / "b" / "test" / "bird").mkdir()
    with pytest.raises(ValueError, match=r"\['bird'\] are not among the 2 classes"):
        data.load_splits("folder", str(tmp_path / "b"))


def test_corrupt_image_names_the_file(tmp_path):
    make_folder(tmp_path, ["train", "val"])
    bad = tmp_path / "train" / "dog" / "2.png"
    bad.write_bytes(b"not a png at all")
    s = data.load_splits("folder", str(tmp_path), validation_split=0)
    i = list(s.train.ids).index(6)  # dog/2.png: the 7th file of train/
    with pytest.raises(ValueError, match=r"cannot decode image .*dog/2\.png"):
        s.train[i]


def test_arrays_source():
    x = np.zeros((30, 4, 4, 3), np.uint8)
    y = np.arange(30) % 3
    s = data.load_splits("arrays", arrays={"train": (x[:20], y[:20]), "test": (x[20:], y[20:])})
    assert (len(s.train), len(s.validation), len(s.test)) == (18, 2, 10)
    assert_disjoint(s)
    s = data.load_splits("arrays", arrays=(x, y), test_split=6, validation_split=0)
    assert (len(s.train), len(s.test)) == (24, 6)
    assert_disjoint(s)


def test_errors_are_short_and_suggest():
    with pytest.raises(ValueError, match="unknown dataset 'digit'.*did you mean digits"):
        data.load_splits("digit")
    with pytest.raises(ValueError, match="none would be left"):
        data.load_splits("digits", validation_split=5000)
    with pytest.raises(FileNotFoundError, match="IDX folder not found"):
        data.load_splits("idx:/no/such/folder")
    with pytest.raises(ValueError, match="needs data_dir"):
        data.load_splits("folder")


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    """A real TFDS dataset (array_record) written from the bundled MNIST IDX files."""
    pytest.importorskip("tensorflow_datasets")
    from jaxcnn.data import prepare

    d = tmp_path_factory.mktemp("tfds")
    prepare.prepare_from_idx("mnist_local", d, data.bundled_mnist_dir(), test_last=2000)
    return d


def test_tfds_prepared_locally_reads_through_data_source(tfds_dir):
    s = data.load_splits("tfds:mnist_local", data_dir=str(tfds_dir))
    assert (len(s.train), len(s.validation), len(s.test)) == (7200, 800, 2000)
    assert s.num_classes == 10 and s.class_names == tuple("0123456789")
    np.testing.assert_array_equal(s.test.ids, np.arange(8000, 10000))
    # same pixels and labels as the IDX files, in file order
    idx = data.load_splits("mnist", data_dir=str(data.bundled_mnist_dir()))
    for i in (0, 5, 1999):
        a, b = s.test[i], idx.test[i]
        assert a["id"] == b["id"] and a["label"] == b["label"]
        np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(s.train.ids, idx.train.ids)  # same stratified validation
    assert isinstance(s.test, sources.TfdsSource)
    sub = data.Subset(s.test, np.arange(0, 2000, 50))
    assert_disjoint(data.Splits(s.train, s.validation, sub, 10, s.class_names, "t", s.provenance))
    with pytest.raises(ValueError, match="has a published test split"):
        data.load_splits("tfds:mnist_local", data_dir=str(tfds_dir), test_split=0.1)


def test_tfds_unknown_name_is_short(tfds_dir):
    with pytest.raises(ValueError) as e:
        data.load_splits("tfds:mnist_locl", data_dir=str(tfds_dir))
    msg = str(e.value)
    assert len(msg) < 300 and "did you mean" in msg and "mnist" in msg
    assert "abstract_reasoning" not in msg  # not the whole catalogue


def test_tfds_prepared_from_a_jpeg_folder_by_the_documented_commands(tmp_path, capsys):
    pytest.importorskip("tensorflow_datasets")
    from jaxcnn.data import prepare

    folder, tfds_dir = tmp_path / "jpeg", tmp_path / "tfds"
    idx = str(data.bundled_mnist_dir())
    assert prepare.main(["jpegs", "--out", str(folder), "--idx", idx, "--limit", "100"]) == 0
    assert (
        prepare.main(
            ["folder", "--root", str(folder), "--name", "mnist_jpeg", "--data-dir", str(tfds_dir)]
        )
        == 0
    )
    assert 'load_splits("tfds:mnist_jpeg"' in capsys.readouterr().out
    s = data.load_splits("tfds:mnist_jpeg", data_dir=str(tfds_dir), validation_split=0)
    f = data.load_splits("folder", str(folder), validation_split=0)
    assert len(s.train) == len(f.train) and len(s.test) == len(f.test)
    assert s.class_names == f.class_names
    for i in (0, 7, len(s.test) - 1):  # JPEG bytes stored unchanged: the same decoded pixels
        a, b = s.test[i], f.test[i]
        assert a["label"] == b["label"] and a["image"].shape[-1] == 1
        np.testing.assert_array_equal(a["image"], b["image"])  # gray stays 1 channel
    assert_disjoint(s)
