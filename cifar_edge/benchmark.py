"""`cifar-edge bench`: latency, throughput, size and accuracy of every variant, side by side.

Variants: the source Keras model, ONNX fp32 and int8 (our runtime), and,
as the baseline a Keras user would otherwise pick, TFLite fp32 and int8
built from the same Keras model (XNNPACK).  Each variant is timed on its
bare model call with preprocessed input, so the numbers compare engines,
not Python glue.  Timings are taken in interleaved rounds (every variant
once per round) so that machine noise hits all variants alike, and the
ratios (ONNX int8 over TFLite int8, and over ONNX fp32) are computed
round by round: the models run in the order onnx-fp32, onnx-int8,
tflite-int8, tflite-fp32, so each ratio's two blocks are timed one right
after the other and a slow spell of the machine slows both.  The report
gives the median of the per-round ratios and their range; a median of
ratios need not equal the ratio of the two models' pooled columns.
TensorFlow's own thread pool is fixed per process, so Keras is timed at
the first thread count only.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cifar_edge.errors import BadInputError
from cifar_edge.reports import save_figure
from cifar_edge.runtime.files import write_json, write_text
from cifar_edge.variants import KERAS, Variant, keras_variant, onnx_variants, resolve_manifest


@dataclass
class BenchConfig:
    """Timing options.  No defaults here: they live in the CLI, shown by --help."""

    threads: list[int]
    warmup: int
    repeats: int
    batch_sizes: list[int]
    batch_repeats: int
    rounds: int
    use_keras: bool
    tflite: bool
    data: str | None
    limit: int | None
    images: str | None  # a folder for the end-to-end `infer` measurement


def percentiles(seconds: np.ndarray) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {"p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)),
            "p99": float(np.percentile(ms, 99)), "mean": float(ms.mean())}


def time_calls(fn: Callable[[np.ndarray], Any], x: np.ndarray, n: int) -> np.ndarray:
    """Seconds taken by each of `n` calls."""
    times = np.empty(n)
    for i in range(n):
        start = time.perf_counter()
        fn(x)
        times[i] = time.perf_counter() - start
    return times


# Pause before each block of calls so the engine timed before has parked its worker threads.
SETTLE_S = 0.05


# The ratios bench reports, numerator over denominator.
RATIO_PAIRS = (("onnx-int8", "tflite-int8"), ("onnx-int8", "onnx-fp32"))


def interleaved(variants: list[Variant], inputs: dict[str, np.ndarray], warmup: int, repeats: int,
                rounds: int) -> dict[str, list[np.ndarray]]:
    """Per-call times for each variant, one array per interleaved round.

    Each variant's block of calls starts after a `SETTLE_S` pause and one
    untimed call.  The engine timed before it may still have worker threads
    spin-waiting: onnxruntime and XNNPACK both spin before they sleep.  On a
    2-core machine that would bill one engine for another's idle threads.
    The untimed call alone was not enough.  Two onnxruntime sessions with
    2 threads, alternating blocks of 8 b32 calls, measured fp32 3,964 /
    int8 6,785 img/s, against 7,572 / 11,857 with a 50 ms pause (about
    what each gives alone: 7,774 / 11,881).
    """
    for v in variants:
        time_calls(v.raw, inputs[v.name], warmup)
    per_round = max(1, repeats // rounds)
    times: dict[str, list[np.ndarray]] = {v.name: [] for v in variants}
    for _ in range(rounds):
        for v in variants:
            time.sleep(SETTLE_S)
            v.raw(inputs[v.name])
            times[v.name].append(time_calls(v.raw, inputs[v.name], per_round))
    return times


def paired_ratios(latency: dict[str, list[np.ndarray]], batches: dict[int, dict[str, list[np.ndarray]]],
                  threads: int) -> list[dict[str, Any]]:
    """Each RATIO_PAIRS ratio, round by round: the median over rounds and the range.

    Latency ratio: numerator's b1 p50 over the denominator's (below 1 favours
    the numerator).  Throughput ratio: the inverse, per batch size (above 1
    favours it).  Each round's ratio compares two blocks timed back to back.
    """
    out = []
    for num, den in RATIO_PAIRS:
        if num not in latency or den not in latency:
            continue
        lat = [np.median(a) / np.median(b) for a, b in zip(latency[num], latency[den], strict=True)]
        thr = {str(b): [np.median(d) / np.median(n) for n, d in zip(times[num], times[den], strict=True)]
               for b, times in batches.items()}
        out.append({
            "pair": f"{num} / {den}", "threads": threads, "rounds": len(lat),
            "batch_rounds": {b: len(r) for b, r in thr.items()},
            "latency_b1_p50": float(np.median(lat)), "latency_b1_p50_range": [float(min(lat)), float(max(lat))],
            "throughput": {b: float(np.median(r)) for b, r in thr.items()},
            "throughput_range": {b: [float(min(r)), float(max(r))] for b, r in thr.items()},
        })
    return out


def _resolve_threads(threads: list[int]) -> list[int]:
    cores = os.cpu_count() or 1
    return [cores if t == 0 else t for t in threads]


def _tflite_variants(keras: Variant, manifest, threads: int, tflite_paths: dict[str, Path]) -> list[Variant]:
    from cifar_edge.tflite_baseline import predictor

    out = []
    for name in sorted(tflite_paths, key=lambda n: n != "int8"):  # int8 first: timed right after ONNX int8
        path = tflite_paths[name]
        run = predictor(path, threads)
        prep = keras.preprocess

        def predict(pixels, run=run, prep=prep):
            return np.concatenate([run(prep(pixels[i : i + 256])) for i in range(0, len(pixels), 256)])

        out.append(Variant(name=f"tflite-{name}", path=path, predict=predict, raw=run, preprocess=prep))
    return out


def _calibration_images(manifest) -> np.ndarray:
    """The images our int8 export was calibrated on (same path, size and seed)."""
    from cifar_edge.exporter.export import CALIBRATION_SPLITS, sample_images

    source = (manifest.raw.get("quantization") or {}).get("calibration_source")
    if not source:
        raise BadInputError("the manifest records no calibration data; re-export with --quantize "
                            "or run bench with --no-tflite")
    images, _, _ = sample_images(source["path"], CALIBRATION_SPLITS, source["size"], source["seed"])
    return images


def bench(target: str | Path, config: BenchConfig, out: Path | None = None,
          echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Time every variant at each thread count; write bench.json, bench.md and bench.png."""
    manifest = resolve_manifest(target)
    threads = _resolve_threads(config.threads)
    out = out or manifest.path.parent / "bench"
    pixels = np.random.default_rng(0).integers(0, 256, size=(max(config.batch_sizes), 32, 32, 3), dtype=np.uint8)

    keras = None
    tflite_paths: dict[str, Path] = {}
    if config.use_keras or config.tflite:
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads[0])
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:  # TensorFlow already started in this process (bench called as a library)
            echo("note: TensorFlow is already initialised here; Keras runs with its existing thread pool")
        keras = keras_variant(manifest)
        if keras is None:
            echo("note: the source Keras model is not available; timing ONNX models only")
    if config.tflite and keras is not None:
        from cifar_edge.tflite_baseline import build

        echo("building TFLite fp32 and int8 baselines (int8 calibrated on the export's calibration images)")
        tflite_paths = build(keras.model, manifest.preprocessing.apply(_calibration_images(manifest)), out,
                             add_softmax=bool(manifest.raw.get("softmax_added")))

    test = None
    if config.data is not None:
        from cifar_edge.datasets import load_dataset

        test = load_dataset(config.data, splits=("test",), limit_per_class=config.limit).split("test")

    rows: list[dict[str, Any]] = []
    ratios: list[dict[str, Any]] = []
    batch_rounds = min(config.rounds, config.batch_repeats)
    accuracy: dict[str, dict[str, float]] = {}
    for t in threads:
        variants: list[Variant] = []
        if keras is not None and config.use_keras and t == threads[0]:
            variants.append(keras)
        variants += onnx_variants(manifest, threads=t)
        if tflite_paths and keras is not None:
            variants += _tflite_variants(keras, manifest, t, tflite_paths)
        if test is not None and t == threads[0]:
            accuracy = _accuracy(variants, test)
        one = {v.name: v.preprocess(pixels[:1]) for v in variants}
        lat = interleaved(variants, one, config.warmup, config.repeats, config.rounds)
        batches = {}
        for b in config.batch_sizes:
            batch = {v.name: v.preprocess(pixels[:b]) for v in variants}
            batches[b] = interleaved(variants, batch, 2, config.batch_repeats, batch_rounds)
        ratios += paired_ratios(lat, batches, t)
        timed_calls = {"b1": sum(map(len, lat[variants[0].name])),
                       "per_batch_size": sum(map(len, batches[config.batch_sizes[0]][variants[0].name]))}
        for v in variants:
            row = {"model": v.name, "threads": t, "bytes": v.size_bytes,
                   "latency_b1_ms": percentiles(np.concatenate(lat[v.name])),
                   "throughput_ips": {str(b): b / float(np.median(np.concatenate(batches[b][v.name])))
                                      for b in config.batch_sizes}}
            row.update(accuracy.get(v.name, {}))
            rows.append(row)
            echo(_line(row, config.batch_sizes))
    infer_rows = []
    cold = None
    if config.images:
        from cifar_edge.runtime.images import find_images

        files = find_images([config.images])
        if not files:
            raise BadInputError(f"no image files found in {config.images}")
        for variant in manifest.models:
            infer_rows.append(infer_end_to_end(f"onnx-{variant}", manifest.model_path(variant), config.images,
                                               len(files)))
            r = infer_rows[-1]
            echo(f"infer end to end, onnx-{variant}: {r['images']} images in {r['seconds']:.2f}s = "
                 f"{r['images_per_s']:,.0f} images/s (the whole command, start-up included)")
        fastest = "int8" if "int8" in manifest.models else "fp32"
        cold = cold_start(manifest.model_path(fastest), files[0])
        echo(f"cold start (process start to first prediction, onnx-{fastest}): {cold['median_s']:.3f}s median")
    report = {
        "models": rows,
        "infer": infer_rows,
        "cold_start": cold,
        "ratios": ratios,
        "batch_sizes": config.batch_sizes,
        "warmup": config.warmup,
        "repeats": config.repeats,
        "rounds": config.rounds,
        "batch_repeats": config.batch_repeats,
        "batch_rounds": batch_rounds,
        "timed_calls": timed_calls,  # what was timed: repeats rounded down to whole rounds
        "accuracy_data": f"{config.data} (test, {len(test)} images)" if test is not None else None,
        "timed": "bare model call on preprocessed input (onnxruntime session.run, TFLite invoke, "
                 "compiled tf.function), interleaved rounds",
        "machine": {"cpu_count": os.cpu_count(), "machine": platform.machine(),
                    "processor": platform.processor(), "python": platform.python_version()},
        "manifest": str(manifest.path),
    }
    for r in ratios:
        echo(f"{r['pair']} at {r['threads']} thread(s), median over rounds (range): "
             f"b1 p50 latency x{_ranged(r, 'latency_b1_p50')} ({r['rounds']} rounds), "
             + ", ".join(f"b{b} throughput x{_ranged(r, 'throughput', str(b))} ({r['batch_rounds'][str(b)]} rounds)"
                         for b in config.batch_sizes))
    write_json(out / "bench.json", report)
    write_text(out / "bench.md", _markdown(report))
    _plot(report, out / "bench.png")
    echo(f"wrote {out}/bench.json, bench.md and bench.png")
    return report


