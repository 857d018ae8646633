"""Issue 17's table, row by row, as a user meets it: ``python -m experiments.train`` on the
bundled digits with LeNet-5 (in a subprocess where the row is about the command line: exit
status, what is printed; in-process where that is faster), and a fuzz test of the config schema.

The engine's and the checkpointer's own tests (tests/test_trainer.py, tests/test_checkpoint.py)
check the mechanisms on a tiny task and on a bare Checkpointer; the tests here check what a user
of the command line sees. Where a row is covered there, the test says which and checks the rest.

One uninterrupted run (the module fixture ``base``: 2 epochs of 16 steps, a checkpoint every 5
steps) is the reference that the damaged, interrupted and resumed runs must reproduce bit for bit.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import math
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from unittest import mock

import chex
import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from experiments import train as train_script
from experiments.cli import load_config_file
from jaxcnn.checkpoint import Checkpointer
from jaxcnn.tasks import Classification
from jaxcnn.train import config as config_lib
from jaxcnn.train import trainer as trainer_lib
from jaxcnn.train.config import ConfigError
from jaxcnn.train.trainer import NonFiniteError, Trainer

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = ROOT / "experiments" / "configs" / "lenet_digits.py"
# 512 training digits in batches of 32: 16 steps per epoch. checkpoint_every_steps is a key the
# config file does not set (the table's row: such an override failed with AttributeError).
SMALL = {"epochs": 2, "num_train": 512, "checkpoint_every_steps": 5, "progress": False}
STEPS_PER_EPOCH = 16
LAST = 2 * STEPS_PER_EPOCH


# -- helpers ------------------------------------------------------------------------------------
def _command(workdir, args=(), resume=False) -> list[str]:
    small = [
        f"--config.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in SMALL.items()
    ]
    return [
        sys.executable,
        "-m",
        "experiments.train",
        "--config",
        str(CONFIG),
        *small,
        *args,
        "--workdir",
        str(workdir),
        *(["--resume"] if resume else []),
    ]


def cli(workdir, *args, resume=False) -> subprocess.CompletedProcess:
    """``python -m experiments.train`` with the small config (and ``args``) in a subprocess."""
    return subprocess.run(
        _command(workdir, args, resume),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


def in_process(argv, capsys) -> tuple[int, list[str], str]:
    """``experiments.train.main(argv)`` in this process: (exit status, stderr lines, stdout)."""
    capsys.readouterr()
    rc = train_script.main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, [line for line in out.err.splitlines() if line.strip()], out.out


def api_config(**kw) -> dict:
    """The config the command line builds from the small config, for the Python API."""
    return {**load_config_file(str(CONFIG)), **SMALL, **kw}


def steps(workdir) -> list[int]:
    d = pathlib.Path(workdir) / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def saved(checkpoints, step=None):
    """The tree saved as ``step`` (default: the newest), as written."""
    ck = Checkpointer(checkpoints)
    try:
        return ck.restore(None, step=step)
    finally:
        ck.close()


def strict_metrics(workdir) -> dict:
    text = (pathlib.Path(workdir) / "metrics.json").read_text()
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"metrics.json holds {c}"))


def assert_same_run(workdir, reference) -> None:
    """The run in ``workdir`` ended bit-identical to ``reference``: the last checkpoint (state
    and optimizer), the per-epoch history (the interrupted epoch's train means over all its
    steps) and the final test metrics."""
    chex.assert_trees_all_equal(
        saved(workdir / "checkpoints", LAST).state, saved(reference / "checkpoints", LAST).state
    )
    a, b = strict_metrics(workdir), strict_metrics(reference)
    drop = ("time_s", "train_images_per_s", "train_data_wait_fraction")  # timings
    assert [{k: v for k, v in h.items() if k not in drop} for h in a["history"]] == [
        {k: v for k, v in h.items() if k not in drop} for h in b["history"]
    ]
    for k in ("test_loss", "test_accuracy", "steps", "epochs_run"):
        assert a["final"][k] == b["final"][k], k


def copy_run(src, dst) -> pathlib.Path:
    shutil.copytree(src, dst)
    return pathlib.Path(dst)


def largest_data_file(checkpoints, step) -> pathlib.Path:
    files = [f for f in (pathlib.Path(checkpoints) / str(step) / "state").rglob("*") if f.is_file()]
    return max(files, key=lambda f: f.stat().st_size)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> pathlib.Path:
    """The uninterrupted reference run, through the command line."""
    wd = tmp_path_factory.mktemp("reliability") / "base"
    r = cli(wd)
    assert r.returncode == 0, r.stderr
    assert f"{STEPS_PER_EPOCH} steps/epoch x 2 epochs" in r.stdout
    # the override of a key the config file does not set took effect: a step checkpoint (30)
    assert "checkpoint_every_steps" not in load_config_file(str(CONFIG))
    assert steps(wd)[-2:] == [30, LAST]
    return wd


# -- damaged checkpoints --------------------------------------------------------------------------
def test_flipped_bytes_in_newest_checkpoint_fall_back_and_training_continues(base, tmp_path):
    """Row "2 bytes flipped / 4 KB overwritten": loaded silently, trained to NaN, exit 0.
    The Checkpointer's side (checksums, one warning, step saved again) is
    test_checkpoint.py::test_two_flipped_bytes_in_a_data_file and ::test_4kb_overwritten_*;
    here: what ``--resume`` prints and that the run then ends as if nothing had happened."""
    wd = copy_run(base, tmp_path / "run")
    newest, older = steps(wd)[-1], steps(wd)[-2]
    f = largest_data_file(wd / "checkpoints", newest)
    b = bytearray(f.read_bytes())
    b[len(b) // 2] ^= 0xFF
    b[len(b) // 2 + 1] ^= 0xFF
    f.write_bytes(bytes(b))

    r = cli(wd, resume=True)
    assert r.returncode == 0, r.stderr
    (warning,) = [line for line in r.stderr.splitlines() if line.strip()]  # one line, no spec
    assert f"checkpoint step {newest} in" in warning and f"trying step {older}" in warning
    assert len(warning) < 400 and "TensorStore" not in warning
    assert f"Resumed from step {older}" in r.stdout
    (moved,) = os.listdir(wd / "checkpoints" / "corrupt")  # moved aside, not deleted
    assert moved.startswith(f"{newest}.")
    assert newest in steps(wd)  # the step number was saved again
    assert_same_run(wd, base)


def _truncate_newest(ckpts, step):
    f = largest_data_file(ckpts, step)
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _empty_newest(ckpts, step):
    shutil.rmtree(ckpts / str(step))
    (ckpts / str(step)).mkdir()


def _delete_state_folder(ckpts, step):  # the old layout's `default/` is today's `state/`
    shutil.rmtree(ckpts / str(step) / "state")


@pytest.mark.parametrize(
    "damage, reason",
    [
        (_truncate_newest, ""),
        (_empty_newest, "the step folder is empty"),
        (_delete_state_folder, "its state/ folder is missing"),
    ],
    ids=["truncated", "emptied-step-folder", "state-folder-deleted"],
)
def test_damaged_newest_checkpoint_falls_back_to_the_older_one(
    base, tmp_path, caplog, damage, reason
):
    """Rows "newest checkpoint truncated" (82 lines of warning, then a StepAlreadyExistsError
    on every --resume: a crash loop) and "newest step folder emptied / default/ deleted" (the
    intact older checkpoint failed too). Checkpointer level: test_checkpoint.py::
    test_truncated_newest, ::test_emptied_newest_step_folder, ::test_state_folder_of_newest_deleted.
    Here through the Trainer, twice: the second --resume must not crash either."""
    wd = copy_run(base, tmp_path / "run")
    newest, older = steps(wd)[-1], steps(wd)[-2]
    damage(wd / "checkpoints", newest)
    with caplog.at_level(logging.WARNING):
        res = Trainer(Classification(), api_config(), wd, resume=True).run()
    (w,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    msg = w.getMessage()
    assert "\n" not in msg and f"step {newest}" in msg and reason in msg
    assert f"trying step {older}" in msg
    assert res["steps"] == LAST and steps(wd)[-1] == newest
    assert_same_run(wd, base)
    if damage is _truncate_newest:  # the crash loop: resume once more
        again = Trainer(Classification(), api_config(), wd, resume=True).run()
        assert again["steps"] == LAST and again["test_loss"] == res["test_loss"]


# -- resume: the config fingerprint, a missing checkpoint ----------------------------------------
@pytest.mark.parametrize(
    "args, listed",
    [
        (["--config.model=lenet5"], ["model: 'lenet5_modern' -> 'lenet5'"]),
        (
            ["--config.optimizer=sgd", "--config.batch_size=16"],
            ["batch_size: 32 -> 16", "optimizer: 'adam' -> 'sgd'"],
        ),
    ],
    ids=["model", "optimizer-and-batch_size"],
)
def test_resume_with_another_config_refuses_in_one_line(base, args, listed):
    """Rows "--resume with --config.model=lenet5 into a lenet5_modern run" (loaded the other
    model's weights, exit 0) and "another optimizer / batch_size" (23-471 lines, or silently
    "finished"). Engine level: test_trainer.py::test_resume_checks_the_config."""
    before = steps(base)
    r = cli(base, *args, resume=True)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: --resume: the config differs from the checkpoint's run")
    for key in listed:
        assert key in lines[0]
    assert "allow_config_change" in lines[0] and "Resumed" not in r.stdout
    assert steps(base) == before  # nothing touched


def _image_folder(root: pathlib.Path, classes: int, per_class: int = 8) -> pathlib.Path:
    from PIL import Image

    rng = np.random.default_rng(classes)
    for split, n in (("train", per_class), ("test", 2)):
        for c in range(classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = (rng.random((32, 32)) * 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{i}.png")
    return root


def _folder_args(data, workdir) -> list:
    return [
        "--config",
        CONFIG,
        "--config.dataset=folder",
        f"--config.data_dir={data}",
        "--config.model=lenet5",
        "--config.epochs=1",
        "--config.batch_size=8",
        "--config.validation_split=3",
        "--config.progress=false",
        "--workdir",
        workdir,
    ]


def test_resume_with_another_num_classes_refuses_in_one_line(tmp_path, capsys):
    """Row "--resume with another num_classes": an image folder that gained a class."""
    data = _image_folder(tmp_path / "data", classes=3)
    args = _folder_args(data, tmp_path / "run")
    assert in_process(args, capsys)[0] == 0
    _image_folder(tmp_path / "more", classes=4)
    for split in ("train", "test"):
        shutil.copytree(tmp_path / "more" / split / "class3", data / split / "class3")
    rc, err, _ = in_process([*args, "--resume"], capsys)
    assert rc == 1 and len(err) == 1, err
    assert "derived.num_classes: 3 -> 4" in err[0]


def test_resume_without_a_checkpoint_stops(tmp_path, capsys):
    """Row "--resume into a directory with no checkpoint (a typo)": trained from scratch."""
    rc, err, out = in_process(
        ["--config", CONFIG, "--workdir", tmp_path / "typo", "--resume"], capsys
    )
    assert rc == 1 and len(err) == 1, err
    assert err[0].startswith("error: --resume: no checkpoint in ")
    assert "classification:" not in out  # no data read, nothing built


# -- preemption, kill -9 --------------------------------------------------------------------------
def _start_and_signal(workdir, sig) -> subprocess.Popen:
    """Start the small run and send ``sig`` once the step-5 checkpoint is written (so in
    practice in the middle of epoch 1, some steps later)."""
    p = subprocess.Popen(
        _command(workdir), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 300
    while not (workdir / "checkpoints" / "5").is_dir():
        if p.poll() is not None or time.time() > deadline:
            p.kill()
            pytest.fail(f"the run ended before its first checkpoint: {p.communicate()}")
        time.sleep(0.02)
    p.send_signal(sig)
    return p


def test_sigterm_saves_exits_0_and_resumes_bit_identical(base, tmp_path):
    """Row "SIGTERM mid-epoch": exit 143, the work since the last epoch lost. Tiny-task
    version: test_trainer.py::test_killed_run_resumes_with_the_same_examples_and_result."""
    wd = tmp_path / "run"
    p = _start_and_signal(wd, signal.SIGTERM)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert "Traceback" not in err
    (line,) = [x for x in out.splitlines() if "SIGTERM" in x]
    m = re.fullmatch(r"SIGTERM: saved step (\d+) to (.+); continue with --resume", line)
    assert m, line
    stopped = int(m[1])
    assert 5 <= stopped < LAST and steps(wd)[-1] == stopped

    r = cli(wd, resume=True)
    assert r.returncode == 0, r.stderr
    assert f"Resumed from step {stopped}" in r.stdout
    assert_same_run(wd, base)


@pytest.mark.slow
def test_kill_9_mid_epoch_resumes_with_complete_epoch_metrics(base, tmp_path):
    """Row "kill -9 mid-epoch, resume": the interrupted epoch's train means averaged only the
    steps after the resume. Tiny-task version: test_trainer.py (SIGKILL parameter)."""
    wd = tmp_path / "run"
    p = _start_and_signal(wd, signal.SIGKILL)
    p.communicate(timeout=300)
    assert p.returncode == -signal.SIGKILL
    r = cli(wd, resume=True)
    assert r.returncode == 0, r.stderr
    assert_same_run(wd, base)


# -- divergence, a used work directory ----------------------------------------------------------
def test_divergence_halts_naming_the_step_into_a_used_workdir(base, tmp_path):
    """Rows "learning_rate=1e6" (loss inf, exit 0, inf/NaN checkpoints, one ranked best,
    metrics.json with Infinity) and "training again into a used work directory without
    --resume" (the old run's checkpoints mixed in). Engine level: test_trainer.py::
    test_nonfinite_step_halts_naming_it_and_checkpoints_stay_finite (checkpoints written before
    the bad step stay finite), ::test_new_run_into_a_used_workdir_moves_the_old_run_aside;
    test_classification.py::test_divergence_is_an_error_naming_the_step."""
    wd = copy_run(base, tmp_path / "run")
    r = cli(wd, "--config.learning_rate=1e6")
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert re.match(r"error: a non-finite loss or update at step \d+ ", lines[0]), lines[0]
    assert "no checkpoint was written" in lines[0]  # the guard stopped it before any save
    # the old run was moved aside whole, said in one line
    (said,) = [x for x in r.stdout.splitlines() if "held another run" in x]
    (moved,) = [p for p in wd.iterdir() if p.name.startswith("replaced-")]
    assert str(moved) in said
    assert steps(moved) == steps(base)
    chex.assert_trees_all_equal(
        saved(moved / "checkpoints", LAST).state, saved(base / "checkpoints", LAST).state
    )
    # no checkpoint of the diverged run; metrics.json strict JSON saying why it stopped
    assert steps(wd) == []
    m = strict_metrics(wd)
    assert m["final"]["halted"] == lines[0].removeprefix("error: ")
    assert m["config"]["learning_rate"] == 1e6
    # --resume now: nothing to resume, said in one line (a real exit status)
    r = cli(wd, resume=True)
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        f"error: --resume: no checkpoint in {wd / 'checkpoints'}; nothing to resume (check "
        f"--workdir, or run without --resume to start a new run)"
    ]


# -- config errors: one line, before any data is read -------------------------------------------
@pytest.mark.parametrize(
    "arg, message",
    [
        (
            "--config.learning_rate=nan",
            "config key 'learning_rate': expected a finite number > 0, got nan",
        ),
        ("--config.learning_rate=-1", "'learning_rate': expected a finite number > 0, got -1.0"),
        ("--config.epochs=0", "config key 'epochs': expected >= 1, got 0"),
        ("--config.epochs=-1", "config key 'epochs': expected >= 1, got -1"),
        ("--config.test_split=1.5", "'test_split': expected 0 (none), a fraction in (0, 1)"),
        ("--config.batch_size=0", "config key 'batch_size': expected >= 1, got 0"),
        ("--config.batch_size=-5", "config key 'batch_size': expected >= 1, got -5"),
        ("--config.epoch=3", "unknown config key 'epoch' (did you mean 'epochs'?)"),
    ],
)
def test_bad_config_value_is_one_line_before_any_data(arg, message, tmp_path, capsys):
    """Rows "learning_rate=nan / -1" (ran, exit 0), "epochs=0 or -1" (reported the untrained
    accuracy), "test_split=1.5" (accuracy 1.0 on one example), "batch_size=0"
    (ZeroDivisionError), "batch_size=-5" (the error after 83 s of data loading), "--config.epoch=3"
    (a 52-line traceback). Schema level: test_trainer.py::test_bad_config_is_one_line_*."""
    wd = tmp_path / "run"
    fail = mock.Mock(side_effect=AssertionError("data read before the config was checked"))
    with mock.patch("jaxcnn.data.splits_from_config", fail):
        rc, err, _ = in_process(["--config", CONFIG, arg, "--workdir", wd], capsys)
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("error: ") and message in err[0]
    assert not fail.called and not wd.exists()


def test_num_classes_in_model_kwargs_is_one_line_before_any_data(tmp_path, capsys):
    """``--config.model_kwargs.num_classes=5``: a TypeError traceback (a keyword given twice)."""
    fail = mock.Mock(side_effect=AssertionError("data read before the config was checked"))
    with mock.patch("jaxcnn.data.splits_from_config", fail):
        rc, err, _ = in_process(
            ["--config", CONFIG, "--config.model_kwargs.num_classes=5", "--workdir", tmp_path],
            capsys,
        )
    assert rc == 2 and len(err) == 1, err
    assert "num_classes comes from the dataset" in err[0] and not fail.called


def test_bad_config_exit_status_and_no_traceback_in_a_real_process(tmp_path):
    r = cli(tmp_path / "run", "--config.epoch=3")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "error: unknown config key 'epoch' (did you mean 'epochs'?)"
    ]


def test_any_schema_key_and_empty_or_non_finite_text_parse_from_the_command_line():
    """Row "a valid key the config file does not set fails with AttributeError" (the base run
    overrides such a key); and values the parser refused before: an empty string
    (``--config.remat=``), ``nan``/``inf`` (so that the range check names them), ``-1`` for a
    key that takes -1 or a bool (``augment_flip``)."""
    fields = config_lib.schema(Classification.fields)
    got = config_lib.parse_overrides(
        [
            "--config.remat=",
            "--config.interpolation=",
            "--config.learning_rate=nan",
            "--config.grad_clip=inf",
            "--config.augment_flip=-1",
            "--config.description='quoted'",
        ],
        fields,
    )
    assert got["remat"] == "" and got["interpolation"] == "" and got["augment_flip"] == -1
    assert math.isnan(got["learning_rate"]) and got["grad_clip"] == math.inf
    assert got["description"] == "quoted"
    with pytest.raises(ConfigError, match="'grad_clip': expected a finite number >= 0.0, got inf"):
        config_lib.validate({"grad_clip": got["grad_clip"]}, fields)


# -- write errors ----------------------------------------------------------------------------------
def _tiny_args(workdir) -> list:
    return [
        "--config",
        CONFIG,
        "--config.epochs=2",
        "--config.num_train=64",
        "--config.progress=false",
        "--workdir",
        workdir,
    ]


def test_disk_full_during_a_save_is_one_line_naming_the_cause(tmp_path, capsys):
    """Row "disk full during a save": the cause buried in 267 lines ending in an ImportError.
    Checkpointer level (a real full tmpfs, a monkeypatched write): test_checkpoint.py::
    test_disk_full_*; here the command line's exit status and last line."""
    import orbax.checkpoint as ocp

    async def full(self, x, directory):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory / "metadata"))

    with mock.patch.object(ocp.JsonCheckpointHandler, "_save_fn", full):
        rc, err, _ = in_process(_tiny_args(tmp_path / "run"), capsys)
    assert rc == 1
    assert len(err) == 1 and err[0].endswith("No space left on device"), err


