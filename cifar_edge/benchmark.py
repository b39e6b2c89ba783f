"""`cifar-edge bench`: batch-1 latency and large-batch throughput of every variant.

Each variant is timed on its bare model call with preprocessed input, so
the numbers compare models, not Python glue.  Keras runs through a
tf.function; TensorFlow's thread pool is fixed per process, so Keras is
measured at the first thread count only.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cifar_edge.reports import save_figure
from cifar_edge.runtime.files import write_json, write_text
from cifar_edge.variants import KERAS, Variant, keras_variant, onnx_variants, resolve_manifest


@dataclass
class BenchConfig:
    """Timing options; defaults live in the CLI (shown by --help)."""

    threads: list[int]
    warmup: int = 20
    repeats: int = 300
    batch_size: int = 256
    batch_repeats: int = 10
    use_keras: bool = True


def latency_ms(fn: Callable[[np.ndarray], Any], x: np.ndarray, warmup: int, repeats: int) -> dict[str, float]:
    """p50/p90/p99/mean of `repeats` timed calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn(x)
    times = np.empty(repeats)
    for i in range(repeats):
        start = time.perf_counter()
        fn(x)
        times[i] = time.perf_counter() - start
    ms = times * 1e3
    return {"p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)),
            "p99": float(np.percentile(ms, 99)), "mean": float(ms.mean())}


def throughput(fn: Callable[[np.ndarray], Any], x: np.ndarray, warmup: int, repeats: int) -> float:
    """Images per second on batches of len(x), from the median batch time."""
    stats = latency_ms(fn, x, max(1, warmup), repeats)
    return len(x) / (stats["p50"] / 1e3)


def _resolve_threads(threads: list[int]) -> list[int]:
    cores = os.cpu_count() or 1
    return [cores if t == 0 else t for t in threads]


def bench(target: str | Path, config: BenchConfig, out: Path | None = None,
          echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Time every variant of an export at each thread count; write JSON, Markdown and a plot."""
    manifest = resolve_manifest(target)
    threads = _resolve_threads(config.threads)
    out = out or manifest.path.parent / "bench"
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(config.batch_size, 32, 32, 3), dtype=np.uint8)

    keras = None
    if config.use_keras:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads[0])
        tf.config.threading.set_inter_op_parallelism_threads(1)
        keras = keras_variant(manifest)
        if keras is None:
            echo("note: the source Keras model is not available; timing ONNX models only")

    rows: list[dict[str, Any]] = []
    for t in threads:
        variants: list[Variant] = ([keras] if keras is not None and t == threads[0] else [])
        variants += onnx_variants(manifest, threads=t)
        for v in variants:
            x1 = v.preprocess(pixels[:1])
            xb = v.preprocess(pixels)
            lat = latency_ms(v.raw, x1, config.warmup, config.repeats)
            ips = throughput(v.raw, xb, 2, config.batch_repeats)
            row = {"model": v.name, "threads": t, "bytes": v.size_bytes, "latency_b1_ms": lat,
                   f"throughput_b{config.batch_size}_ips": ips}
            rows.append(row)
            echo(f"{v.name:10s} threads {t}: b1 p50 {lat['p50']:.3f} ms  p90 {lat['p90']:.3f}  "
                 f"p99 {lat['p99']:.3f}  |  b{config.batch_size} {ips:,.0f} img/s  |  {v.size_bytes / 1024:.0f} KiB")
    report = {
        "models": rows,
        "batch_size": config.batch_size,
        "warmup": config.warmup,
        "repeats": config.repeats,
        "batch_repeats": config.batch_repeats,
        "timed": "bare model call on preprocessed input (session.run / compiled tf.function)",
        "machine": {"cpu_count": os.cpu_count(), "machine": platform.machine(),
                    "processor": platform.processor(), "python": platform.python_version()},
        "manifest": str(manifest.path),
    }
    write_json(out / "bench.json", report)
    write_text(out / "bench.md", _markdown(report))
    _plot(report, out / "bench.png")
    echo(f"wrote {out}/bench.json, bench.md and bench.png")
    return report


def _markdown(report: dict[str, Any]) -> str:
    b = report["batch_size"]
    lines = [f"# Benchmark ({report['machine']['cpu_count']} cores, {report['machine']['machine']})", "",
             f"Batch-1 latency over {report['repeats']} calls after {report['warmup']} warm-up calls; "
             f"throughput at batch {b} from the median of {report['batch_repeats']} batches. "
             f"Timed: {report['timed']}.", "",
             f"| model | threads | b1 p50 ms | b1 p90 ms | b1 p99 ms | b{b} img/s | file size |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in report["models"]:
        lat = r["latency_b1_ms"]
        lines.append(f"| {r['model']} | {r['threads']} | {lat['p50']:.3f} | {lat['p90']:.3f} | {lat['p99']:.3f} | "
                     f"{r[f'throughput_b{b}_ips']:,.0f} | {r['bytes'] / 1024:.0f} KiB |")
    return "\n".join(lines + ["", "![latency and throughput](bench.png)"]) + "\n"


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b = report["batch_size"]
    rows = report["models"]
    labels = [f"{r['model']}\n{r['threads']} thr" for r in rows]
    p50 = np.array([r["latency_b1_ms"]["p50"] for r in rows])
    p90 = np.array([r["latency_b1_ms"]["p90"] for r in rows])
    p99 = np.array([r["latency_b1_ms"]["p99"] for r in rows])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    pos = np.arange(len(rows))
    ax1.bar(pos, p50, color="tab:blue", label="p50")
    ax1.errorbar(pos, p50, yerr=[np.zeros_like(p50), p99 - p50], fmt="none", ecolor="black", capsize=4,
                 label="p99")
    ax1.scatter(pos, p90, color="tab:orange", zorder=3, label="p90")
    ax1.set_xticks(pos, labels, fontsize=8)
    ax1.set_ylabel("ms")
    ax1.set_yscale("log")
    ax1.set_title("batch-1 latency (lower is better)")
    ax1.legend()
    ax2.bar(pos, [r[f"throughput_b{b}_ips"] for r in rows], color="tab:green")
    ax2.set_xticks(pos, labels, fontsize=8)
    ax2.set_ylabel("images / s")
    ax2.set_title(f"throughput at batch {b} (higher is better)")
    for ax in (ax1, ax2):
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
