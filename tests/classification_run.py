"""A small classification run on the bundled digits, shared by the classification and recipe
tests: :func:`small_config` (LeNet-5, 300 digits, 3 epochs) and :func:`train`."""

from jaxcnn.tasks import Classification
from jaxcnn.train.trainer import Trainer


def small_config(**kw):
    c = dict(
        model="lenet5_modern",
        dataset="digits",
        num_train=300,
        validation_split=100,
        batch_size=32,
        eval_batch_size=64,
        epochs=3,
        learning_rate=2e-3,
        augment_shift=1,
        progress=False,
        checkpoint_every_steps=4,
    )
    c.update(kw)
    return c


def train(tmp_path, name="run", resume=False, stop_at_step=None, task=None, **kw):
    t = Trainer(task or Classification(), small_config(**kw), tmp_path / name, resume=resume)
    return t.run(stop_at_step=stop_at_step), t