def test_metrics_write_failure_then_resume_keeps_history_and_checkpoint_in_step(tmp_path):
    """Row "workdir unwritable mid-run": the checkpoint saved, not metrics.json; after the
    resume the history skipped an epoch and epochs_run was wrong. metrics.json is now rebuilt
    from the checkpoint."""
    wd = tmp_path / "run"
    cfg = {**api_config(), "epochs": 2, "num_train": 64}  # 2 steps per epoch
    real = trainer_lib.write_json

    def unwritable(path, obj):
        raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))

    with mock.patch.object(trainer_lib, "write_json", unwritable):
        with pytest.raises(PermissionError):  # after epoch 1's checkpoint, at its metrics
            Trainer(Classification(), cfg, wd).run()
    assert steps(wd) == [2] and not (wd / "metrics.json").exists()
    assert trainer_lib.write_json is real
    res = Trainer(Classification(), cfg, wd, resume=True).run()
    m = strict_metrics(wd)
    assert [h["epoch"] for h in m["history"]] == [1, 2]
    assert res["epochs_run"] == m["final"]["epochs_run"] == 2


def test_closing_a_checkpointer_that_never_saved_waits_for_orbax(tmp_path):
    """Found by the fuzz: a run stopped before its first save (an error found once the data is
    read) closed its Checkpointer while Orbax was still looking for old temporary folders in
    the directory; when the directory was gone by then, Orbax logged a 40-line traceback."""
    from orbax.checkpoint._src.path import temporary_paths

    real, done = temporary_paths.cleanup_temporary_paths, []

    async def slow_cleanup(*args, **kwargs):
        await asyncio.sleep(0.3)
        await real(*args, **kwargs)
        done.append(True)

    with mock.patch.object(temporary_paths, "cleanup_temporary_paths", slow_cleanup):
        Checkpointer(tmp_path / "ck").close()
        assert done == [True]


