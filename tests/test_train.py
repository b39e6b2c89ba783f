"""`cifar-edge train`: the session's tiny seed run, the other data forms, bad data."""

from __future__ import annotations

import csv
import io
import json
import stat
import subprocess
import sys

import numpy as np
import pytest
from conftest import CIFAR10_CLASSES, SEED_EPOCHS, SEED_LIMIT, keras_probabilities
from PIL import Image

from cifar_edge.datasets import load_dataset

REPORT_FILES = [
    "model.keras", "training.json", "history.json", "history.csv", "test_metrics.json",
    "classification_report.txt", "confusion_matrix.png", "training_curves.png",
]


def test_writes_every_output(seed_run):
    for name in REPORT_FILES:
        path = seed_run.dir / name
        assert path.is_file() and path.stat().st_size > 0, name
    # atomic writes leave no temp files behind
    assert [p.name for p in seed_run.dir.iterdir() if p.name.startswith(".")] == []


def test_progress_output(seed_run):
    out = seed_run.result.out
    assert "356,810 parameters" in out
    epoch_lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    # "epoch 2 ..." or "epoch 2/3 ...": one line per epoch, in order
    assert [int(line.split()[1].split("/")[0]) for line in epoch_lines] == list(range(1, SEED_EPOCHS + 1))
    assert seed_run.result.err.strip() == ""


def test_training_json(seed_run, jpeg_dir):
    info = seed_run.json("training.json")
    assert info["format"] == "cifar-edge-training"
    assert info["model"] == "seed" and info["model_file"] == "model.keras"
    assert info["parameters"] == 356_810
    assert info["macs_per_image"] == 10_585_344
    assert info["class_names"] == CIFAR10_CLASSES
    assert info["input_shape"] == [32, 32, 3]
    assert info["preprocessing"]["scale"] == pytest.approx([1 / 255] * 3, rel=1e-12)
    assert info["preprocessing"]["offset"] == [0.0, 0.0, 0.0]
    recipe = info["recipe"]
    assert recipe["batch_size"] == 64
    assert recipe["learning_rate"] == pytest.approx(0.001)
    assert recipe["early_stopping_patience"] == 5
    assert recipe["reduce_lr_factor"] == pytest.approx(0.2)
    assert recipe["reduce_lr_patience"] == 2
    assert recipe["epochs"] == SEED_EPOCHS  # --epochs overrides the preset's 50
    assert recipe["augment"] == "flip-shift" and recipe["shift"] == pytest.approx(0.1)
    data = info["data"]
    assert data["source"] == str(jpeg_dir.resolve())
    assert data["limit_per_class"] == SEED_LIMIT
    assert data["train_images"] + data["validation_images"] == 10 * SEED_LIMIT
    assert data["validation_images"] == 10 * SEED_LIMIT // 5  # hold-out capped at 20 %
    assert data["test_images"] == 10 * SEED_LIMIT
    assert info["seed"] == 42
    assert info["epochs_run"] == SEED_EPOCHS  # patience 5 cannot stop a 3-epoch run
    assert 1 <= info["best_epoch"] <= SEED_EPOCHS
    assert 0.0 <= info["test_accuracy"] <= 1.0 and np.isfinite(info["test_loss"])


def test_history_json_and_csv_agree(seed_run):
    info = seed_run.json("training.json")
    hist = seed_run.json("history.json")
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert len(hist[key]) == info["epochs_run"], key
    assert info["validation_accuracy"] == pytest.approx(hist["val_accuracy"][info["best_epoch"] - 1])
    assert info["best_epoch"] == int(np.argmin(hist["val_loss"])) + 1
    rows = list(csv.reader(io.StringIO((seed_run.dir / "history.csv").read_text())))
    assert rows[0][0] == "epoch" and set(rows[0][1:]) == set(hist)
    assert [int(r[0]) for r in rows[1:]] == list(range(1, info["epochs_run"] + 1))
    for col, key in enumerate(rows[0][1:], start=1):
        assert [float(r[col]) for r in rows[1:]] == pytest.approx(hist[key])


def test_test_metrics_match_the_saved_model(seed_run, keras_seed, jpeg_dir):
    """test_metrics.json / training.json describe the model that was saved, on the test split."""
    info = seed_run.json("training.json")
    metrics = seed_run.json("test_metrics.json")
    cm = np.array(metrics["confusion_matrix"])
    n = 10 * SEED_LIMIT
    assert metrics["n"] == n and cm.shape == (10, 10) and cm.sum() == n
    assert cm.sum(axis=1).tolist() == [SEED_LIMIT] * 10  # --limit: first 60 test images per class
    assert metrics["accuracy"] == pytest.approx(np.trace(cm) / n)
    assert info["test_accuracy"] == pytest.approx(metrics["accuracy"])
    assert set(metrics["per_class"]) == set(CIFAR10_CLASSES)
    for i, name in enumerate(CIFAR10_CLASSES):
        assert metrics["per_class"][name]["support"] == SEED_LIMIT
        assert metrics["per_class"][name]["recall"] == pytest.approx(cm[i, i] / SEED_LIMIT)

    test = load_dataset(jpeg_dir, splits=("test",), limit_per_class=SEED_LIMIT).split("test")
    predicted = keras_probabilities(keras_seed, test.images).argmax(1)
    # allow a near-tie or two to flip between batch sizes
    assert np.sum(predicted == test.labels) == pytest.approx(np.trace(cm), abs=2)
    recomputed = np.zeros((10, 10), int)
    np.add.at(recomputed, (test.labels, predicted), 1)
    assert np.abs(recomputed - cm).sum() <= 4


