"""Runtime speed: model latency by batch size, image decoding, the infer pipeline, cold start.

    python -m pytest benchmarks --benchmark-enable
    CIFAR_EDGE_BENCH_EXPORT=runs/seed python -m pytest benchmarks --benchmark-enable
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cifar_edge.runtime.classifier import Classifier
from cifar_edge.runtime.images import load_image

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.mark.parametrize("variant", ["fp32", "int8"])
@pytest.mark.parametrize("batch", [1, 32, 256])
@pytest.mark.parametrize("threads", [1, 2])
def test_model_latency(benchmark, manifest, pixels, variant, batch, threads):
    clf = Classifier(manifest.model_path(variant), manifest, threads=threads)
    x = clf.preprocess(pixels[:batch])
    benchmark.extra_info["images_per_call"] = batch
    probs = benchmark(clf.run, x)
    assert probs.shape == (batch, len(manifest.class_names))


def test_decode_and_preprocess(benchmark, manifest):
    files = sorted((DATA / "cifar10-jpeg" / "test" / "cat").glob("*.jpg"))[:256]
    prep = manifest.preprocessing

    def decode_all():
        return [prep.apply(load_image(f)) for f in files]

    benchmark.extra_info["images_per_call"] = len(files)
    out = benchmark(decode_all)
    assert len(out) == len(files)


@pytest.mark.parametrize("plan", ["one-batch-at-a-time", "batch-per-core"])
def test_infer_pipeline(benchmark, manifest, plan):
    """List, decode and classify 2,560 test JPEGs as `infer` does (--threads 2 or the default 0)."""
    from cifar_edge.runtime.images import find_images
    from cifar_edge.runtime.infer import plan_threads, predict_files

    folders = [DATA / "cifar10-jpeg" / "test" / name for name in ("cat", "dog", "ship")]
    files = find_images(folders)[:2560]
    intra_op, parallel = plan_threads(2 if plan == "one-batch-at-a-time" else 0, len(files), 256)
    clf = Classifier(manifest.model_path("int8"), manifest, threads=intra_op)

    def run():
        return sum(p.ok for p in predict_files(clf, find_images(folders)[:2560], batch_size=256, parallel=parallel))

    benchmark.extra_info["images_per_call"] = len(files)
    assert benchmark.pedantic(run, rounds=3, iterations=1) == len(files)


def test_cold_start(benchmark, manifest):
    """Process start to the first prediction on one image, through the CLI."""
    image = DATA / "cifar10-jpeg" / "test" / "cat" / "0000.jpg"
    model = manifest.model_path("int8")
    cmd = [sys.executable, "-m", "cifar_edge", "infer", str(model), str(image), "--format", "csv"]

    def run():
        return subprocess.run(cmd, capture_output=True, text=True, check=True)

    result = benchmark.pedantic(run, rounds=5, iterations=1)
    assert "0000.jpg" in result.stdout