# -- data errors ----------------------------------------------------------------------------------
def test_corrupt_image_error_names_the_file(tmp_path, capsys):
    """Row "a corrupt PNG in a folder dataset": OSError: Truncated File Read, no file name."""
    data = _image_folder(tmp_path / "data", classes=3)
    bad = data / "train" / "class1" / "3.png"
    bad.write_bytes(bad.read_bytes()[:40])
    from jaxcnn.data import DataError, FolderSource

    src = FolderSource(str(data / "train"), ["class1/3.png"], [1])
    with pytest.raises(DataError) as e:  # a ValueError: handlers of ValueError still catch it
        src[0]
    assert str(bad) in str(e.value) and "\n" not in str(e.value)


def test_corrupt_image_is_one_line_on_the_command_line(tmp_path, capsys):
    data = _image_folder(tmp_path / "data", classes=3)
    bad = data / "train" / "class1" / "3.png"
    bad.write_bytes(bad.read_bytes()[:40])
    rc, err, _ = in_process(_folder_args(data, tmp_path / "run"), capsys)
    assert rc == 1 and len(err) == 1 and str(bad) in err[0]


def test_unknown_tfds_name_is_short_with_a_suggestion():
    """Row "tfds:doesnotexist": the right message buried in 484 lines (the whole catalogue)."""
    pytest.importorskip("tensorflow_datasets")
    from jaxcnn.data.sources import tfds_builder

    with pytest.raises(ValueError) as e:
        tfds_builder("mnistt", download=False)
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 200
    assert msg.startswith("unknown TFDS dataset 'mnistt'") and "did you mean" in msg