def _time_infer(model: Path, *args: str | Path) -> float:
    """Wall seconds of one `python -m cifar_edge infer MODEL ARGS... --format csv` process."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "cifar_edge", "infer", str(model), *map(str, args), "--format", "csv"]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 1):  # 1: some files were unreadable, the rest were classified
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise BadInputError(f"`cifar-edge infer {model.name}` failed with exit {done.returncode}: {last}")
    return seconds


def infer_end_to_end(name: str, model: Path, folder: str | Path, count: int, runs: int = 3) -> dict[str, Any]:
    """Wall time of `cifar-edge infer MODEL FOLDER` with its defaults: start-up, file listing, decoding,
    resizing, classifying and writing the CSV; the best of `runs` (the first also warms the file cache)."""
    with tempfile.TemporaryDirectory(prefix="cifar-edge-bench-") as tmp:
        out = Path(tmp) / "out.csv"
        seconds = min(_time_infer(model, folder, "--output", out) for _ in range(runs))
        rows = len(out.read_text().splitlines()) - 1 if out.exists() else 0
    if rows != count:  # a crash also exits 1: make sure every file got its row
        raise BadInputError(f"`cifar-edge infer {model.name}` wrote {rows} rows for {count} files")
    return {"model": name, "folder": str(folder), "images": count, "seconds": seconds,
            "images_per_s": count / seconds, "runs": runs}


def cold_start(model: Path, image: Path, runs: int = 5) -> dict[str, Any]:
    """Seconds from process start to the first prediction on one image (`python -m cifar_edge infer`)."""
    times = [_time_infer(model, image) for _ in range(runs)]
    return {"model": str(model), "runs": runs, "median_s": float(np.median(times)), "min_s": float(min(times))}


def _accuracy(variants: list[Variant], test) -> dict[str, dict[str, float]]:
    preds = {v.name: v.predict(test.images).argmax(1) for v in variants}
    ref = preds.get(KERAS)
    return {name: {"accuracy": float(np.mean(p == test.labels)),
                   "top1_agreement_with_keras": float(np.mean(p == ref)) if ref is not None else None}
            for name, p in preds.items()}


def _ranged(ratio: dict[str, Any], key: str, batch: str | None = None) -> str:
    """'1.53 (1.47-1.60)': a paired ratio's median over rounds and its range."""
    if batch is None:
        value, (low, high) = ratio[key], ratio[key + "_range"]
    else:
        value, (low, high) = ratio[key][batch], ratio[key + "_range"][batch]
    return f"{value:.2f} ({low:.2f}-{high:.2f})"


