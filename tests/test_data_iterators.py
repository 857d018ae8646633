"""grain iterators: exact epochs, deterministic order, resume from a JSON state to the same id
sequence (0 and 2 worker processes), per-process rows, padded evaluation batches."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxcnn import data


@pytest.fixture(scope="module")
def toy():
    """50 examples of 6x6 gray with 5 classes; ids 100..149 (not positions)."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (50, 6, 6), dtype=np.uint8)
    y = np.arange(50) % 5
    src = data.ArraySource(x, y, id_offset=100, name="toy")
    pre = data.Preprocess((6, 6), 1, kind="mnist", shift=1, flip=True)
    return src, pre


def take(it, k):
    return [next(it) for _ in range(k)]


def test_exact_epochs_and_determinism(toy):
    src, pre = toy
    assert data.steps_per_epoch(50, 8) == 6
    it = data.train_iterator(src, pre, 8, seed=3, process_index=0, process_count=1)
    batches = take(it, 12)  # two epochs
    for b in batches:
        assert b["image"].shape == (8, 6, 6, 1) and b["image"].dtype == np.float32
        assert b["label"].dtype == np.int32 and b["id"].dtype == np.int64
        np.testing.assert_array_equal(b["label"], (b["id"] - 100) % 5)
    e0 = np.concatenate([b["id"] for b in batches[:6]])
    e1 = np.concatenate([b["id"] for b in batches[6:]])
    assert len(set(e0)) == len(set(e1)) == 48  # each epoch: 48 distinct, 2 dropped
    assert not np.array_equal(e0, e1)  # a fresh permutation per epoch
    np.testing.assert_array_equal(e0, np.random.default_rng([3, 0]).permutation(50)[:48] + 100)
    assert it.epoch == 2 and it.get_state()["batch_in_epoch"] == 0
    again = take(data.train_iterator(src, pre, 8, seed=3, process_index=0, process_count=1), 12)
    for a, b in zip(batches, again):
        np.testing.assert_array_equal(a["image"], b["image"])  # transforms seeded too
    other = next(data.train_iterator(src, pre, 8, seed=4, process_index=0, process_count=1))
    assert not np.array_equal(other["id"], batches[0]["id"])
    # the same example is augmented differently in the two epochs (seeded by epoch and id)
    img0 = {int(i): x for b in batches[:6] for i, x in zip(b["id"], b["image"])}
    img1 = {int(i): x for b in batches[6:] for i, x in zip(b["id"], b["image"])}
    common = sorted(set(img0) & set(img1))
    changed = [not np.array_equal(img0[i], img1[i]) for i in common]
    assert len(common) >= 40 and np.mean(changed) > 0.7
    it.close()
    with pytest.raises(ValueError, match="larger than the 50 training examples"):
        data.train_iterator(src, pre, 64, seed=0, process_index=0, process_count=1)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_from_state_yields_the_remaining_sequence(toy, workers):
    src, pre = toy
    kw = dict(seed=1, num_workers=workers, process_index=0, process_count=1)
    full = data.train_iterator(src, pre, 8, **kw)
    want = take(full, 16)
    full.close()
    # the interrupted run reads in-process: the state does not depend on the worker count
    part = data.train_iterator(src, pre, 8, **{**kw, "num_workers": 0})
    take(part, 9)
    state = json.loads(json.dumps(part.get_state()))
    part.close()
    assert state["next_batch"] == 9 and state["epoch"] == 1 and state["batch_in_epoch"] == 3
    resumed = data.train_iterator(src, pre, 8, state=state, **kw)
    got = take(resumed, 7)
    resumed.close()
    assert [list(b["id"]) for b in got] == [list(b["id"]) for b in want[9:]]
    for a, b in zip(got, want[9:]):
        np.testing.assert_array_equal(a["image"], b["image"])
    # set_state on a running iterator rewinds it
    it = data.train_iterator(src, pre, 8, **{**kw, "num_workers": 0})
    take(it, 3)
    it.set_state(state)
    assert list(next(it)["id"]) == list(want[9]["id"])
    it.close()


def test_state_mismatch_and_worker_count_independence(toy):
    src, pre = toy
    it = data.train_iterator(src, pre, 8, seed=1, process_index=0, process_count=1)
    take(it, 2)
    state = it.get_state()
    with pytest.raises(ValueError, match="global_batch_size saved 8 vs now 10"):
        data.train_iterator(src, pre, 10, seed=1, state=state, process_index=0, process_count=1)
    with pytest.raises(ValueError, match="seed saved 1 vs now 2"):
        data.train_iterator(src, pre, 8, seed=2, state=state, process_index=0, process_count=1)
    it.close()


def test_process_rows_partition_each_global_batch(toy):
    src, pre = toy
    one = take(data.train_iterator(src, pre, 8, seed=0, process_index=0, process_count=1), 6)
    parts = [
        take(data.train_iterator(src, pre, 8, seed=0, process_index=p, process_count=2), 6)
        for p in range(2)
    ]
    for k in range(6):
        assert parts[0][k]["id"].shape == (4,)
        joined = np.concatenate([parts[0][k]["id"], parts[1][k]["id"]])
        np.testing.assert_array_equal(joined, one[k]["id"])  # same global batch, split by rows
        np.testing.assert_array_equal(parts[1][k]["image"], one[k]["image"][4:])
    with pytest.raises(ValueError, match="does not divide by the 3 processes"):
        data.train_iterator(src, pre, 8, seed=0, process_index=0, process_count=3)


def test_eval_iterator_pads_and_masks(toy):
    src, pre = toy
    ev = data.eval_iterator(src, pre, 16, process_index=0, process_count=1)
    batches = list(ev)
    assert len(ev) == len(batches) == 4
    assert all(b["image"].shape == (16, 6, 6, 1) for b in batches)
    mask = np.concatenate([b["mask"] for b in batches])
    assert mask.sum() == 50 and mask.dtype == np.float32
    np.testing.assert_array_equal(batches[-1]["mask"], [1, 1] + [0] * 14)
    np.testing.assert_array_equal(batches[-1]["id"][2:], -1)
    ids = np.concatenate([b["id"] for b in batches])
    np.testing.assert_array_equal(ids[mask > 0], np.arange(100, 150))  # source order, once
    assert np.all(batches[-1]["image"][2:] == 0)
    # eval is the eval transform: no augmentation, identical on a second pass
    np.testing.assert_array_equal(list(ev)[0]["image"], batches[0]["image"])
    np.testing.assert_array_equal(batches[0]["image"][0], pre(src[0]["image"]))
    halves = [
        list(data.eval_iterator(src, pre, 16, process_index=p, process_count=2)) for p in (0, 1)
    ]
    assert len(halves[0]) == len(halves[1]) == 4  # every process runs the same steps
    both = np.concatenate([np.concatenate([a["id"], b["id"]]) for a, b in zip(*halves)])
    np.testing.assert_array_equal(both, ids)
