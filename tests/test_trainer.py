"""The one training engine (jaxcnn.train.Trainer) on a tiny task: compile once, resume exactly
(after stop, kill -9 and SIGTERM, by the example ids seen), non-finite guard, config fingerprint,
work-directory hygiene, validation-only selection, strict metrics.json."""

import json
import os
import signal
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import pytest

from jaxcnn.train.config import ConfigError
from jaxcnn.train.trainer import NonFiniteError, ResumeError, Trainer

sys.path.insert(0, os.path.dirname(__file__))
from tiny_task import TinyTask, base_config  # noqa: E402

SCRIPT = os.path.join(os.path.dirname(__file__), "tiny_task.py")


def run(tmp, name="run", task=None, resume=False, stop_at_step=None, **cfg):
    return Trainer(task or TinyTask(), base_config(**cfg), tmp / name, resume=resume).run(
        stop_at_step=stop_at_step
    )


def metrics(tmp, name="run"):
    text = (tmp / name / "metrics.json").read_text()
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON: {c}"))


def test_trains_compiles_once_and_writes_strict_metrics(tmp_path):
    res = run(tmp_path)
    assert res["compilations"]["train_step"] == 1
    assert res["steps"] == 36 and res["epochs_run"] == 3
    m = metrics(tmp_path)
    assert [h["epoch"] for h in m["history"]] == [1, 2, 3]
    assert all("val_accuracy" in h and "test_accuracy" not in h for h in m["history"])
    assert m["final"]["test_accuracy"] > 0.6  # learns the linear rule
    assert 0.0 <= m["final"]["data_wait_fraction"] <= 1.0
    assert m["final"]["selected"]["by"] == "val_accuracy"


def test_selection_uses_validation_not_test(tmp_path):
    # validation accuracy forced to peak after epoch 1 (state step 12 -> epoch index 1)
    task = TinyTask(val_override={1: 0.9, 2: 0.5, 3: 0.4})
    res = run(tmp_path, task=task, keep_best=1)
    assert res["selected"]["step"] == 12 and res["selected"]["val_accuracy"] == 0.9
    assert "test_accuracy" in res["selected"]  # the selected model's test figure, reported


def test_early_stopping_counts_validation_evaluations(tmp_path):
    task = TinyTask(val_override={i: 0.5 for i in range(1, 40)})
    res = run(tmp_path, task=task, epochs=30, early_stopping_patience=2)
    assert res["stopped_early"] and res["epochs_run"] == 3


def test_resume_after_stop_equals_uninterrupted_run(tmp_path):
    full = run(tmp_path, "full")
    part = run(tmp_path, "part", stop_at_step=17)  # mid-epoch 2, after the step-15 checkpoint
    assert part["preempted"] and part["step"] == 17
    resumed = run(tmp_path, "part", resume=True)
    chex.assert_trees_all_equal(resumed["state"].params, full["state"].params)
    chex.assert_trees_all_equal(resumed["state"].opt_state, full["state"].opt_state)
    # the interrupted epoch's train metrics average all its steps, as in the uninterrupted run
    h_full, h_res = metrics(tmp_path, "full")["history"], metrics(tmp_path, "part")["history"]
    assert h_res == [
        dict(
            h,
            time_s=r["time_s"],
            train_images_per_s=r["train_images_per_s"],
            train_data_wait_fraction=r["train_data_wait_fraction"],
        )
        for h, r in zip(h_full, h_res)
    ]


