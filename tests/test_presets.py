"""The stronger presets and the time budget, on small real slices of CIFAR-10 (JPEG)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from cifar_edge.keras_layers import with_flip_tta
from cifar_edge.trainer.macs import count_macs
from cifar_edge.trainer.models import build_model
from cifar_edge.presets import RECIPES
from cifar_edge.trainer.schedules import one_cycle_lr

# Documented in README's preset table.
PRESET_SIZES = {"resnet8": (78_666, 12_501_632), "edge": (295_224, 24_089_568)}


@pytest.mark.parametrize("name", sorted(PRESET_SIZES))
def test_preset_builds_with_documented_size(name):
    params, macs = PRESET_SIZES[name]
    model = build_model(name)
    assert model.count_params() == params
    assert count_macs(model) == macs
    assert model.output_shape == (None, 10)


def test_edge_preset_fits_the_edge_budget():
    model = build_model("edge")
    assert RECIPES["edge"].flip_tta
    assert count_macs(with_flip_tta(model)) == 2 * count_macs(model) <= 50_000_000  # as saved: two views
    assert model.count_params() <= 1_000_000  # int8 file <= 1 MB


def test_one_cycle_schedule_shape():
    peak = 4e-3
    assert one_cycle_lr(0.0, peak) == pytest.approx(peak / 10)
    assert one_cycle_lr(0.15, peak) == pytest.approx(peak)
    assert one_cycle_lr(1.0, peak) == pytest.approx(0.0, abs=1e-12)
    lrs = [one_cycle_lr(p / 100, peak) for p in range(15, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # monotone anneal after warm-up


# edge's recipe (SGD at 0.4) is tuned for batch 512 over 45,000 images; 5 steps of 64 need a gentler rate.
SHORT_RUN_FLAGS = {"resnet8": [], "edge": ["--learning-rate", 0.05]}


@pytest.mark.parametrize("name", ["resnet8", "edge"])
def test_preset_learns_on_real_data(cli, jpeg_dir, tmp_path, name):
    out = tmp_path / name
    result = cli("train", "--model", name, "--data", jpeg_dir, "--limit", 40, "--epochs", 3,
                 "--batch-size", 64, *SHORT_RUN_FLAGS[name], "--out", out)
    assert result.code == 0, result.err
    history = json.loads((out / "history.json").read_text())
    assert len(history["loss"]) == 3
    assert history["loss"][-1] < history["loss"][0] * 0.95
    info = json.loads((out / "training.json").read_text())
    assert info["model"] == name
    assert info["recipe"]["schedule"] == RECIPES[name].schedule
    saved = with_flip_tta(build_model(name)) if RECIPES[name].flip_tta else build_model(name)
    assert info["macs_per_image"] == count_macs(saved)
    assert info["flip_tta"] is RECIPES[name].flip_tta
    if info["flip_tta"]:
        assert 0 <= info["test_accuracy_single_view"] <= 1
        # the test accuracy written is the saved (flip-averaged) model's
        from cifar_edge.datasets import load_dataset
        from cifar_edge.exporter.keras_model import load_keras_classifier

        split = load_dataset(jpeg_dir, splits=("test",), limit_per_class=40).split("test")
        probs = load_keras_classifier(out / "model.keras").predict(split.images / 255.0, verbose=0)
        assert float((probs.argmax(1) == split.labels).mean()) == pytest.approx(info["test_accuracy"], abs=1e-9)
    if info["recipe"]["optimizer"] == "muon":
        # the saved model carries no optimizer: plain Keras (plus the flip layer) loads it
        import subprocess
        import sys

        code = ("import sys, keras, cifar_edge.keras_layers; "
                "m = keras.models.load_model(sys.argv[1]); print(m.count_params())")
        proc = subprocess.run([sys.executable, "-c", code, str(out / "model.keras")],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "cifar_edge.trainer" not in proc.stderr
        assert proc.stdout.split()[-1] == str(PRESET_SIZES[name][0])


def test_time_budget_stops_on_time(cli, jpeg_dir, tmp_path):
    budget_min = 0.4  # 24 s for the whole run, loading and saving included
    out = tmp_path / "budget"
    started = time.perf_counter()
    result = cli("train", "--model", "edge", "--data", jpeg_dir, "--limit", 100, "--time-budget", budget_min,
                 "--out", out)
    elapsed = time.perf_counter() - started
    assert result.code == 0, result.err
    info = json.loads((out / "training.json").read_text())
    assert info["stopped_by_time_budget"] is True
    assert info["time_budget_min"] == budget_min
    assert info["wall_time_s"] <= budget_min * 60 + 5
    assert elapsed <= budget_min * 60 + 15  # the plots written after training.json
    assert (out / "model.keras").is_file()


def test_time_budget_too_small_is_a_clear_error(cli, jpeg_dir, tmp_path):
    result = cli("train", "--data", jpeg_dir, "--limit", 5, "--time-budget", 0.001, "--out", tmp_path / "x")
    result.assert_one_line_error(3, "time budget")


def test_train_flags_reach_the_recipe(cli, monkeypatch, tmp_path):
    import cifar_edge.trainer.fit as fit

    seen = {}
    monkeypatch.setattr(fit, "train", lambda config, echo=print: seen.setdefault("config", config))
    result = cli("train", "--model", "edge", "--optimizer", "adam", "--weight-decay", 0.01,
                 "--label-smoothing", 0.05, "--augment", "flip-shift", "--no-flip-tta", "--epochs", 3,
                 "--out", tmp_path / "x")
    assert result.code == 0, result.err
    recipe = seen["config"].recipe
    assert (recipe.optimizer, recipe.weight_decay, recipe.label_smoothing, recipe.augment, recipe.flip_tta,
            recipe.epochs, recipe.time_budget) == ("adam", 0.01, 0.05, "flip-shift", False, 3, None)
    # unset flags keep the preset's values
    assert (recipe.batch_size, recipe.crop_pad, recipe.momentum) == (512, 2, 0.9)


def test_same_seed_gives_the_same_weights(cli, jpeg_dir, tmp_path):
    # Seeded shuffling, stateless per-batch augmentation and a step-driven schedule: bit for bit.
    from cifar_edge.exporter.keras_model import load_keras_classifier

    weights = []
    for run, seed in (("a", 3), ("b", 3), ("c", 4)):
        result = cli("train", "--model", "edge", "--data", jpeg_dir, "--limit", 30, "--epochs", 2,
                     "--batch-size", 64, "--learning-rate", 0.05, "--seed", seed, "--out", tmp_path / run)
        assert result.code == 0, result.err
        weights.append(load_keras_classifier(tmp_path / run / "model.keras").get_weights())
    assert all(np.array_equal(x, y) for x, y in zip(weights[0], weights[1]))
    assert not all(np.array_equal(x, y) for x, y in zip(weights[0], weights[2]))
