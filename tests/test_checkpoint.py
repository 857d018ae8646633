"""Checkpoints: latest N + best k kept, the newest never deleted, atomic, checksummed, damaged
steps moved aside with one warning line and the next older one restored, no NaN/Inf ever
written, write errors that name their cause (the checkpoint rows of issue 17's table)."""

import errno
import gc
import json
import logging
import os
import pathlib
import shutil
import subprocess
import sys
import time
import traceback
import uuid

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from jaxcnn import models
from jaxcnn.checkpoint import (
    Checkpointer,
    CheckpointMismatchError,
    CheckpointWriteError,
    CorruptCheckpointError,
    NonFiniteError,
    Restored,
)
from jaxcnn.train import create_train_state


@pytest.fixture(scope="module")
def state():
    return create_train_state(models.create_model("lenet5"), optax.adam(1e-3), (1, 32, 32, 1))


def bump(state, s):
    return state.replace(
        step=jnp.int32(s),
        params={
            **state.params,
            "head": {**state.params["head"], "bias": state.params["head"]["bias"] + s},
        },
    )


def two_steps(path, state, **kw):
    """Steps 1 and 2 saved (with extra), the Checkpointer closed."""
    ck = Checkpointer(path, keep=3, **kw)
    ck.save(1, bump(state, 1), extra={"step": 1})
    ck.save(2, bump(state, 2), extra={"step": 2})
    ck.close()


def data_file(path, step) -> pathlib.Path:
    """The largest array data file of a step (where the weights and Adam moments live)."""
    files = [f for f in (pathlib.Path(path) / str(step) / "state").rglob("*") if f.is_file()]
    return max(files, key=lambda f: f.stat().st_size)


def warnings_of(caplog):
    return [r for r in caplog.records if r.levelno >= logging.WARNING]


def assert_falls_back(path, state, caplog, reason):
    """Step 2 is damaged: restore gives step 1 with one warning naming step 2 and the reason,
    step 2 lies in corrupt/, and saving step 2 again works."""
    ck = Checkpointer(path, keep=3)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        r = ck.restore(state)
    assert isinstance(r, Restored) and r.step == 1 and r.extra == {"step": 1}
    chex.assert_trees_all_equal(r.state.params, bump(state, 1).params)
    chex.assert_trees_all_equal(r.state.opt_state, bump(state, 1).opt_state)
    (w,) = warnings_of(caplog)  # one line, nothing from Orbax or TensorStore
    msg = w.getMessage()
    assert "\n" not in msg and len(msg) < 400, msg
    assert "step 2" in msg and reason in msg and "trying step 1" in msg, msg
    moved = os.listdir(pathlib.Path(path) / "corrupt")
    assert len(moved) == 1 and moved[0].startswith("2."), moved  # moved aside, not deleted
    assert ck.all_steps() == [1]
    assert ck.save(2, bump(state, 2), extra={"again": True})  # the step number is free again
    r = ck.restore(state)
    assert r.step == 2 and r.extra == {"again": True}
    chex.assert_trees_all_equal(r.state.params, bump(state, 2).params)
    ck.close()
    return msg


# -- retention, atomicity -------------------------------------------------------------------
def test_keeps_latest_and_best_and_never_deletes_newest(tmp_path, state):
    ck = Checkpointer(tmp_path, keep=2, keep_best=1, best_metric="acc")
    for s, acc in [(1, 0.95), (2, 0.5), (3, 0.6), (4, 0.7), (5, 0.1)]:
        ck.save(s, bump(state, s), metrics={"acc": acc})
    assert ck.all_steps() == [1, 4, 5]  # best (1) + latest two, newest 5 although worst
    assert ck.best_step() == 1 and ck.latest_step() == 5
    restored, step, extra = ck.restore(state)
    assert step == 5 and extra == {}
    chex.assert_trees_all_equal(restored.params, bump(state, 5).params)
    best = ck.restore(state, step=ck.best_step()).state
    chex.assert_trees_all_equal(best.params, bump(state, 1).params)
    ck.close()
    # a new manager on the same directory still knows which one was best
    ck2 = Checkpointer(tmp_path, keep=2, keep_best=1, best_metric="acc")
    ck2.save(6, bump(state, 6), metrics={"acc": 0.2})
    assert ck2.all_steps() == [1, 5, 6]
    ck2.close()


def test_min_mode_keeps_lowest_loss(tmp_path, state):
    ck = Checkpointer(tmp_path, keep=1, keep_best=1, best_metric="loss", best_mode="min")
    for s, loss in [(1, 3.0), (2, 0.5), (3, 1.0), (4, 2.0)]:
        ck.save(s, state.replace(step=jnp.int32(s)), metrics={"loss": loss})
    assert ck.all_steps() == [2, 4]
    ck.close()