def _ids_by_step(path):
    seen = {}
    for line in open(path):
        step, *ids = map(int, line.split())
        seen[step] = ids  # a resumed run re-reads from its checkpoint: the last read wins
    return seen


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_run_resumes_with_the_same_examples_and_result(tmp_path, sig):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, SCRIPT]
    ref = tmp_path / "ref"
    subprocess.run(
        [*cmd, str(ref), "--ids", str(tmp_path / "ref.ids")],
        env=env,
        check=True,
        capture_output=True,
    )
    work, ids = tmp_path / "killed", tmp_path / "killed.ids"
    p = subprocess.Popen(
        [*cmd, str(work), "--ids", str(ids), "--slow", "0.05"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until mid-epoch 2 (past the step-15 checkpoint)
        if ids.exists() and len(ids.read_text().splitlines()) >= 19:
            break
        time.sleep(0.05)
    p.send_signal(sig)
    out, err = p.communicate(timeout=120)
    if sig == signal.SIGTERM:
        assert p.returncode == 0, err
        assert "SIGTERM: saved step" in out
    else:
        assert p.returncode == -signal.SIGKILL
    r = subprocess.run(
        [*cmd, str(work), "--ids", str(ids), "--resume"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    assert "Resumed from step" in r.stdout
    assert _ids_by_step(ids) == _ids_by_step(tmp_path / "ref.ids")
    a = json.loads(r.stdout.split("RESULT ")[-1])
    b = json.loads((ref / "metrics.json").read_text())["final"]
    assert a["test_accuracy"] == b["test_accuracy"] and a["test_loss"] == b["test_loss"]


def test_nonfinite_step_halts_naming_it_and_checkpoints_stay_finite(tmp_path):
    with pytest.raises(NonFiniteError, match=r"at step 7 "):
        run(tmp_path, task=TinyTask(poison={7}), checkpoint_every_steps=1, log_every_steps=1)
    from jaxcnn.checkpoint import Checkpointer

    template = TinyTask().init_state_for(base_config())
    ck = Checkpointer(tmp_path / "run" / "checkpoints")
    assert ck.all_steps() == [5, 6]  # the newest two, both before the bad step
    for s in ck.all_steps():
        params = ck.restore(template, step=s).state.params
        assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))
    ck.close()


def test_skip_mode_drops_bad_updates(tmp_path):
    res = run(tmp_path, task=TinyTask(poison={7, 20}), on_nonfinite="skip")
    assert res["steps"] == 36  # ran to the end; the two bad steps changed nothing
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(res["state"].params))
    h = metrics(tmp_path)["history"]
    assert all(np.isfinite(r["train_loss"]) for r in h)  # the dropped steps are not averaged
    with pytest.raises(NonFiniteError, match="3 non-finite steps in a row"):
        run(
            tmp_path,
            "k",
            task=TinyTask(poison={7, 8, 9}),
            on_nonfinite="skip",
            max_nonfinite_skips=3,
            log_every_steps=1,
        )


def test_resume_checks_the_config(tmp_path):
    run(tmp_path, stop_at_step=5)
    with pytest.raises(ResumeError, match=r"batch_size: 8 -> 4"):
        run(tmp_path, resume=True, batch_size=4)
    with pytest.raises(ResumeError, match="learning_rate"):
        run(tmp_path, resume=True, learning_rate=0.5)
    # keys that do not change the run (more epochs, logging) may change; so may anything with
    # allow_config_change
    assert run(tmp_path, resume=True, epochs=4, log_every_steps=7)["steps"] == 48
    with pytest.raises(ResumeError, match="no checkpoint"):
        run(tmp_path, "typo", resume=True)


def test_a_fact_named_like_a_config_key_does_not_break_resume(tmp_path):
    """A task's fact may share a config key's name (classification's num_train: the config's
    cap, 0 for all, vs the examples the data gave); resume compares each with its own kind."""

    class Clash(TinyTask):
        def facts(self):
            return {**super().facts(), "batch_size": 1000}

    run(tmp_path, task=Clash(), stop_at_step=5)
    assert run(tmp_path, task=Clash(), resume=True)["steps"] > 5
    with pytest.raises(ResumeError, match=r"derived\.batch_size: 1000 -> 8"):

        class Changed(TinyTask):
            def facts(self):
                return {**super().facts(), "batch_size": 8}

        run(tmp_path, task=Changed(), resume=True, epochs=5)


def test_new_run_into_a_used_workdir_moves_the_old_run_aside(tmp_path, capsys):
    run(tmp_path, stop_at_step=5)
    run(tmp_path, epochs=1)
    assert "moved it to" in capsys.readouterr().out
    moved = [p for p in os.listdir(tmp_path / "run") if p.startswith("replaced-")]
    assert len(moved) == 1
    assert os.listdir(tmp_path / "run" / moved[0] / "checkpoints")
    assert metrics(tmp_path)["final"]["steps"] == 12  # the new run only


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"epoch": 3}, "unknown config key 'epoch' (did you mean 'epochs'?)"),
        ({"epochs": 0}, "'epochs': expected >= 1, got 0"),
        ({"batch_size": 0}, "'batch_size': expected >= 1, got 0"),
        ({"learning_rate": float("nan")}, "'learning_rate': expected a finite number > 0"),
        ({"learning_rate": -1.0}, "'learning_rate': expected a finite number > 0"),
        ({"epochs": "3"}, "'epochs': expected an int, got '3'"),
        ({"on_nonfinite": "ignore"}, "'on_nonfinite': expected one of 'halt', 'skip'"),
    ],
)
def test_bad_config_is_one_line_before_any_work(tmp_path, bad, message):
    with pytest.raises(ConfigError) as e:
        Trainer(TinyTask(), base_config(**bad), tmp_path / "x")
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "x").exists()


