"""Smoke test of experiments/benchmark_models.py on LeNet-5 (about a second)."""

import json

from experiments import benchmark_models


def test_benchmark_table_and_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    rows = benchmark_models.main(
        [
            "--models",
            "lenet5",
            "--batches",
            "1",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--json",
            str(path),
        ]
    )
    out = capsys.readouterr().out
    assert "| `lenet5` | 32x32x1 | 61,706 |" in out
    (row,) = rows
    assert row["params"] == 61_706 and row["compile_s"] > 0
    assert row["ms_per_image_b1"] > 0
    # XLA's count, 2 per multiply-add: LeNet-5 does ~0.42 M multiply-adds per image
    assert 0.5e-3 < row["gflops"] < 1.5e-3
    saved = json.loads(path.read_text())
    assert saved["rows"][0]["params"] == 61_706 and saved["meta"]["batches"] == [1]
