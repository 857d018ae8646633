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