def test_a_batch_of_zero_images_is_refused_before_tracing():
    """Row "a batch of 0 images to apply": ZeroDivisionError."""
    import jax.numpy as jnp

    from jaxcnn import models

    model = models.create_model("lenet5")
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)))
    with pytest.raises(ValueError, match="batch"):
        model.apply(variables, jnp.zeros((0, 32, 32, 1)))


# -- fuzz: random configs over the classification schema ----------------------------------------
FIELDS = config_lib.schema(Classification.fields)

# Any key may get a value of a wrong type.
ODD = [None, "x", "", 1.5, 3, -1, True, (1, 2), {}, float("nan"), float("inf")]

# Per key: (values that fit, values that do not: types, ranges, names). Kept cheap to run:
# the digits, LeNet-5, a few dozen examples; no worker processes (num_workers > 0 starts them).
# Whether a value "fits" is only how configs are drawn; the tests check what the run makes of it.
POOLS: dict[str, tuple[list, list]] = {
    "description": (["", "a run", "'quoted'", "x" * 300], []),
    "model": (["lenet5", "lenet5_modern"], ["lenet6", "unet_small", "LeNet5"]),
    "model_kwargs": ([{}, {"in_channels": 1}], [{"in_channels": 0}, {"bogus": 1}]),
    "init_from": ([""], ["/nonexistent/weights.safetensors"]),
    "seed": ([0, 1, 12345, 2**31 - 1], [-1]),
    "batch_size": ([1, 8, 16, 24], [0, -5, 10_000, 2.0, "16"]),
    "eval_batch_size": ([1, 7, 512], [0, -1]),
    "epochs": ([1, 2], [0, -1, 1.0]),
    "optimizer": (["adam", "adamw", "sgd", "rmsprop", "lamb", "lars"], ["lbfgs", "Adam"]),
    "momentum": ([0, 0.5, 0.9], [1.0, -0.1]),
    "nesterov": ([-1, True, False], [2]),
    "decay_mask": ([False, True], ["yes"]),
    "min_lr": ([0, 1e-6], [-1e-6]),
    "warmup_init_lr": ([0, 1e-6], [-1.0]),
    "learning_rate": ([1e-3, 0.01, 1e-5, 1e6], [0, -1, 0.0]),
    "schedule": (["constant", "cosine", "step"], ["linear"]),
    "warmup_epochs": ([0, 0.5, 3], [-1]),
    "weight_decay": ([0, 1e-4, 0.05], [-0.1]),
    "grad_clip": ([0, 1.0, 1e-3], [-1]),
    "eval_every_steps": ([0, 1, 3], [-1]),
    "eval_test_every_epoch": ([False, True], [1]),
    "early_stopping_patience": ([0, 1, 2], [-1]),
    "checkpoint_every_steps": ([0, 1, 2], [-3]),
    "keep_checkpoints": ([1, 2], [0]),
    "keep_best": ([0, 1, 3], [-1]),
    "log_every_steps": ([1, 2, 20], [0]),
    "progress": ([False, True], ["no"]),
    "tensorboard": ([False, True], ["no"]),
    "on_nonfinite": (["halt", "skip"], ["ignore"]),
    "max_nonfinite_skips": ([1, 10], [0]),
    "allow_config_change": ([False, True], ["yes"]),
    "num_devices": ([0, 1], [2, -1]),
    "precision": (["float32", "bfloat16", "float16"], ["fp8"]),
    "grad_accum_steps": ([1, 2, 4], [3, 0]),
    "remat": (["", "none", "dots", "full"], ["blocks", "all"]),
    "dataset": (["digits"], ["digitz", "folder", "idx:/nonexistent"]),
    "data_dir": ([""], ["/nonexistent"]),
    "validation_split": ([0, 0.1, 0.25, 5, 16], [1.0, -0.1, 2.5, 100_000]),
    "test_split": ([None, 0.2, 0.5, 50], [0, 1.5, -1, 10**6, 10.5]),
    "split_seed": ([0, 7, 2**31 - 1], []),
    "num_train": ([8, 32, 64, 96, 10**6], [-1, 0.5]),
    "input_size": ([(), (32, 32)], [(28, 28), (16, 16), (40, 40), (0, 5), (28,), 28]),
    "channels": ([0, 1], [3, -1]),
    "transform": (["auto", "mnist", "cifar", "imagenet", "none"], ["fancy"]),
    "augment_shift": ([-1, 0, 2], [-2]),
    "augment_flip": ([-1, True, False], [2]),
    "mean": ([(), (0.5,)], [(0.1, 0.2, 0.3), ("a",)]),
    "std": ([(), (0.25,)], [(0.2, 0.2, 0.2), (0.0,), (-1.0,)]),
    "crop_pct": ([0, 0.875, 1.0], [1.5, -0.1]),
    "interpolation": (["", "bilinear", "bicubic", "nearest", "lanczos"], ["bogus"]),
    "num_workers": ([0], [-1]),
    "augment_policy": (["none", "randaugment", "trivialaugment", "autoaugment"], ["mixup"]),
    "randaugment_num_ops": ([0, 1, 2], [-1]),
    "randaugment_magnitude": ([0, 5, 9, 10], [11]),
    "randaugment_magnitude_std": ([0, 0.5, float("inf")], [-1]),
    "randaugment_prob": ([0, 0.5, 1], [1.5]),
    "randaugment_increasing": ([True, False], []),
    "color_jitter": ([0, 0.4, (0.1, 0.2, 0.3), (0.1, 0.1, 0.1, 0.1)], [-0.1, (0.1,)]),
    "random_erasing": ([0, 0.25, 1.0], [1.5]),
    "random_erasing_mode": (["const", "rand", "pixel"], ["noise"]),
    "random_erasing_area": ([(0.02, 1 / 3), (0.1, 0.1), (0.0001, 1)], [(0.5, 0.1), (0, 1)]),
    "random_erasing_min_aspect": ([0.3, 1], [0, 2]),
    "random_erasing_count": ([1, 3], [0]),
    "label_smoothing": ([0, 0.1, 0.9], [1.0, -0.1]),
    "transfer": (["", "finetune", "lora:4", "linear_probe"], ["nonsense", "gradual:x"]),
    "mixup_alpha": ([0, 0.2, 0.8], [-0.1]),
    "cutmix_alpha": ([0, 1.0], [-1.0]),
    "mixup_prob": ([0, 0.5, 1.0], [1.5]),
    "mixup_switch_prob": ([0, 0.5, 1.0], [-0.5]),
    "ema_decay": ([0, 0.5, 0.99], [1.0, -0.1]),
    "ema_warmup": ([False, True], []),
    "ema_warmup_gamma": ([1.0, 10.0], [0]),
    "ema_warmup_power": ([2 / 3, 0.75], [0]),
    "ema_min_decay": ([0, 0.5], [1.0]),
    "ema_update_after_step": ([0, 3], [-1]),
    "select_on_ema": ([-1, False, True], [2]),
    "drop_path_rate": ([-1], [0.1, 1.0, -0.5]),
    "aux_weight": ([-1, 0, 0.3], [-2]),
}