def test_nonfinite_metric_never_ranks_best(tmp_path, state):
    ck = Checkpointer(tmp_path, keep=1, keep_best=1, best_metric="loss", best_mode="min")
    ck.save(1, bump(state, 1), metrics={"loss": 2.0})
    ck.save(2, bump(state, 2), metrics={"loss": float("inf")})
    ck.save(3, bump(state, 3), metrics={"loss": float("nan")})
    ck.save(4, bump(state, 4), metrics={"loss": 3.0})
    assert ck.all_steps() == [1, 4] and ck.best_step() == 1
    for s in ck.all_steps():  # Orbax's metrics files are strict JSON
        text = (tmp_path / str(s) / "metrics" / "metrics").read_text()
        json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in {text}"))
    ck.close()


def test_interrupted_save_leaves_last_good_checkpoint(tmp_path, state):
    ck = Checkpointer(tmp_path, keep=3)
    ck.save(1, bump(state, 1))
    ck.close()
    # a crash mid-save leaves only Orbax's temporary directory behind
    tmp = pathlib.Path(tmp_path) / "2.orbax-checkpoint-tmp-1234"
    (tmp / "state").mkdir(parents=True)
    (tmp / "state" / "partial").write_bytes(b"\0" * 100)
    ck = Checkpointer(tmp_path, keep=3)
    assert ck.all_steps() == [1]
    restored, step, _ = ck.restore(state)
    assert step == 1
    chex.assert_trees_all_equal(restored.params, bump(state, 1).params)
    assert not tmp.exists()  # leftovers of the crashed save are cleaned up
    ck.close()


def test_async_save_roundtrip_bit_identical(tmp_path, state):
    ck = Checkpointer(tmp_path, keep=2, keep_best=0, async_save=True)
    s1 = bump(state, 1)
    ck.save(1, s1, extra={"iterator": {"epoch": 3, "index": np.int64(17)}})
    ck.wait()
    r = ck.restore(state)
    chex.assert_trees_all_equal(jax.device_get(r.state), jax.device_get(s1))
    assert r.extra == {"iterator": {"epoch": 3, "index": 17}}
    with pytest.raises(NonFiniteError):  # refused before anything is started
        ck.save(2, s1.replace(params=jax.tree.map(lambda p: p * jnp.nan, s1.params)))
    ck.close()
    assert sorted(os.listdir(tmp_path)) == ["1"]


# -- extra -------------------------------------------------------------------------------------
def test_extra_is_strict_json_and_read_alone(tmp_path, state):
    ck = Checkpointer(tmp_path, keep=2, keep_best=0)
    extra = {
        "history": [{"loss": float("nan"), "acc": np.float32(0.5)}, {"loss": float("inf")}],
        "fingerprint": {"model": "lenet5", "input": (32, 32, 1)},
        "sums": np.array([1.0, 2.0]),
    }
    ck.save(3, bump(state, 3), extra=extra)
    want = {
        "history": [{"loss": None, "acc": 0.5}, {"loss": None}],
        "fingerprint": {"model": "lenet5", "input": [32, 32, 1]},
        "sums": [1.0, 2.0],
    }
    assert ck.read_extra() == want and ck.read_extra(3) == want
    assert ck.restore(state).extra == want
    text = (tmp_path / "3" / "extra" / "metadata").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in {text}"))
    with pytest.raises(TypeError, match=r"extra\['bad'\]: object is not JSON"):
        ck.save(4, bump(state, 4), extra={"bad": object()})
    with pytest.raises(TypeError, match="keys must be strings"):
        ck.save(4, bump(state, 4), extra={1: "x"})
    assert ck.all_steps() == [3]  # nothing written by the refused saves
    ck.close()
    assert Checkpointer(tmp_path / "none").read_extra() is None


def test_tampered_extra_is_detected(tmp_path, state, caplog):
    two_steps(tmp_path, state)
    f = tmp_path / "2" / "extra" / "metadata"
    f.write_text(f.read_text().replace('"step": 2', '"step": 9'))
    msg = assert_falls_back(tmp_path, state, caplog, "checksum mismatch in extra")
    assert "moved to" in msg


def test_read_extra_falls_back_past_a_damaged_step(tmp_path, state, caplog):
    two_steps(tmp_path, state)
    (tmp_path / "2" / "extra" / "metadata").write_text("{not json")
    ck = Checkpointer(tmp_path, keep=3)
    with caplog.at_level(logging.WARNING):
        assert ck.read_extra() == {"step": 1}
    assert len(warnings_of(caplog)) == 1 and ck.all_steps() == [1]
    ck.close()