def _heavy(a):
    """~0.1-0.5 s of device work on these cores: chained 384x384 matrix products (far more
    than the engine's own time per step, which dispatch overlaps with the device's work)."""
    return jax.lax.fori_loop(0, 150, lambda i, x: jax.numpy.tanh(x @ x), a)


class _SlowStepTask(TinyTask):
    """Each train step does :func:`_heavy` on the device, so dispatching it returns at once
    (asynchronous dispatch) and only waiting for it takes the time. Records the wall-clock
    time at which each validation evaluation starts and ends."""

    def __init__(self):
        super().__init__()
        self.validation_wall = []

    def step_fn(self, state, batch):
        # on this step's data, so XLA can neither fold it at compile time nor skip it
        start = jax.numpy.full((384, 384), 0.01, jax.numpy.float32) + 1e-9 * batch["image"].sum()
        busy = _heavy(start)
        return super().step_fn(state, {**batch, "image": batch["image"] + 0.0 * busy.sum()})

    def evaluate(self, state, split):
        t0 = time.perf_counter()
        out = super().evaluate(state, split)
        if split == "validation":
            self.validation_wall.append((t0, time.perf_counter()))
        return out


def test_train_time_is_wall_time_of_the_steps_not_their_dispatch(tmp_path):
    """``train_time_s`` (and each history row's ``time_s``, the data-wait fraction's
    denominator) counts the steps' execution: with asynchronous dispatch, timing only the
    Python calls gave a fraction of it (ResNet-18: 104 s reported for 225 s of training)."""
    task = _SlowStepTask()
    # no step checkpoints, no guard reads between epoch ends: only the epoch end waits
    res = run(tmp_path, task=task, epochs=2, checkpoint_every_steps=0, log_every_steps=100)
    assert res["steps"] == 24
    rows = metrics(tmp_path)["history"]
    assert rows[-1]["time_s"] == res["train_time_s"]
    # epoch 2 (no compilation in it): from the end of the first evaluation to the start of
    # the second, the engine did little but train (the checkpoint write is asynchronous)
    (_, end1), (start2, _) = task.validation_wall
    reported = rows[1]["time_s"] - rows[0]["time_s"]
    assert reported >= 0.8 * (start2 - end1), (reported, start2 - end1)


def test_history_reports_the_data_wait_fraction_of_each_interval(tmp_path):
    """An input that sleeps 50 ms per batch before a step of a few ms: most of each epoch's
    training time is spent waiting (``train_data_wait_fraction``), the wait per step it implies
    is at least the sleep, and at least 30 ms more than without the sleep (the fraction alone of
    a tiny step is not small: fetching a batch takes as long as the step)."""
    run(tmp_path, "slow", task=TinyTask(slow=0.05), epochs=2)
    run(tmp_path, "fast", task=TinyTask(), epochs=2)
    slow, fast = metrics(tmp_path, "slow")["history"], metrics(tmp_path, "fast")["history"]
    batch = base_config()["batch_size"]

    def wait_per_step(h):  # fraction x (seconds per step)
        return h["train_data_wait_fraction"] * batch / h["train_images_per_s"]

    for h in slow:
        assert h["train_data_wait_fraction"] > 0.5, h
        assert wait_per_step(h) >= 0.05 * 0.95, h
    assert wait_per_step(fast[1]) < wait_per_step(slow[1]) - 0.03