# A small valid run: 64 digits (16 of them for validation) in batches of 16, one epoch.
FUZZ_BASE = {
    "model": "lenet5",
    "dataset": "digits",
    "num_train": 64,
    "validation_split": 16,
    "batch_size": 16,
    "eval_batch_size": 512,
    "epochs": 1,
    "progress": False,
}


@st.composite
def configs(draw) -> dict:
    """``FUZZ_BASE`` with up to 4 keys set to values from ``POOLS`` that fit, and half of the
    time one thing that does not: a value from a key's misfits or of a wrong type (``ODD``), or
    an unknown key (a typo of a real one, or any name)."""
    cfg = dict(FUZZ_BASE)
    for key in draw(st.lists(st.sampled_from(sorted(POOLS)), max_size=4, unique=True)):
        cfg[key] = draw(st.sampled_from(POOLS[key][0]))
    kind = draw(st.sampled_from(["fits"] * 4 + ["misfit", "odd", "typo", "unknown"]))
    if kind in ("misfit", "odd"):
        key = draw(st.sampled_from(sorted(k for k in POOLS if POOLS[k][1] or kind == "odd")))
        cfg[key] = draw(st.sampled_from(POOLS[key][1] if kind == "misfit" else ODD))
    elif kind == "typo":
        real = draw(st.sampled_from(sorted(FIELDS)))
        cfg[real[:-1]] = cfg.pop(real, FIELDS[real].default)
    elif kind == "unknown":
        cfg[draw(st.from_regex(r"[a-z][a-z_]{0,11}", fullmatch=True))] = 0
    return cfg


