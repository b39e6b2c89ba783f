"""`cifar-edge evaluate`: accuracy of Keras, ONNX fp32 and ONNX int8 side by side on a test set."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cifar_edge import reports
from cifar_edge.datasets import load_dataset
from cifar_edge.errors import BadInputError
from cifar_edge.runtime.files import write_json, write_text
from cifar_edge.variants import KERAS, Variant, keras_variant, onnx_variants, resolve_manifest


def data_slug(path: str | Path | None) -> str:
    """A short folder-safe name for a data set path."""
    if path is None:
        return "keras-cifar10"
    parts = [p for p in Path(path).resolve().parts if p not in ("/", "data", "test", "train", "cifar-10-batches-py")]
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", parts[-1] if parts else "data")


def evaluate(target: str | Path, data: str | Path | None, out: Path | None = None, limit: int | None = None,
             use_keras: bool = True, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Evaluate every variant of an export on the test split of `data`; write JSON, Markdown, PNGs."""
    manifest = resolve_manifest(target)
    dataset = load_dataset(data, splits=("test",), limit_per_class=limit, progress=echo)
    test = dataset.split("test")
    if dataset.class_names != manifest.class_names:
        raise BadInputError(
            f"the data's classes {dataset.class_names} do not match the model's {manifest.class_names}"
        )
    variants: list[Variant] = []
    if use_keras:
        k = keras_variant(manifest)
        if k is None:
            echo("note: the source Keras model is not available; evaluating ONNX models only")
        else:
            variants.append(k)
    variants += onnx_variants(manifest)
    out = out or manifest.path.parent / f"eval-{data_slug(data)}"
    label = f"{dataset.source} (test, {len(test)} images)"
    echo(f"evaluating {', '.join(v.name for v in variants)} on {label}")

    preds: dict[str, np.ndarray] = {}
    results: dict[str, dict[str, Any]] = {}
    for v in variants:
        started = time.perf_counter()
        probs = v.predict(test.images)
        if not np.isfinite(probs).all():
            echo(f"warning: {v.name} produced NaN or Inf probabilities")
        preds[v.name] = probs.argmax(1)
        metrics = reports.classification_metrics(test.labels, preds[v.name], dataset.class_names)
        metrics["seconds"] = round(time.perf_counter() - started, 2)
        metrics["file"] = str(v.path)
        metrics["bytes"] = v.size_bytes
        results[v.name] = metrics
        reports.plot_confusion_matrix(metrics["confusion_matrix"], dataset.class_names,
                                      out / f"confusion_{v.name}.png",
                                      f"{v.name} on {Path(dataset.source).name}: accuracy {metrics['accuracy']:.2%}")
    reference = KERAS if KERAS in preds else None
    for name, r in results.items():
        r["top1_agreement_with_keras"] = (float(np.mean(preds[name] == preds[reference]))
                                          if reference else None)
        r["accuracy_delta_vs_keras"] = (r["accuracy"] - results[reference]["accuracy"]) if reference else None
        echo(f"{name:10s} accuracy {r['accuracy']:.2%}"
             + (f"  agreement with Keras {r['top1_agreement_with_keras']:.2%}" if reference else ""))

    report = {
        "data": label,
        "class_names": dataset.class_names,
        "models": {name: {k: v for k, v in r.items() if k != "report_text"} for name, r in results.items()},
    }
    write_json(out / "evaluation.json", report)
    write_text(out / "evaluation.md", _markdown(report, results))
    echo(f"wrote {out}/evaluation.json, evaluation.md and confusion matrices")
    return report


def _markdown(report: dict[str, Any], results: dict[str, dict[str, Any]]) -> str:
    names = list(results)
    lines = [f"# Evaluation on {report['data']}", "",
             "| model | accuracy | Δ vs Keras | top-1 agreement with Keras | file size |",
             "|---|---:|---:|---:|---:|"]
    for name in names:
        r = results[name]
        delta = "" if r["accuracy_delta_vs_keras"] is None else f"{100 * r['accuracy_delta_vs_keras']:+.2f} pt"
        agree = "" if r["top1_agreement_with_keras"] is None else f"{r['top1_agreement_with_keras']:.2%}"
        lines.append(f"| {name} | {r['accuracy']:.2%} | {delta} | {agree} | {r['bytes'] / 1024:.0f} KiB |")
    lines += ["", "## Per-class F1", "", "| class | " + " | ".join(names) + " |",
              "|---|" + "---:|" * len(names)]
    for cls in report["class_names"]:
        lines.append(f"| {cls} | " + " | ".join(f"{results[n]['per_class'][cls]['f1-score']:.3f}" for n in names) + " |")
    for name in names:
        lines += ["", f"## {name}", "", "```", results[name]["report_text"].rstrip(), "```",
                  "", f"![confusion matrix](confusion_{name}.png)"]
    return "\n".join(lines) + "\n"
