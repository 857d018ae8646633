"""What the checkpoint integrity costs (docs/reliability.md quotes it).

Saves and restores the ``TrainState`` of a model with Adam (parameters + two moments) through
:class:`jaxcnn.checkpoint.Checkpointer` (non-finite check, CRC-32 manifest on save; checksums
verified on restore) and through plain Orbax (one ``StandardSave`` / ``StandardRestore`` of the
same tree, no checks), interleaved, into a temporary folder; prints the minimum of ``--repeats``
of each and the ratio::

    python -m experiments.benchmark_checkpoint --model resnet18 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()

    import jax
    import optax
    import orbax.checkpoint as ocp
    from flax import serialization

    from jaxcnn import models
    from jaxcnn.checkpoint import Checkpointer
    from jaxcnn.train import create_train_state

    size = models.model_info(args.model).input_size
    model = models.create_model(args.model, num_classes=args.num_classes)
    state = create_train_state(model, optax.adam(1e-3), (1, *size))
    tree = serialization.to_state_dict(state)
    nbytes = sum(x.nbytes for x in jax.tree.leaves(tree))
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)

    times = {"ours_save": [], "orbax_save": [], "ours_restore": [], "orbax_restore": []}
    with tempfile.TemporaryDirectory() as tmp:
        ck = Checkpointer(os.path.join(tmp, "ours"), keep=1, keep_best=0)
        mgr = ocp.CheckpointManager(
            os.path.join(tmp, "orbax"), options=ocp.CheckpointManagerOptions(max_to_keep=1)
        )
        for r in range(args.repeats):
            t = time.perf_counter()
            ck.save(r + 1, state)
            times["ours_save"].append(time.perf_counter() - t)
            t = time.perf_counter()
            mgr.save(r + 1, args=ocp.args.StandardSave(tree))
            mgr.wait_until_finished()
            times["orbax_save"].append(time.perf_counter() - t)
            t = time.perf_counter()
            jax.block_until_ready(ck.restore(state).state)
            times["ours_restore"].append(time.perf_counter() - t)
            t = time.perf_counter()
            jax.block_until_ready(mgr.restore(r + 1, args=ocp.args.StandardRestore(abstract)))
            times["orbax_restore"].append(time.perf_counter() - t)
        ck.close()
        mgr.close()
    best = {k: min(v) for k, v in times.items()}
    out = {
        "model": args.model,
        "state_mb": round(nbytes / 2**20, 1),
        **{f"{k}_s": round(v, 3) for k, v in best.items()},
        "save_ratio": round(best["ours_save"] / best["orbax_save"], 2),
        "restore_ratio": round(best["ours_restore"] / best["orbax_restore"], 2),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