def _cli_text(v) -> str:
    """How a user writes ``v`` after ``--config.KEY=``."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return repr(v) if len(v) >= 2 and v[0] in "'\"" and v[-1] == v[0] else v
    return repr(v)


def test_fuzz_pools_cover_the_whole_schema():
    assert set(POOLS) == set(FIELDS)


@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(cfg=configs())
def test_fuzz_validation_is_one_line_or_a_config_the_command_line_reproduces(cfg):
    """The default-suite part of the fuzz (validation only, milliseconds per config): a config
    is refused with a one-line ConfigError when the Trainer is built (no work directory made),
    or it validates, and every one of its keys written on the command line gives it back."""
    with tempfile.TemporaryDirectory() as d:
        try:
            trainer = Trainer(Classification(), cfg, os.path.join(d, "run"))
        except ConfigError as e:
            msg = str(e)
            assert msg and "\n" not in msg and len(msg) < 400, msg
            assert not os.path.exists(os.path.join(d, "run"))
            event("refused")
            return
    event("valid")
    out = trainer.cfg
    assert set(out) == set(FIELDS)
    assert repr(config_lib.validate(out, FIELDS)) == repr(out)  # repr: nan == nan
    argv = [f"--config.{k}={_cli_text(v)}" for k, v in out.items() if k != "model_kwargs"]
    argv += [f"--config.model_kwargs.{k}={v!r}" for k, v in out["model_kwargs"].items()]
    again = config_lib.validate(config_lib.parse_overrides(argv, FIELDS), FIELDS)
    assert repr(again) == repr(out)


_traces = {"train": 0}


def _counting_guarded(step_fn):
    """``trainer.guarded`` that counts how often the train step is traced (each trace is
    followed by a compilation)."""
    inner = _real_guarded(step_fn)

    def step(*args):
        _traces["train"] += 1
        return inner(*args)

    return step


_real_guarded = trainer_lib.guarded


def _all_finite(tree) -> bool:
    return all(
        np.all(np.isfinite(np.asarray(x)))
        for x in jax.tree.leaves(tree)
        if np.issubdtype(np.asarray(x).dtype, np.inexact)
    )


def run_fuzz_config(cfg: dict) -> str:
    """Train ``cfg``; returns how it ended ("error", "halted" or "finished") after checking
    that it ended well: a one-line ConfigError/ValueError (or FileNotFoundError naming a data
    path) before the train step was compiled,
    a one-line NonFiniteError with only finite checkpoints, or finite results."""
    _traces["train"] = 0
    with (
        tempfile.TemporaryDirectory() as d,
        mock.patch.object(trainer_lib, "guarded", _counting_guarded),
    ):
        wd = pathlib.Path(d) / "run"
        try:
            result = Trainer(Classification(), cfg, wd).run()
        except NonFiniteError as e:
            assert "\n" not in str(e) and re.search(r"at step \d+", str(e)), str(e)
            assert "halted" in strict_metrics(wd)["final"]
            for s in steps(wd):
                assert _all_finite(saved(wd / "checkpoints", s).state), s
            return "halted"
        except (ValueError, FileNotFoundError) as e:  # ConfigError; a data path that is not
            msg = str(e)
            assert msg and "\n" not in msg, f"{type(e).__name__} in several lines: {msg}"
            assert _traces["train"] == 0, f"{type(e).__name__} after compiling: {msg}"
            return "error"
        assert result["compilations"] == {"train_step": 1}
        assert math.isfinite(result["test_loss"]) and 0 <= result["test_accuracy"] <= 1
        assert _all_finite(result["state"].params)
        m = strict_metrics(wd)
        assert m["final"]["steps"] == result["steps"] > 0
        return "finished"


@pytest.mark.slow
@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(cfg=configs())
def test_fuzz_every_config_finishes_finite_or_fails_early_in_one_line(cfg):
    """Issue 17's fuzz: 200 random configs (see ``configs``), each trained for a few steps
    (how they ended: ``--hypothesis-show-statistics``)."""
    event(run_fuzz_config(cfg))