# -- damaged checkpoints (issue 17's table) -----------------------------------------------------
def test_two_flipped_bytes_in_a_data_file(tmp_path, state, caplog):
    two_steps(tmp_path, state)
    f = data_file(tmp_path, 2)
    b = bytearray(f.read_bytes())
    n = len(b) // 2
    b[n] ^= 0xFF
    b[n + 1] ^= 0xFF
    f.write_bytes(bytes(b))
    assert_falls_back(tmp_path, state, caplog, "checksum mismatch in")


def test_4kb_overwritten_in_a_data_file(tmp_path, state, caplog):
    two_steps(tmp_path, state)
    f = data_file(tmp_path, 2)
    b = bytearray(f.read_bytes())
    b[1000:5096] = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    f.write_bytes(bytes(b))
    assert_falls_back(tmp_path, state, caplog, "step 2")


def test_truncated_newest(tmp_path, state, caplog):
    two_steps(tmp_path, state)
    f = data_file(tmp_path, 2)
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    msg = assert_falls_back(tmp_path, state, caplog, "step 2")
    assert "TensorStore" not in msg and "'driver'" not in msg  # no spec dumps


def test_emptied_newest_step_folder(tmp_path, state, caplog):
    two_steps(tmp_path, state)
    shutil.rmtree(tmp_path / "2")
    (tmp_path / "2").mkdir()
    assert_falls_back(tmp_path, state, caplog, "the step folder is empty")


def test_state_folder_of_newest_deleted(tmp_path, state, caplog):
    # the old layout's `default/`: the intact older checkpoint must still restore
    two_steps(tmp_path, state)
    shutil.rmtree(tmp_path / "2" / "state")
    assert_falls_back(tmp_path, state, caplog, "state/ folder is missing")


def test_manifest_of_newest_deleted_or_damaged(tmp_path, state, caplog):
    two_steps(tmp_path, state)
    shutil.rmtree(tmp_path / "2" / "manifest")
    assert_falls_back(tmp_path, state, caplog, "manifest/ folder is missing")
    shutil.rmtree(tmp_path / "corrupt")
    m = tmp_path / "2" / "manifest" / "metadata"
    m.write_text(m.read_text().replace('"shape": [10]', '"shape": [11]'))
    assert_falls_back(tmp_path, state, caplog, "manifest does not match its own checksum")


def test_every_step_damaged(tmp_path, state, caplog):
    two_steps(tmp_path, state)
    for s in (1, 2):
        shutil.rmtree(tmp_path / str(s) / "state")
    ck = Checkpointer(tmp_path, keep=3)
    with caplog.at_level(logging.WARNING), pytest.raises(CorruptCheckpointError) as e:
        ck.restore(state)
    assert "no usable checkpoint" in str(e.value) and "step 2" in str(e.value)
    assert len(warnings_of(caplog)) == 2  # one line per step
    assert sorted(os.listdir(tmp_path / "corrupt")) == ["1.no-state", "2.no-state"]
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        ck.restore(state)
    ck.close()


def test_requested_damaged_step_is_not_replaced_by_another(tmp_path, state, caplog):
    two_steps(tmp_path, state)
    shutil.rmtree(tmp_path / "1" / "state")
    ck = Checkpointer(tmp_path, keep=3)
    with caplog.at_level(logging.WARNING), pytest.raises(CorruptCheckpointError, match="step 1"):
        ck.restore(state, step=1)
    assert ck.all_steps() == [2]
    ck.close()


@pytest.fixture
def no_unraisable():
    """Fails the test if anything reaches ``sys.unraisablehook`` (Orbax's futures resolving
    into an event loop that was closed with them pending: "Event loop is closed")."""
    seen, hook = [], sys.unraisablehook
    sys.unraisablehook = lambda u: seen.append(f"{u.exc_type.__name__}: {u.exc_value}")
    try:
        yield
        gc.collect()
        time.sleep(0.5)
        gc.collect()
    finally:
        sys.unraisablehook = hook
    assert not seen, seen[:3]


def test_garbage_data_files_no_event_loop_errors(tmp_path, no_unraisable):
    """A restore that fails on one array leaves no reads pending into a closed event loop."""
    tree = {f"a{i}": jnp.full((32, 32), float(i)) for i in range(60)}
    ck = Checkpointer(tmp_path, keep=3, keep_best=0)
    ck.save(1, tree)
    ck.save(2, jax.tree.map(lambda x: x + 1, tree))
    ck.close()
    for f in (tmp_path / "2" / "state").rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(f.read_bytes()[:50])
    for i in range(3):
        d = tmp_path / f"copy{i}"
        shutil.copytree(tmp_path, d, ignore=shutil.ignore_patterns("copy*"))
        ck = Checkpointer(d, keep=3, keep_best=0)
        r = ck.restore(tree)
        assert r.step == 1
        chex.assert_trees_all_equal(r.state, tree)
        ck.close()


