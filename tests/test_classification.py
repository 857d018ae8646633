"""The classification task on the engine, on real digits: one compilation per step, outputs
written, resume == uninterrupted, validation-only selection, the test split never trained on."""

import json
import os
import sys

import chex
import numpy as np
import pytest

from jaxcnn.tasks import Classification
from jaxcnn.train.config import ConfigError
from jaxcnn.train.trainer import Trainer

sys.path.insert(0, os.path.dirname(__file__))
from classification_run import small_config, train  # noqa: E402


def test_trains_compiles_each_step_once_and_writes_outputs(tmp_path):
    # 300 train examples / 32 -> a dropped partial batch; 100 validation / 64 and the test
    # split / 64 -> padded batches.
    res, tr = train(tmp_path)
    assert res["compilations"] == {"train_step": 1}
    assert tr.task._eval_step._cache_size() == 1  # validation and test share one compile
    for f in ("metrics.json", "curves.png", "confusion.png"):
        assert (tmp_path / "run" / f).stat().st_size > 0
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert len(m["history"]) == 3 and m["facts"]["params"] == 61_706
    assert m["facts"]["num_train"] == 300 and m["facts"]["num_validation"] == 100
    cm = np.array(m["final"]["test_confusion"])
    assert cm.shape == (10, 10) and cm.sum() == m["facts"]["num_test"] == m["final"]["test_count"]
    assert np.trace(cm) / cm.sum() == pytest.approx(m["final"]["test_accuracy"])
    assert m["final"]["test_accuracy"] > 0.5  # learns something in 3 short epochs
    assert set(m["splits"]) == {"train", "validation", "test"}


def test_resume_after_interruption_equals_uninterrupted_run(tmp_path):
    full, _ = train(tmp_path, "full")
    # 300 // 32 = 9 steps per epoch; stop mid-epoch 2 (step 13, after a step checkpoint at 12)
    part, _ = train(tmp_path, "part", stop_at_step=13)
    assert part["preempted"] and part["step"] == 13
    resumed, _ = train(tmp_path, "part", resume=True)
    assert int(resumed["state"].step) == int(full["state"].step) == 27
    chex.assert_trees_all_equal(resumed["state"].params, full["state"].params)
    chex.assert_trees_all_equal(resumed["state"].opt_state, full["state"].opt_state)
    assert resumed["test_accuracy"] == full["test_accuracy"]
    hist = json.loads((tmp_path / "part" / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in hist] == [1, 2, 3]


def test_early_stopping_on_validation(tmp_path):
    # classic LeNet-5 (no BatchNorm, no dropout) at a learning rate of 1e-12: the predictions,
    # and so the validation accuracy, never change after epoch 1
    res, _ = train(
        tmp_path,
        model="lenet5",
        epochs=30,
        early_stopping_patience=1,
        checkpoint_every_steps=0,
        learning_rate=1e-12,
    )
    assert res["stopped_early"] and res["epochs_run"] == 2


def test_early_stopping_without_validation_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="needs a validation split"):
        train(tmp_path, validation_split=0, early_stopping_patience=2)


def test_unknown_config_key_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match="'learning_rte' .did you mean 'learning_rate'"):
        train(tmp_path, learning_rte=0.1)


@pytest.mark.slow
def test_default_job_reaches_98_percent_on_digits(tmp_path):
    """The README's first command: LeNet-5 on held-out real digits."""
    from experiments.cli import CONFIGS, load_config_file

    c = load_config_file(str(CONFIGS / "lenet_digits.py"))
    c["progress"] = False
    res = Trainer(Classification(), c, tmp_path).run()
    assert res["test_accuracy"] >= 0.98


@pytest.mark.slow
def test_lenet_mnist_reaches_98_5_percent(tmp_path):
    from experiments.cli import CONFIGS, load_config_file

    c = load_config_file(str(CONFIGS / "lenet_mnist.py"))
    c["progress"] = False
    res = Trainer(Classification(), c, tmp_path).run()
    assert res["epochs_run"] <= 10 and res["test_accuracy"] >= 0.985