def _line(row: dict[str, Any], batch_sizes: list[int]) -> str:
    lat = row["latency_b1_ms"]
    text = (f"{row['model']:12s} threads {row['threads']}: b1 p50 {lat['p50']:.3f} ms  p90 {lat['p90']:.3f}  "
            f"p99 {lat['p99']:.3f}  | " + "  ".join(f"b{b} {row['throughput_ips'][str(b)]:,.0f} img/s"
                                                   for b in batch_sizes)
            + f"  | {row['bytes'] / 1024:.0f} KiB")
    if row.get("accuracy") is not None:
        text += f"  | acc {row['accuracy']:.2%}"
    return text


def _markdown(report: dict[str, Any]) -> str:
    bs = report["batch_sizes"]
    acc = report["accuracy_data"]
    lines = [f"# Benchmark ({report['machine']['cpu_count']} cores, {report['machine']['machine']})", "",
             f"Batch-1 latency over {report['timed_calls']['b1']} calls in {report['rounds']} interleaved rounds "
             f"after {report['warmup']} warm-up calls; throughput from the median of "
             f"{report['timed_calls']['per_batch_size']} calls per batch size, in {report['batch_rounds']} "
             f"interleaved rounds of their own. "
             f"Timed: {report['timed']}." + (f" Accuracy on {acc}." if acc else ""), "",
             "| model | threads | b1 p50 ms | b1 p90 ms | b1 p99 ms | "
             + " | ".join(f"b{b} img/s" for b in bs) + " | size | accuracy | agreement with Keras |",
             "|---|---:|---:|---:|---:|" + "---:|" * len(bs) + "---:|---:|---:|"]
    for r in report["models"]:
        lat = r["latency_b1_ms"]
        a = f"{r['accuracy']:.2%}" if r.get("accuracy") is not None else ""
        g = f"{r['top1_agreement_with_keras']:.2%}" if r.get("top1_agreement_with_keras") is not None else ""
        lines.append(f"| {r['model']} | {r['threads']} | {lat['p50']:.3f} | {lat['p90']:.3f} | {lat['p99']:.3f} | "
                     + " | ".join(f"{r['throughput_ips'][str(b)]:,.0f}" for b in bs)
                     + f" | {r['bytes'] / 1024:.0f} KiB | {a} | {g} |")
    if report["ratios"]:
        lines += ["", "Ratios, round by round (each round times both models one right after the other), median "
                  "over the rounds and the range; latency below 1 and throughput above 1 favour the first model. "
                  "A median of per-round ratios need not equal the ratio of the two rows above.", "",
                  "| pair | threads | b1 p50 latency | " + " | ".join(f"b{b} throughput" for b in bs) + " |",
                  "|---|---:|---:|" + "---:|" * len(bs)]
        for r in report["ratios"]:
            lines.append(f"| {r['pair']} | {r['threads']} | {_ranged(r, 'latency_b1_p50')} | "
                         + " | ".join(_ranged(r, "throughput", str(b)) for b in bs) + " |")
    if report.get("infer"):
        lines += ["", "`cifar-edge infer MODEL FOLDER` end to end, its defaults, the whole command "
                  "(start-up, listing, decoding, resizing, classifying, CSV), best of 3:", "",
                  "| model | images | seconds | images/s |", "|---|---:|---:|---:|"]
        for r in report["infer"]:
            lines.append(f"| {r['model']} | {r['images']} | {r['seconds']:.2f} | {r['images_per_s']:,.0f} |")
    if report.get("cold_start"):
        c = report["cold_start"]
        lines += ["", f"Cold start, process start to the first prediction on one image: {c['median_s']:.3f} s "
                  f"(median of {c['runs']}, `python -m cifar_edge infer`)."]
    return "\n".join(lines + ["", "![latency and throughput](bench.png)"]) + "\n"


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b = max(report["batch_sizes"])
    rows = report["models"]
    labels = [f"{r['model']}\n{r['threads']} thr" for r in rows]
    p50 = np.array([r["latency_b1_ms"]["p50"] for r in rows])
    p90 = np.array([r["latency_b1_ms"]["p90"] for r in rows])
    p99 = np.array([r["latency_b1_ms"]["p99"] for r in rows])
    ratios = report["ratios"]
    panels = 3 if ratios else 2
    fig, axes = plt.subplots(1, panels, figsize=(max(12, 1.2 * len(rows) * 2) + 4 * (panels - 2), 4.8),
                             gridspec_kw={"width_ratios": [len(rows), len(rows)] + [len(ratios) + 1] * (panels - 2)})
    ax1, ax2 = axes[:2]
    pos = np.arange(len(rows))
    ax1.bar(pos, p50, color="tab:blue", label="p50")
    ax1.errorbar(pos, p50, yerr=[np.zeros_like(p50), p99 - p50], fmt="none", ecolor="black", capsize=4,
                 label="p99")
    ax1.scatter(pos, p90, color="tab:orange", zorder=3, label="p90")
    ax1.set_xticks(pos, labels, fontsize=7)
    ax1.set_ylabel("ms")
    ax1.set_yscale("log")
    ax1.set_title("batch-1 latency (lower is better)")
    ax1.legend()
    ax2.bar(pos, [r["throughput_ips"][str(b)] for r in rows], color="tab:green")
    ax2.set_xticks(pos, labels, fontsize=7)
    ax2.set_ylabel("images / s")
    ax2.set_title(f"throughput at batch {b} (higher is better)")
    if ratios:
        ax3 = axes[2]
        mid = np.array([r["throughput"][str(b)] for r in ratios])
        low, high = (np.array([r["throughput_range"][str(b)][i] for r in ratios]) for i in (0, 1))
        pos3 = np.arange(len(ratios))
        ax3.bar(pos3, mid, color="tab:purple")
        ax3.errorbar(pos3, mid, yerr=[mid - low, high - mid], fmt="none", ecolor="black", capsize=4)
        ax3.axhline(1.0, color="grey", linewidth=1)
        ax3.set_xticks(pos3, [f"{r['pair'].replace(' / ', chr(10) + '/ ')}\n{r['threads']} thr" for r in ratios],
                       fontsize=7)
        ax3.set_ylabel("ratio (above 1 favours the first model)")
        ax3.set_title(f"throughput ratio at batch {b},\nround by round (median, range)")
    for ax in axes:
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