def test_saving_over_a_damaged_step_moves_it_aside(tmp_path, state, caplog):
    two_steps(tmp_path, state)
    shutil.rmtree(tmp_path / "2" / "state")
    ck = Checkpointer(tmp_path, keep=3)
    with caplog.at_level(logging.WARNING):
        assert ck.save(2, bump(state, 2), extra={"new": 1})
    (w,) = warnings_of(caplog)
    assert "step 2" in w.getMessage() and "saving it again" in w.getMessage()
    assert ck.restore(state).extra == {"new": 1}
    ck.close()


def test_checkpoint_of_the_old_layout_is_moved_aside(tmp_path, state, caplog):
    two_steps(tmp_path, state)
    old = tmp_path / "2"
    shutil.rmtree(old / "manifest")
    (old / "state").rename(old / "default")  # what jaxcnn wrote before checksums
    msg = assert_falls_back(tmp_path, state, caplog, "older jaxcnn, without checksums")
    assert "2.old-format" in msg


def test_out_of_memory_is_not_corruption(tmp_path, state):
    two_steps(tmp_path, state)
    ck = Checkpointer(tmp_path, keep=3)
    real = ck.manager.restore

    def oom(step, args=None, **kw):
        if "state" in dict(args.items()):
            raise ValueError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 4.0GiB")
        return real(step, args=args, **kw)

    ck.manager.restore = oom
    with pytest.raises(ValueError, match="RESOURCE_EXHAUSTED"):
        ck.restore(state)
    assert ck.all_steps() == [1, 2] and not (tmp_path / "corrupt").exists()
    ck.manager.restore = real
    assert ck.restore(state).step == 2
    ck.close()


def test_template_mismatch_is_not_corruption(tmp_path, state):
    two_steps(tmp_path, state)
    other = create_train_state(
        models.create_model("lenet5", num_classes=7), optax.adam(1e-3), (1, 32, 32, 1)
    )
    ck = Checkpointer(tmp_path, keep=3)
    with pytest.raises(CheckpointMismatchError, match=r"params/head/kernel: shape \(84, 10\)"):
        ck.restore(other)
    sgd = create_train_state(models.create_model("lenet5"), optax.sgd(0.1), (1, 32, 32, 1))
    with pytest.raises(CheckpointMismatchError, match="not in the template"):
        ck.restore(sgd)
    assert ck.all_steps() == [1, 2] and not (tmp_path / "corrupt").exists()  # left in place
    ck.close()


def test_restore_without_template_and_into_other_dtype(tmp_path, state):
    two_steps(tmp_path, state)
    ck = Checkpointer(tmp_path, keep=3)
    tree, step, extra = ck.restore(None)
    assert step == 2 and extra == {"step": 2}
    np.testing.assert_array_equal(
        tree["params"]["head"]["bias"], bump(state, 2).params["head"]["bias"]
    )
    half = state.replace(params=jax.tree.map(lambda p: p.astype(jnp.bfloat16), state.params))
    r = ck.restore(half)  # checksums verified on the saved float32, then cast
    assert r.state.params["head"]["bias"].dtype == jnp.bfloat16
    ck.close()


