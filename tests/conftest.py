"""Shared fixtures: the real CIFAR-10 data beside the repository, an in-process
CLI runner, and ONE tiny seed model trained and exported once per session.

The data lives in ../shared/data next to the repository (CI clones the repo
into another folder with a copy of shared/ beside it).  Nothing here
downloads anything.
"""

from __future__ import annotations

import contextlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# What the data is known to hold (independent of the package under test).
CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
]
EXACT_TRAIN_IMAGES = 4000
EXACT_TEST_IMAGES = 1000
FIRST_TEST_LABELS = [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]

# The session's seed model.  --limit 30 --epochs 1 gives a model that predicts
# one class for every image (test accuracy exactly 0.1), which would make every
# top-1 comparison (ONNX vs Keras, int8 vs Keras) pass trivially; 60 images per
# class and 3 epochs (~10 s) gives a model whose predictions spread over several
# classes, so those comparisons can actually fail.
SEED_LIMIT = 60
SEED_EPOCHS = 3
EXPORT_ARGS = ["--quantize", "--calib-size", "64", "--parity-size", "64", "--int8-min-agreement", "0"]


# --- the CLI, in process -------------------------------------------------------------

@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]

    def assert_one_line_error(self, code: int, *needles: str) -> str:
        """The command failed with `code` and exactly one 'error: ...' line on stderr."""
        assert self.code == code, f"exit {self.code}, expected {code}\nstdout:\n{self.out}\nstderr:\n{self.err}"
        assert "Traceback" not in self.err and "Traceback" not in self.out
        assert len(self.err_lines) == 1, f"expected one stderr line, got:\n{self.err}"
        line = self.err_lines[0]
        assert line.startswith("error: "), line
        for needle in needles:
            assert needle in line, f"{needle!r} not in {line!r}"
        return line


def run_cli(args) -> CliResult:
    """Run `cifar-edge ARGS` in this process through cifar_edge.cli.main (which maps
    errors to exit codes) and capture what it writes to stdout and stderr."""
    from cifar_edge.cli import main

    out, err = io.StringIO(), io.StringIO()
    code: int | str | None = "main() returned without calling sys.exit"
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = 0 if exc.code is None else exc.code
    assert isinstance(code, int), code
    return CliResult(code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def cli():
    """`cli(args...)` -> CliResult(code, out, err)."""
    return lambda *args: run_cli(args)


# --- data ----------------------------------------------------------------------------

@pytest.fixture(scope="session")
def data_root() -> Path:
    needed = [DATA_ROOT / "cifar10-jpeg" / "train", DATA_ROOT / "cifar10-jpeg" / "test",
              DATA_ROOT / "cifar10-exact-subset" / "cifar-10-batches-py" / "test_batch"]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        pytest.fail(
            "the test data is missing: expected the shared data folder beside the repository at "
            f"{DATA_ROOT} (cifar10-jpeg/{{train,test}}/<class>/*.jpg and "
            "cifar10-exact-subset/cifar-10-batches-py/); missing: " + ", ".join(missing),
            pytrace=False,
        )
    return DATA_ROOT


@pytest.fixture(scope="session")
def jpeg_dir(data_root) -> Path:
    """Image-folder tree: train/<class>/NNNN.jpg and test/<class>/NNNN.jpg."""
    return data_root / "cifar10-jpeg"


@pytest.fixture(scope="session")
def exact_subset_dir(data_root) -> Path:
    """The folder that holds cifar-10-batches-py/."""
    return data_root / "cifar10-exact-subset"


@pytest.fixture(scope="session")
def batches_dir(exact_subset_dir) -> Path:
    """The cifar-10-batches-py folder itself (batches.meta, data_batch_1, test_batch)."""
    return exact_subset_dir / "cifar-10-batches-py"


def make_cifar_tarball(batches_dir: Path, dest: Path) -> Path:
    """Write dest (a cifar-10-python.tar.gz) holding batches_dir's files under cifar-10-batches-py/."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dest, "w:gz") as tar:
        for path in sorted(batches_dir.iterdir()):
            if path.is_file():
                tar.add(path, arcname=f"cifar-10-batches-py/{path.name}")
    return dest


@pytest.fixture(scope="session")
def cifar_tarball(batches_dir, tmp_path_factory) -> Path:
    return make_cifar_tarball(batches_dir, tmp_path_factory.mktemp("tarball") / "cifar-10-python.tar.gz")


@pytest.fixture(scope="session")
def test_images_200(jpeg_dir):
    """200 real test images (the first 20 JPEGs of each class), as (uint8 images, labels)."""
    from cifar_edge.datasets import load_dataset

    split = load_dataset(jpeg_dir, splits=("test",), limit_per_class=20).split("test")
    assert split.images.shape == (200, 32, 32, 3)
    return split.images, split.labels


# --- the session's seed model ------------------------------------------------------------

@dataclass
class SeedRun:
    dir: Path
    result: CliResult

    @property
    def model(self) -> Path:
        return self.dir / "model.keras"

    def json(self, name: str):
        return json.loads((self.dir / name).read_text())


@pytest.fixture(scope="session")
def seed_run(jpeg_dir, tmp_path_factory) -> SeedRun:
    """`cifar-edge train` of the seed CNN on a small slice of the JPEG tree, once per session."""
    out = tmp_path_factory.mktemp("seed-run") / "seed"
    result = run_cli(["train", "--data", jpeg_dir, "--limit", SEED_LIMIT, "--epochs", SEED_EPOCHS,
                      "--out", out])
    if result.code != 0:
        pytest.fail(f"seed training failed with exit {result.code}:\n{result.out}\n{result.err}", pytrace=False)
    return SeedRun(out, result)


@dataclass
class SeedExport:
    dir: Path
    result: CliResult

    @property
    def fp32(self) -> Path:
        return self.dir / "model.onnx"

    @property
    def int8(self) -> Path:
        return self.dir / "model.int8.onnx"

    @property
    def manifest_path(self) -> Path:
        return self.dir / "manifest.json"

    @property
    def manifest(self) -> dict:
        return json.loads(self.manifest_path.read_text())


@pytest.fixture(scope="session")
def seed_export(seed_run) -> SeedExport:
    """`cifar-edge export model.keras --quantize ...` of the session's seed model (beside it)."""
    result = run_cli(["export", seed_run.model, *EXPORT_ARGS])
    if result.code != 0:
        pytest.fail(f"seed export failed with exit {result.code}:\n{result.out}\n{result.err}", pytrace=False)
    return SeedExport(seed_run.dir, result)


@pytest.fixture(scope="session")
def keras_seed(seed_run):
    """The trained seed model, loaded with Keras."""
    import keras

    return keras.models.load_model(seed_run.model, compile=False)


def keras_probabilities(model, pixels: np.ndarray) -> np.ndarray:
    """Keras probabilities for uint8 pixels, preprocessed as the notebook did (pixels / 255)."""
    return model.predict(pixels.astype(np.float32) / 255.0, batch_size=64, verbose=0)


def ort_probabilities(onnx_path: Path, pixels: np.ndarray) -> np.ndarray:
    """onnxruntime probabilities for uint8 pixels (pixels / 255), read straight from the ONNX file."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return session.run(["probabilities"], {"images": pixels.astype(np.float32) / 255.0})[0]


def pytest_configure(config):
    # cli.py silences this Keras warning for users; pytest resets warning filters per test.
    config.addinivalue_line("filterwarnings", "ignore:.*`shuffle=True` was passed.*:UserWarning")
