"""Multi-host input: 2 processes on loopback through ``jax.distributed``; each reads only its
rows of every global batch (process index and count from JAX); per epoch their example ids are
disjoint and together cover the epoch's examples; evaluation covers the split once.

``jax.distributed`` must start before JAX does, so the workers run this file as a script
(``python tests/test_data_distributed.py PID NPROC PORT OUT``), as tests/test_distributed.py.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from loopback import free_port, run_workers  # noqa: E402

N, BATCH, EPOCHS = 70, 16, 2  # 4 steps per epoch, 6 examples dropped each epoch


def worker(pid: int, nproc: int, port: int, out: str) -> None:
    import jax

    jax.distributed.initialize(f"127.0.0.1:{port}", nproc, pid, initialization_timeout=60)
    from jaxcnn import data

    assert jax.process_index() == pid and jax.process_count() == nproc
    splits = data.load_splits("digits", num_train=N, validation_split=0)
    pre = data.Preprocess((8, 8), 1, kind="mnist", shift=1)
    it = data.train_iterator(splits.train, pre, BATCH, seed=5)  # rows from jax.process_*()
    steps = data.steps_per_epoch(len(splits.train), BATCH)
    epochs = []
    for _ in range(EPOCHS):
        ids = []
        for _ in range(steps):
            b = next(it)
            assert b["image"].shape == (BATCH // nproc, 8, 8, 1)
            ids += b["id"].tolist()
        epochs.append(ids)
    it.close()
    ev = [b["id"][b["mask"] > 0].tolist() for b in data.eval_iterator(splits.test, pre, 64)]
    with open(out, "w") as f:
        json.dump(
            {
                "epochs": epochs,
                "eval": ev,
                "train_ids": splits.train.ids.tolist(),
                "test_ids": splits.test.ids.tolist(),
            },
            f,
        )
    jax.distributed.shutdown()


@pytest.mark.multiprocess
def test_two_processes_read_disjoint_shards_that_cover_each_epoch(tmp_path):
    port = free_port()
    cmds = [
        [sys.executable, __file__, str(pid), "2", str(port), str(tmp_path / f"{pid}.json")]
        for pid in range(2)
    ]
    codes, text = run_workers(cmds, tmp_path)
    assert codes == [0, 0], "\n----\n".join(t[-3000:] for t in text)
    res = [json.loads((tmp_path / f"{pid}.json").read_text()) for pid in range(2)]
    train_ids = np.asarray(res[0]["train_ids"])
    steps = N // BATCH
    for e in range(EPOCHS):
        a, b = set(res[0]["epochs"][e]), set(res[1]["epochs"][e])
        assert len(a) == len(b) == steps * BATCH // 2 and not a & b
        # together: exactly the examples of epoch e (its permutation, the remainder dropped)
        perm = np.random.default_rng([5, e]).permutation(N)[: steps * BATCH]
        assert a | b == set(train_ids[perm].tolist())
    assert res[0]["epochs"][0] != res[0]["epochs"][1]
    ev = [sum(r["eval"], []) for r in res]
    assert not set(ev[0]) & set(ev[1]) and sorted(ev[0] + ev[1]) == sorted(res[0]["test_ids"])
    assert len(res[0]["eval"]) == len(res[1]["eval"])  # same number of eval steps


if __name__ == "__main__":
    worker(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
