"""Benchmark fixtures: the exported model to time.

Set CIFAR_EDGE_BENCH_EXPORT to an export folder (e.g. runs/seed) to time a
real model; otherwise a tiny seed model is trained and exported once (needs
the [train] extra and ../shared/data).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from cifar_edge.runtime.manifest import Manifest

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory) -> Path:
    given = os.environ.get("CIFAR_EDGE_BENCH_EXPORT")
    if given:
        return Path(given)
    from cifar_edge.cli import main

    out = tmp_path_factory.mktemp("bench-model")
    for argv in (
        ["train", "--data", str(DATA / "cifar10-jpeg"), "--limit", "20", "--epochs", "1", "--out", str(out)],
        ["export", str(out / "model.keras"), "--quantize", "--calib-size", "64", "--parity-size", "32",
         "--int8-min-agreement", "0"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 0
    return out


@pytest.fixture(scope="session")
def manifest(export_dir) -> Manifest:
    return Manifest.load(export_dir / "manifest.json")


@pytest.fixture(scope="session")
def pixels() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(256, 32, 32, 3), dtype=np.uint8)
