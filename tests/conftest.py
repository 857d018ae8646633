import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get("JAXCNN_SHARED_DATA", ROOT.parent / "shared" / "data"))
MNIST_DIR = SHARED_DATA / "mnist-test"


@pytest.fixture(scope="session")
def mnist_dir():
    """The real MNIST test set (IDX files); skips when ../shared/data is absent."""
    if not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"real MNIST test set not found at {MNIST_DIR} (set JAXCNN_SHARED_DATA)")
    return MNIST_DIR


# XLA:CPU spends most of the suite compiling (a forward pass of EfficientNet-B0 at 32x32 takes
# ~70 s to compile with full optimisation, a few seconds without). Tests check values and
# shapes, not speed, so they run with XLA's optimisations mostly off unless
# JAXCNN_TEST_XLA_OPT=1. Subprocess tests inherit it through the environment variable below.
if os.environ.get("JAXCNN_TEST_XLA_OPT", "0") != "1":
    import jax

    jax.config.update("jax_disable_most_optimizations", True)
    os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

# The persistent compilation cache (jaxcnn.utils.cache), one directory per xdist worker (two
# processes never write one entry at once), under .cache/ of the clone: a second run of the
# suite loads what the first compiled. The environment variable carries it to the experiments'
# subprocesses, and keeps them out of the user's own cache. JAXCNN_COMPILATION_CACHE=0 (or
# another value that turns it off, jaxcnn.utils.cache): off.
from jaxcnn.utils import default_cache_dir, enable_compilation_cache  # noqa: E402

if default_cache_dir() is not None:
    _worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    os.environ["JAXCNN_COMPILATION_CACHE"] = str(ROOT / ".cache" / "jax-tests" / _worker)
    enable_compilation_cache(os.environ["JAXCNN_COMPILATION_CACHE"], min_compile_time_secs=0.5)
