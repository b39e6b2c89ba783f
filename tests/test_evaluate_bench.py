"""`cifar-edge evaluate` and `cifar-edge bench` on the session's seed export and real test images."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import CIFAR10_CLASSES, EXACT_TEST_IMAGES, keras_probabilities, ort_probabilities

from cifar_edge.benchmark import interleaved, paired_ratios, percentiles
from cifar_edge.datasets import load_dataset
from cifar_edge.variants import Variant

EVAL_LIMIT = 20  # first 20 test images of each class: 200 images


# --- evaluate ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def evaluation(cli, seed_export, batches_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluation")
    result = cli("evaluate", seed_export.dir, "--data", batches_dir, "--limit", EVAL_LIMIT, "--out", out)
    assert result.code == 0, result.err
    return result, out, json.loads((out / "evaluation.json").read_text())


def test_evaluate_reports_every_model(evaluation):
    _, out, report = evaluation
    assert set(report["models"]) == {"keras", "onnx-fp32", "onnx-int8"}
    assert report["class_names"] == CIFAR10_CLASSES
    assert "200 images" in report["data"]
    for name in report["models"]:
        assert (out / f"confusion_{name}.png").stat().st_size > 5000
    md = (out / "evaluation.md").read_text()
    assert "| onnx-int8 |" in md and "Per-class F1" in md and "confusion_keras.png" in md


def test_evaluate_accuracies_match_the_models(evaluation, seed_export, batches_dir, keras_seed):
    """The reported numbers are the models' real accuracies on the exact-pixel test images."""
    _, _, report = evaluation
    test = load_dataset(batches_dir, splits=("test",), limit_per_class=EVAL_LIMIT).split("test")
    keras_pred = keras_probabilities(keras_seed, test.images).argmax(1)
    for name, path in (("onnx-fp32", seed_export.fp32), ("onnx-int8", seed_export.int8)):
        pred = ort_probabilities(path, test.images).argmax(1)
        m = report["models"][name]
        assert m["accuracy"] == pytest.approx(np.mean(pred == test.labels))
        assert m["top1_agreement_with_keras"] == pytest.approx(np.mean(pred == keras_pred))
        assert np.asarray(m["confusion_matrix"]).sum() == len(test.labels)
    keras = report["models"]["keras"]
    assert keras["accuracy"] == pytest.approx(np.mean(keras_pred == test.labels))
    assert keras["accuracy"] > 0.1  # better than any constant answer (exactly 0.1 on 20 images per class)
    assert report["models"]["onnx-fp32"]["top1_agreement_with_keras"] == 1.0
    per_class = report["models"]["keras"]["per_class"]
    assert set(CIFAR10_CLASSES) <= set(per_class)


def test_evaluate_without_keras(cli, seed_export, batches_dir, tmp_path):
    result = cli("evaluate", seed_export.dir, "--data", batches_dir, "--limit", 5, "--no-keras", "--out", tmp_path)
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "evaluation.json").read_text())
    assert set(report["models"]) == {"onnx-fp32", "onnx-int8"}
    assert report["models"]["onnx-fp32"]["top1_agreement_with_keras"] is None


def test_evaluate_full_exact_subset_test_split_size(cli, seed_export, batches_dir, tmp_path):
    result = cli("evaluate", seed_export.fp32, "--data", batches_dir, "--no-keras", "--out", tmp_path)
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "evaluation.json").read_text())
    assert f"{EXACT_TEST_IMAGES} images" in report["data"]


def test_evaluate_missing_export(cli, tmp_path, batches_dir):
    cli("evaluate", tmp_path / "nope", "--data", batches_dir).assert_one_line_error(3, "not found")


def test_evaluate_missing_data(cli, seed_export, tmp_path):
    cli("evaluate", seed_export.dir, "--data", tmp_path / "nope", "--no-keras").assert_one_line_error(3)


def test_evaluate_folder_without_manifest(cli, tmp_path, batches_dir):
    cli("evaluate", tmp_path, "--data", batches_dir).assert_one_line_error(3, "manifest")


# --- bench ------------------------------------------------------------------------------------

def test_interleaved_gives_each_block_a_pause_and_an_untimed_first_call(monkeypatch):
    import cifar_edge.benchmark as benchmark

    events = []
    monkeypatch.setattr(benchmark.time, "sleep", lambda s: events.append(("pause", s)))

    def fake(name):
        def run(x):
            events.append(name)
            return x
        return Variant(name=name, path=None, predict=run, raw=run, preprocess=lambda x: x)

    times = interleaved([fake("a"), fake("b")], {"a": 1, "b": 1}, warmup=2, repeats=6, rounds=3)
    assert {k: [len(r) for r in v] for k, v in times.items()} == {"a": [2, 2, 2], "b": [2, 2, 2]}
    pause = ("pause", benchmark.SETTLE_S)
    block = lambda name: [pause, name, name, name]  # pause, untimed call, 2 timed calls
    assert events == ["a", "a", "b", "b"] + (block("a") + block("b")) * 3


def test_percentiles():
    p = percentiles(np.arange(1, 101) / 1000.0)
    assert p["p50"] == pytest.approx(50.5) and p["p99"] == pytest.approx(99.01) and p["mean"] == pytest.approx(50.5)


