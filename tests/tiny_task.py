"""A tiny task for the engine's tests: softmax regression on synthetic 8-feature data, with an
in-memory iterator that has exact epochs and a saved position, so the Trainer is tested apart
from the image pipeline. Runnable as a script for the kill -9 / SIGTERM tests:

    python tests/tiny_task.py WORKDIR [--resume] [--ids FILE] [--slow SECONDS] [KEY=VALUE ...]

``--ids FILE`` appends ``step id id ...`` per training batch; ``--slow`` sleeps in every batch
(so a signal lands mid-run).
"""

from __future__ import annotations

import ast
import json
import sys
import time

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import optax

from jaxcnn.train.config import Field
from jaxcnn.train.losses import classification_metrics
from jaxcnn.train.state import create_train_state
from jaxcnn.train.steps import train_step_fn
from jaxcnn.train.trainer import Task

N_TRAIN, N_VAL, N_TEST, DIM, CLASSES = 96, 32, 32, 8, 3


def make_data(seed: int = 0):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(DIM, CLASSES))
    x = rng.normal(size=(N_TRAIN + N_VAL + N_TEST, DIM)).astype(np.float32)
    y = np.argmax(x @ w + 0.5 * rng.normal(size=(len(x), CLASSES)), -1).astype(np.int32)
    ids = np.arange(len(x))
    cut = (N_TRAIN, N_TRAIN + N_VAL)
    return {
        name: (x[a:b], y[a:b], ids[a:b])
        for name, (a, b) in {
            "train": (0, cut[0]),
            "validation": cut,
            "test": (cut[1], len(x)),
        }.items()
    }


class Linear(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dense(CLASSES)(x)


class EpochIterator:
    """Exact epochs over in-memory arrays: a permutation per (seed, epoch), last partial batch
    dropped; ``get_state``/``state=`` resume exactly."""

    def __init__(self, x, y, ids, batch_size, seed, state=None, log=None, slow=0.0, poison=()):
        self.x, self.y, self.ids, self.b, self.seed = x, y, ids, batch_size, seed
        self.epoch, self.pos = (state["epoch"], state["pos"]) if state else (0, 0)
        self.log, self.slow, self.poison = log, slow, set(poison)
        self.step = (self.epoch * (len(y) // batch_size)) + self.pos

    def __iter__(self):
        return self

    def __next__(self):
        per = len(self.y) // self.b
        if self.pos == per:
            self.epoch, self.pos = self.epoch + 1, 0
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.y))
        idx = order[self.pos * self.b : (self.pos + 1) * self.b]
        self.pos += 1
        self.step += 1
        if self.slow:
            time.sleep(self.slow)
        if self.log is not None:
            with open(self.log, "a") as f:
                f.write(f"{self.step} " + " ".join(map(str, self.ids[idx])) + "\n")
        x = self.x[idx]
        if self.step in self.poison:  # a NaN input: this step's loss is not finite
            x = np.full_like(x, np.nan)
        return {"image": x, "label": self.y[idx], "id": self.ids[idx]}

    def get_state(self):
        return {"epoch": self.epoch, "pos": self.pos}


class TinyTask(Task):
    name = "tiny"
    fields = {"hidden_note": Field("", "a task-specific key (unused)", resume_ok=True)}
    selection = ("accuracy", "max")

    def __init__(self, ids_log=None, slow=0.0, val_override=None, with_validation=True, poison=()):
        self.ids_log, self.slow, self.poison = ids_log, slow, poison
        self.val_override = val_override  # epoch -> forced validation accuracy (selection tests)
        self.with_validation = with_validation

    def build(self, ctx):
        self.ctx, self.data = ctx, make_data()
        self.steps_per_epoch = N_TRAIN // ctx.cfg["batch_size"]

        def eval_sums(state, batch):
            logits = state.apply_fn(state.variables, batch["image"])
            return classification_metrics(logits, batch["label"], batch["mask"])

        self._eval = ctx.jit_eval(eval_sums)

    def facts(self):
        return {"num_classes": CLASSES, "num_train": N_TRAIN}

    def init_state(self):
        cfg = self.ctx.cfg
        lr = cfg["learning_rate"]
        return create_train_state(Linear(), optax.sgd(lr, 0.9), (1, DIM), seed=cfg["seed"])

    def init_state_for(self, cfg):
        """The initial state for ``cfg`` outside a Trainer (a template for restores)."""
        from jaxcnn.train.config import schema, validate

        self.ctx = type("Ctx", (), {"cfg": validate(cfg, schema(self.fields))})()
        return self.init_state()

    def step_fn(self, state, batch):
        return train_step_fn(state, batch)

    def train_batches(self, data_state):
        x, y, ids = self.data["train"]
        return EpochIterator(
            x,
            y,
            ids,
            self.ctx.cfg["batch_size"],
            self.ctx.cfg["seed"],
            data_state,
            self.ids_log,
            self.slow,
            self.poison,
        )

    def summarize(self, sums):
        n = max(float(sums["count"]), 1.0)
        return {"loss": float(sums["loss_sum"]) / n, "accuracy": float(sums["correct"]) / n}

    def splits(self):
        return ("validation", "test") if self.with_validation else ("test",)

    def evaluate(self, state, split):
        x, y, _ = self.data[split]
        b = 16

        def batches():
            for i in range(0, len(y), b):
                yield {
                    "image": x[i : i + b],
                    "label": y[i : i + b],
                    "mask": np.ones(len(y[i : i + b]), np.float32),
                }

        s = self.ctx.sum_over(self._eval, state, batches())
        out = {
            "loss": float(s["loss_sum"] / s["count"]),
            "accuracy": float(s["correct"] / s["count"]),
        }
        if split == "validation" and self.val_override is not None:
            epoch = int(state.step) // self.steps_per_epoch
            out["accuracy"] = self.val_override[epoch]
        return out


def base_config(**kw):
    c = dict(
        model="tiny",
        batch_size=8,
        epochs=3,
        learning_rate=0.1,
        progress=False,
        keep_checkpoints=2,
        checkpoint_every_steps=5,
    )
    c.update(kw)
    return c


def main(argv):
    from jaxcnn.train.trainer import Trainer

    workdir, rest = argv[0], argv[1:]
    resume = "--resume" in rest
    ids = rest[rest.index("--ids") + 1] if "--ids" in rest else None
    slow = float(rest[rest.index("--slow") + 1]) if "--slow" in rest else 0.0
    kv = dict(a.split("=", 1) for a in rest if "=" in a)
    cfg = base_config(**{k: ast.literal_eval(v) for k, v in kv.items()})
    res = Trainer(TinyTask(ids, slow), cfg, workdir, resume=resume).run()
    res.pop("state")
    print("RESULT " + json.dumps(res), flush=True)


if __name__ == "__main__":
    jnp.zeros(())  # initialise JAX before the signal handlers are installed
    main(sys.argv[1:])
