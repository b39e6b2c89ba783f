"""The edge runtime (`infer`, cifar_edge.runtime) must run without the training stack."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

RUNTIME_DIR = REPO_ROOT / "cifar_edge" / "runtime"

# Packages of the [train] extra and the TF-side of cifar_edge.
HEAVY = ["tensorflow", "keras", "tf2onnx", "sklearn", "matplotlib", "onnx", "cifar_edge.exporter"]

_PROBE = r"""
import json, sys
from cifar_edge.cli import main
code = None
try:
    main(sys.argv[3:])
except SystemExit as exc:
    code = exc.code
with open(sys.argv[1], "w") as fh:
    json.dump({"code": code, "modules": sorted(sys.modules)}, fh)
"""


def _loaded(modules, name):
    return sorted(m for m in modules if m == name or m.startswith(name + "."))


@pytest.fixture(scope="module")
def infer_probe(seed_export, jpeg_dir, tmp_path_factory):
    """Run `infer` in a fresh interpreter and record every module it imported."""
    report = tmp_path_factory.mktemp("probe") / "modules.json"
    image = jpeg_dir / "test" / "ship" / "0000.jpg"
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, str(report), "--", "infer", str(seed_export.fp32), str(image),
         "--format", "json"],
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
    )
    assert report.is_file(), proc.stderr
    data = json.loads(report.read_text())
    return proc, data


def test_infer_ran(infer_probe):
    proc, data = infer_probe
    assert data["code"] == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert len(rows) == 1 and rows[0]["path"].endswith("ship/0000.jpg") and rows[0]["label"]
    assert "onnxruntime" in data["modules"]  # the probe does see what infer imports


@pytest.mark.parametrize("name", HEAVY)
def test_infer_does_not_import(infer_probe, name):
    _, data = infer_probe
    assert _loaded(data["modules"], name) == []


def test_infer_of_a_plain_jpeg_does_not_import_pillow(infer_probe):
    # simplejpeg decodes it; Pillow's import would be ~15 ms of the cold start.
    _, data = infer_probe
    assert _loaded(data["modules"], "PIL") == []


def test_infer_does_not_import_the_trainer_package(infer_probe):
    _, data = infer_probe
    assert _loaded(data["modules"], "cifar_edge.trainer") == []


def _imports(path: Path) -> list[str]:
    """Every module a file imports, at any depth (also inside functions), plus
    importlib.import_module("...") / __import__("...") string targets."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against cifar_edge.runtime
                base = "cifar_edge.runtime" if node.level == 1 else "cifar_edge"
                names.append(f"{base}.{node.module}" if node.module else base)
            else:
                names.append(node.module)
        elif isinstance(node, ast.Call):
            func = node.func
            fname = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if fname in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
                names.append(str(node.args[0].value))
    return names


RUNTIME_FILES = sorted(RUNTIME_DIR.glob("*.py"))


def test_runtime_files_found():
    assert {p.name for p in RUNTIME_FILES} >= {"__init__.py", "classifier.py", "images.py", "infer.py",
                                               "manifest.py", "output.py", "files.py"}


@pytest.mark.parametrize("path", RUNTIME_FILES, ids=lambda p: p.name)
def test_runtime_source_imports_only_the_runtime_stack(path):
    allowed_third_party = {"numpy", "PIL", "onnxruntime", "simplejpeg"}
    allowed_own = ("cifar_edge.runtime", "cifar_edge.errors")
    for name in _imports(path):
        top = name.split(".")[0]
        if top == "cifar_edge":
            assert name.startswith(allowed_own) or name == "cifar_edge", f"{path.name} imports {name}"
        elif top == "__future__" or top in sys.stdlib_module_names:
            continue
        else:
            assert top in allowed_third_party, f"{path.name} imports {name}"


def test_static_scan_would_catch_a_heavy_import(tmp_path):
    """The scanner itself finds imports hidden inside functions and import_module calls."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    import tensorflow as tf\n    from cifar_edge.exporter import x\n"
                     "import importlib\nimportlib.import_module('keras')\nfrom ..trainer import fit\n")
    assert set(_imports(probe)) == {"importlib", "tensorflow", "cifar_edge.exporter", "keras", "cifar_edge.trainer"}