@pytest.fixture(scope="module")
def bench_run(cli, seed_export, test_images_200, jpeg_dir, tmp_path_factory):
    """One small bench with every variant (Keras, ONNX fp32/int8, TFLite fp32/int8), accuracy and infer."""
    images = tmp_path_factory.mktemp("bench-images")
    for name in CIFAR10_CLASSES:
        for k in range(3):
            shutil.copy(jpeg_dir / "test" / name / f"{k:04d}.jpg", images / f"{name}_{k}.jpg")
    out = tmp_path_factory.mktemp("bench")
    result = cli("bench", seed_export.dir, "--threads", "1", "--warmup", 2, "--repeats", 10, "--rounds", 2,
                 "--batch-sizes", "8", "--batch-repeats", 2, "--data", jpeg_dir, "--limit", 5,
                 "--images", images, "--out", out)
    assert result.code == 0, result.err
    return result, out, json.loads((out / "bench.json").read_text())


def test_bench_times_every_variant(bench_run):
    result, out, report = bench_run
    rows = {r["model"]: r for r in report["models"]}
    # In timing order: each ratio's two models are timed one right after the other.
    assert list(rows) == ["keras", "onnx-fp32", "onnx-int8", "tflite-int8", "tflite-fp32"]
    for row in rows.values():
        lat = row["latency_b1_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
        assert row["throughput_ips"]["8"] > 0 and row["threads"] == 1 and row["bytes"] > 0
        assert 0 <= row["accuracy"] <= 1
    assert rows["onnx-fp32"]["top1_agreement_with_keras"] == 1.0
    assert rows["onnx-int8"]["bytes"] < 0.5 * rows["onnx-fp32"]["bytes"]
    assert (out / "bench.png").stat().st_size > 5000
    assert (out / "model.int8.tflite").is_file()
    assert "onnx-int8 / tflite-int8" in result.out


def test_paired_ratios_are_taken_round_by_round():
    # Round 2 is a slow spell for both models.  Per round the latency ratios are 0.5, 0.5, 1.0 (median
    # 0.5); pooled over all calls the medians are 2.0 and 2.0 (ratio 1.0).  Throughput likewise.
    lat = {"onnx-int8": [np.array([1.0, 1.0]), np.array([4.0, 4.0]), np.array([2.0, 2.0])],
           "tflite-int8": [np.array([2.0, 2.0]), np.array([8.0, 8.0]), np.array([2.0, 2.0])]}
    batches = {8: {"onnx-int8": [np.array([1.0]), np.array([5.0]), np.array([2.0])],
                   "tflite-int8": [np.array([3.0]), np.array([15.0]), np.array([2.0])]}}
    pooled_latency = np.median(np.concatenate(lat["onnx-int8"])) / np.median(np.concatenate(lat["tflite-int8"]))
    (r,) = paired_ratios(lat, batches, threads=2)  # no onnx-fp32: that pair is left out
    assert r["pair"] == "onnx-int8 / tflite-int8" and r["threads"] == 2 and r["rounds"] == 3
    assert r["batch_rounds"] == {"8": 3}
    assert r["latency_b1_p50"] == pytest.approx(0.5) and r["latency_b1_p50_range"] == [0.5, 1.0]
    assert pooled_latency == pytest.approx(1.0)  # what the old pooled ratio would have said
    assert r["throughput"]["8"] == pytest.approx(3.0) and r["throughput_range"]["8"] == [1.0, 3.0]


def test_paired_ratios_refuse_rounds_that_do_not_pair():
    lat = {"onnx-int8": [np.array([1.0])] * 3, "onnx-fp32": [np.array([1.0])] * 2}
    with pytest.raises(ValueError):
        paired_ratios(lat, {}, threads=1)


def test_bench_reports_both_ratios_round_by_round(bench_run):
    result, out, report = bench_run
    assert [(r["pair"], r["threads"], r["rounds"]) for r in report["ratios"]] == [
        ("onnx-int8 / tflite-int8", 1, 2), ("onnx-int8 / onnx-fp32", 1, 2)]
    for r in report["ratios"]:
        assert r["throughput_range"]["8"][0] > 0 and r["latency_b1_p50_range"][0] > 0  # real timings, no NaN
        assert r["batch_rounds"] == {"8": 2}
    assert report["timed_calls"] == {"b1": 10, "per_batch_size": 2}
    assert "onnx-int8 / onnx-fp32 at 1 thread(s), median over rounds (range): b1 p50 latency x" in result.out
    md = (out / "bench.md").read_text()
    assert "| onnx-int8 / onnx-fp32 | 1 |" in md and "over 10 calls in 2 interleaved rounds" in md


def test_bench_times_infer_end_to_end_and_cold_start(bench_run):
    _, out, report = bench_run
    assert {r["model"] for r in report["infer"]} == {"onnx-fp32", "onnx-int8"}
    for r in report["infer"]:
        assert r["images"] == 30 and r["images_per_s"] > 0
    assert report["cold_start"]["runs"] >= 1 and report["cold_start"]["median_s"] > 0
    md = (out / "bench.md").read_text()
    assert "end to end" in md and "Cold start" in md


def test_bench_onnx_only(cli, seed_export, tmp_path):
    result = cli("bench", seed_export.dir, "--threads", "1", "--warmup", 1, "--repeats", 5, "--rounds", 1,
                 "--batch-sizes", "4", "--batch-repeats", 1, "--no-keras", "--no-tflite", "--out", tmp_path)
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "bench.json").read_text())
    assert {r["model"] for r in report["models"]} == {"onnx-fp32", "onnx-int8"}
    assert [r["pair"] for r in report["ratios"]] == ["onnx-int8 / onnx-fp32"]


def test_bench_bad_thread_list_is_usage_error(cli, seed_export):
    result = cli("bench", seed_export.dir, "--threads", "one")
    assert result.code == 2 and "thread counts" in result.err and "Traceback" not in result.err


def test_bench_missing_export(cli, tmp_path):
    cli("bench", tmp_path / "nope", "--no-keras", "--no-tflite").assert_one_line_error(3, "not found")