def test_seed_model_is_not_degenerate(seed_run):
    """The session model must predict several classes, or top-1 comparisons elsewhere are vacuous."""
    cm = np.array(seed_run.json("test_metrics.json")["confusion_matrix"])
    assert (cm.sum(axis=0) > 0).sum() >= 3


def test_classification_report(seed_run):
    text = (seed_run.dir / "classification_report.txt").read_text()
    metrics = seed_run.json("test_metrics.json")
    for name in CIFAR10_CLASSES:
        assert name in text
    accuracy_line = next(line for line in text.splitlines() if line.strip().startswith("accuracy"))
    assert f"{metrics['accuracy']:.4f}" in accuracy_line


@pytest.mark.parametrize("name", ["confusion_matrix.png", "training_curves.png"])
def test_plots_are_valid_pngs(seed_run, name):
    path = seed_run.dir / name
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width >= 300 and image.height >= 300
        extrema = image.convert("L").getextrema()
        assert extrema[0] < extrema[1]  # not a blank canvas


def test_saved_model_loads_and_is_the_seed_cnn(keras_seed):
    assert keras_seed.count_params() == 356_810
    assert tuple(keras_seed.inputs[0].shape) == (None, 32, 32, 3)


def test_outputs_have_normal_permissions(seed_run):
    import os

    umask = os.umask(0)
    os.umask(umask)
    for name in ("model.keras", "training.json"):
        mode = stat.S_IMODE((seed_run.dir / name).stat().st_mode)
        assert mode == 0o666 & ~umask, f"{name}: {oct(mode)}"


# --- the other data forms ----------------------------------------------------------------

@pytest.mark.parametrize("form", ["batches-folder", "tar.gz"])
def test_train_from_cifar_batches(form, cli, batches_dir, cifar_tarball, tmp_path):
    data = batches_dir if form == "batches-folder" else cifar_tarball
    out = tmp_path / "run"
    result = cli("train", "--data", data, "--limit", 20, "--epochs", 1, "--out", out)
    assert result.code == 0, result.err
    info = json.loads((out / "training.json").read_text())
    assert info["class_names"] == CIFAR10_CLASSES  # from batches.meta
    assert info["data"]["source"] == str(data.resolve())
    assert info["data"]["train_images"] + info["data"]["validation_images"] == 200
    assert info["data"]["test_images"] == 200
    assert info["epochs_run"] == 1
    metrics = json.loads((out / "test_metrics.json").read_text())
    assert np.array(metrics["confusion_matrix"]).sum(axis=1).tolist() == [20] * 10
    assert (out / "model.keras").is_file()


# --- bad data ----------------------------------------------------------------------------------

def test_missing_data_is_exit_3(cli, tmp_path):
    missing = tmp_path / "nope"
    out = tmp_path / "run"
    result = cli("train", "--data", missing, "--limit", 5, "--epochs", 1, "--out", out)
    result.assert_one_line_error(3, "data not found", str(missing))
    assert not (out / "model.keras").exists()


def test_data_that_is_not_cifar_is_exit_3(cli, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "readme.txt").write_text("hello")
    result = cli("train", "--data", tmp_path / "data", "--limit", 5, "--epochs", 1, "--out", tmp_path / "run")
    result.assert_one_line_error(3, "not a CIFAR-10 data folder")


def test_too_little_data_for_a_validation_split_is_exit_3(cli, jpeg_dir, tmp_path):
    result = cli("train", "--data", jpeg_dir, "--limit", 1, "--epochs", 1, "--out", tmp_path / "run")
    result.assert_one_line_error(3, "too small for a validation hold-out")


def test_console_script_bad_data_is_one_error_line(tmp_path):
    """As the user sees it: exit 3, one 'error:' line on stderr (TensorFlow's start-up
    notices silenced), no traceback."""
    missing = tmp_path / "nope"
    proc = subprocess.run([sys.executable, "-m", "cifar_edge", "train", "--data", str(missing),
                           "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 3
    assert proc.stderr.splitlines() == [f"error: data not found: {missing}"]
    assert proc.stdout == ""