def test_errors(tmp_path, state):
    with pytest.raises(ValueError, match="keep must be >= 1"):
        Checkpointer(tmp_path, keep=0)
    ck = Checkpointer(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        ck.restore(state)
    ck.save(3, state)
    with pytest.raises(FileNotFoundError, match="step 7 not in"):
        ck.restore(state, step=7)
    assert ck.save(3, state) is False  # the same values again: nothing to do
    with pytest.raises(FileExistsError, match="step 3 already exists"):
        ck.save(3, bump(state, 3))
    ck.close()


# -- nothing non-finite is ever written ------------------------------------------------------
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_state_is_refused(tmp_path, state, bad):
    ck = Checkpointer(tmp_path, keep=2)
    ck.save(1, bump(state, 1))
    mu = state.opt_state[0].mu
    broken = state.replace(
        opt_state=(
            state.opt_state[0]._replace(
                mu={**mu, "c5": {**mu["c5"], "bias": mu["c5"]["bias"].at[3].set(bad)}}
            ),
        )
        + tuple(state.opt_state[1:])
    )
    with pytest.raises(NonFiniteError, match=r"step 2: opt_state/0/mu/c5/bias holds 1 non-finite"):
        ck.save(2, broken)
    half = state.replace(params=jax.tree.map(lambda p: p.astype(jnp.bfloat16) * bad, state.params))
    with pytest.raises(NonFiniteError, match="step 3: params/"):
        ck.save(3, half)
    assert ck.all_steps() == [1] and sorted(os.listdir(tmp_path)) == ["1"]
    ck.close()


# -- write errors ------------------------------------------------------------------------------
def short_error(e: BaseException, *needles):
    last = traceback.format_exception_only(type(e), e)[-1].strip()
    for n in needles:
        assert n in last, last
    assert e.__cause__ is None and e.__suppress_context__  # no 267-line chain behind it
    assert len("".join(traceback.format_exception(e)).splitlines()) < 12


def test_disk_full_monkeypatched_write(tmp_path, state, monkeypatch, no_unraisable):
    """The JSON write inside Orbax's save raises ENOSPC (as a full disk would)."""
    ck = Checkpointer(tmp_path, keep=1, keep_best=0)
    ck.save(1, bump(state, 1))

    async def full(self, x, directory):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory / "metadata"))

    monkeypatch.setattr(ocp.JsonCheckpointHandler, "_save_fn", full)
    with pytest.raises(CheckpointWriteError) as e:
        ck.save(2, bump(state, 2))
    short_error(e.value, "step 2", str(tmp_path), "No space left on device")
    assert e.value.errno == errno.ENOSPC
    assert sorted(os.listdir(tmp_path)) == ["1"]  # the partial write is gone, step 1 kept
    monkeypatch.undo()
    assert ck.save(2, bump(state, 2))  # space again: saving works
    assert ck.restore(state).step == 2
    ck.close()


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1.5 MB tmpfs (needs root and Linux; skipped elsewhere)."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1536k", "tmpfs", str(mnt)],
            check=True,
            capture_output=True,
        )
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"cannot mount a tmpfs here: {e}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.parametrize("async_save", [False, True])
def test_disk_full_real_tmpfs(small_tmpfs, state, async_save, no_unraisable):
    ck = Checkpointer(small_tmpfs / "ck", keep=1, keep_best=0, async_save=async_save)
    ck.save(1, bump(state, 1))
    ck.wait()
    free = os.statvfs(small_tmpfs).f_bavail * os.statvfs(small_tmpfs).f_frsize
    (small_tmpfs / "pad").write_bytes(b"\0" * (free - 50_000))
    with pytest.raises(CheckpointWriteError) as e:
        ck.save(2, bump(state, 2))
        ck.wait()
    short_error(e.value, "step 2", str(small_tmpfs / "ck"), "No space left on device")
    assert sorted(os.listdir(small_tmpfs / "ck")) == ["1"]  # keep=1, and 1 survived
    (small_tmpfs / "pad").unlink()
    ck.save(2, bump(state, 2))
    ck.wait()
    r = ck.restore(state)
    assert r.step == 2
    chex.assert_trees_all_equal(r.state.params, bump(state, 2).params)
    ck.close()


def test_unwritable_directory(tmp_path, state):
    d = tmp_path / "ck"
    ck = Checkpointer(d, keep=2, keep_best=0)
    ck.save(1, bump(state, 1))
    os.chmod(d, 0o555)
    try:
        if os.access(d, os.W_OK):
            pytest.skip("running as root: permissions are not enforced")
        with pytest.raises(CheckpointWriteError) as e:
            ck.save(2, bump(state, 2))
        short_error(e.value, "step 2", str(d), "Permission denied")
        assert ck.restore(state).step == 1
        with pytest.raises(CheckpointWriteError, match="Permission denied"):
            Checkpointer(d / f"sub{uuid.uuid4().hex[:6]}")
    finally:
        os.chmod(d, 0o755)
        ck.close()


def test_directory_turned_read_only(small_tmpfs, state):
    """As root, permissions are not enforced: a read-only remount makes the directory
    unwritable mid-run instead."""
    d = small_tmpfs / "ck"
    ck = Checkpointer(d, keep=2, keep_best=0)
    ck.save(1, bump(state, 1))
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    try:
        with pytest.raises(CheckpointWriteError) as e:
            ck.save(2, bump(state, 2))
        short_error(e.value, "step 2", str(d), "Read-only file system")
        assert e.value.errno == errno.EROFS
        assert ck.restore(state).step == 1
        with pytest.raises(CheckpointWriteError, match="cannot use .* Read-only file system"):
            Checkpointer(d / "sub")
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_tmpfs)], check=True)
        ck.close()