def test_schema_data_keys_are_the_pipelines():
    """The task's data keys are exactly what jaxcnn.data reads, with the same defaults."""
    from jaxcnn.data import CONFIG_DEFAULTS
    from jaxcnn.data.augment import AUGMENT_DEFAULTS
    from jaxcnn.tasks import AUGMENT_FIELDS, DATA_FIELDS

    assert {k: f.default for k, f in DATA_FIELDS.items()} == CONFIG_DEFAULTS
    assert {k: f.default for k, f in AUGMENT_FIELDS.items()} == AUGMENT_DEFAULTS


def test_divergence_is_an_error_naming_the_step(tmp_path):
    """The issue's probe: learning_rate=1e6 used to train to inf with exit 0."""
    from jaxcnn.train.trainer import NonFiniteError

    with pytest.raises(NonFiniteError, match=r"non-finite loss or update at step \d+"):
        train(tmp_path, learning_rate=1e6, epochs=2)
    m = json.loads(
        (tmp_path / "run" / "metrics.json").read_text(),
        parse_constant=lambda c: pytest.fail(f"non-strict JSON: {c}"),
    )
    assert "at step" in m["final"]["halted"]  # the work directory says why it stopped


def test_augmentation_keys_reach_the_train_transform(tmp_path):
    from jaxcnn.train import mesh
    from jaxcnn.train.trainer import Context

    t = Trainer(
        Classification(), small_config(augment_policy="randaugment", random_erasing=0.25), tmp_path
    )
    t.task.build(Context(cfg=t.cfg, dp=mesh.setup(t.cfg), workdir=str(tmp_path)))
    pre = t.task.pre
    assert pre.policy is not None and pre.erasing is not None
    x = t.task.data.train[0]["image"]
    a, b = pre(x, np.random.default_rng(0)), pre(x, np.random.default_rng(1))
    assert not np.array_equal(a, b)  # train transform is random...
    np.testing.assert_array_equal(pre(x), pre(x))  # ...eval is not


def test_transfer_plan_from_init_from_weights_on_the_command_line(tmp_path, capsys):
    """``python -m experiments.train --config.init_from=WEIGHTS --config.transfer=linear_probe``:
    the weights load, the plan's table prints, the backbone stays bit-identical and only the
    (reset) head trains; a run without ``transfer`` is untouched by the key."""
    import jax

    from experiments import train as train_cli
    from jaxcnn.interop.files import save_variables

    base, _ = train(tmp_path, "base", epochs=1, checkpoint_every_steps=0)
    weights = jax.device_get(base["state"].variables)
    path = save_variables(tmp_path / "weights", weights, {"model": "lenet5_modern"})
    flags = [f"--config.{k}={v}" for k, v in small_config(epochs=1).items()]
    workdir = tmp_path / "probe"
    capsys.readouterr()
    rc = train_cli.main(
        ["--workdir", str(workdir), *flags, f"--config.init_from={path}"]
        + ["--config.transfer=linear_probe", "--config.checkpoint_every_steps=0"]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "transfer plan 'linear_probe'" in out and "trainable 850 of 61,706" in out
    m = json.loads((workdir / "metrics.json").read_text())
    assert m["config"]["transfer"] == "linear_probe"
    assert m["transfer"]["trainable_params"] == 84 * 10 + 10 and m["final"]["compilations"] == {
        "train_step": 1
    }
    from jaxcnn.checkpoint import Checkpointer

    ckpt = Checkpointer(workdir / "checkpoints")
    try:
        after = ckpt.restore(None).state["params"]
    finally:
        ckpt.close()
    for name in ("c1", "c3", "c5", "f6"):
        chex.assert_trees_all_equal(after[name], weights["params"][name])
    assert not np.array_equal(after["head"]["kernel"], weights["params"]["head"]["kernel"])
    with pytest.raises(ConfigError, match="set init_from"):
        train(tmp_path, "no_weights", transfer="finetune")
