"""Train a DCGAN on real digits and judge it with a LeNet-5 trained on real digits (the GAN task
on the one engine).

    python -m experiments.gan                          # experiments/configs/dcgan_mnist.py
    python -m experiments.gan --config experiments/configs/dcgan_mnist.py --config.epochs=5 \\
        --workdir runs/gan --classifier_workdir runs/lenet_judge --resume
    python -m experiments.gan --help_config            # every key, its default, its meaning

1. The judge (``experiments/gan_judge.py``): a LeNet-5 trained by the engine with
   ``configs/lenet_mnist.py`` for ``classifier_epochs`` epochs in ``--classifier_workdir``
   (default ``<workdir>_judge``), or read back from there when it holds a finished run.
2. The DCGAN (``jaxcnn.tasks.GAN``) on the real digits: after every epoch an 8x8 grid of samples
   from fixed noise (``samples/epoch_NNN.png``), the judge's figures of ``num_eval_samples``
   samples from fixed noise (the validation split: its Fréchet distance selects the best
   checkpoint) and a checkpoint; at the end the same figures on ``eval_sets`` fresh noise sets
   (the test split), for the last state and the selected one, and how many sets meet the target
   (>= 80% confident, every class 5%-15%).
3. ``metrics.json``, ``curves.png``, ``samples_final.png``, ``samples_by_class.png`` (and
   ``samples_by_code.png`` with a code) in --workdir (default: runs/<config file name>).
"""

import argparse
import sys

from experiments import cli


def _judged_gan():
    from experiments.gan_judge import JUDGE_FIELDS, meets_target, train_or_load_judge
    from jaxcnn.tasks import GAN

    class JudgedGAN(GAN):
        """The GAN task with the experiment's LeNet-5 judge (trained or read in ``build``)."""

        fields = {**GAN.fields, **JUDGE_FIELDS}

        def __init__(self):
            super().__init__(load_judge=self._judge)

        @staticmethod
        def _judge(ctx):
            cfg = ctx.cfg
            directory = cfg["classifier_workdir"] or ctx.workdir.rstrip("/") + "_judge"
            return train_or_load_judge(
                directory, cfg["classifier_epochs"], cfg["data_dir"], progress=cfg["progress"]
            )

        def finish(self, state, result, workdir):
            super().finish(state, result, workdir)
            out = {}
            for prefix, r in (("test", result), ("selected_test", result.get("selected", {}))):
                if "test_set_confident_share" not in r:
                    continue
                sets = zip(
                    r["test_set_confident_share"],
                    r["test_set_min_class_share"],
                    r["test_set_max_class_share"],
                )
                keys = ("confident_share", "min_class_share", "max_class_share")
                out[f"{prefix}_target_met"] = sum(meets_target(dict(zip(keys, s))) for s in sets)
            return out

    return JudgedGAN()


def _task(cfg):
    return _judged_gan()


def _report(result, cfg, workdir):
    if result.get("preempted"):
        return
    if "test_confident_share" in result:
        r = result
        print(
            f"\n{r['test_num_sets']} test sets of {r['test_num_samples']} samples (last state, "
            f"{r['steps']} steps, {r['train_time_s']:.0f}s training): confident >= "
            f"{cfg['confidence']} {100 * r['test_confident_share']:.1f}% +- "
            f"{100 * r['test_confident_std']:.1f} ({100 * r['test_confident_min']:.1f}-"
            f"{100 * r['test_confident_max']:.1f}%), class shares "
            f"{100 * r['test_min_class_share']:.1f}%-{100 * r['test_max_class_share']:.1f}%, "
            f"FD {r['test_fd']:.2f} vs real-vs-real {r['test_fd_real_baseline']:.2f}; target "
            f"met on {r.get('test_target_met', 0)} of {r['test_num_sets']}"
        )
        if "test_class_agreement" in r:
            print(
                f"conditional: the judge reads the requested digit in "
                f"{100 * r['test_class_agreement']:.1f}% of the samples"
            )
        sel = r.get("selected", {})
        if "test_confident_share" in sel and sel["step"] != r["steps"]:
            print(
                f"selected by validation FD (step {sel['step']}): confident "
                f"{100 * sel['test_confident_share']:.1f}%, FD {sel['test_fd']:.2f}, target met "
                f"on {r.get('selected_test_target_met', 0)} of {sel['test_num_sets']}"
            )
    print(
        f"wrote {workdir}/samples/, samples_final.png, samples_by_class.png, curves.png, "
        f"metrics.json and checkpoints/"
    )


def _judge_flag(argv):
    """``--classifier_workdir DIR`` (the judge's directory) as the config key
    ``--config.classifier_workdir=DIR``; the other arguments go to the engine's command line."""
    ap = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    ap.add_argument(
        "--classifier_workdir",
        default=None,
        help="the LeNet-5 judge's directory (default <workdir>_judge)",
    )
    known, rest = ap.parse_known_args(argv)
    if known.classifier_workdir is not None:
        rest.append(f"--config.classifier_workdir={known.classifier_workdir}")
    return rest


def main(argv=None) -> int:
    argv = _judge_flag(list(sys.argv[1:] if argv is None else argv))
    return cli.main(_task, __doc__.splitlines()[0], "dcgan_mnist.py", argv, _report)


if __name__ == "__main__":
    sys.exit(main())
