"""The command line surface: help, version, exit codes, usage errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from cifar_edge.cli import cli as click_group

# The documented exit codes (README / errors.py docstring), as `code meaning` pairs.
EXIT_CODES = ["0 ok", "1 some inputs failed", "2 usage error", "3 bad input", "4 check failed",
              "5 cannot write output", "6 missing dependency", "130 interrupted"]
SUBCOMMANDS = sorted(click_group.commands)


def _flat(text: str) -> str:
    """Help text with click's line wrapping undone."""
    return " ".join(text.split())


def _console_script() -> str:
    beside = Path(sys.executable).parent / "cifar-edge"
    found = str(beside) if beside.exists() else shutil.which("cifar-edge")
    if not found:
        pytest.fail("the cifar-edge console script is not installed (pip install -e .)", pytrace=False)
    return found


def _run(cmd, **kwargs):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT, **kwargs)


def _assert_lists_exit_codes(text: str):
    flat = _flat(text)
    assert "Exit codes:" in flat
    for item in EXIT_CODES:
        assert item in flat, item


def test_the_core_subcommands_exist():
    assert {"train", "export", "infer"} <= set(SUBCOMMANDS)


def test_console_script_help():
    proc = _run([_console_script(), "--help"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Usage: cifar-edge [OPTIONS] COMMAND")
    for name in SUBCOMMANDS:
        assert f"  {name} " in proc.stdout or f"  {name}\n" in proc.stdout, name
    _assert_lists_exit_codes(proc.stdout)
    assert proc.stderr == ""


def test_python_m_cifar_edge_help():
    proc = _run([sys.executable, "-m", "cifar_edge", "--help"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Usage: cifar-edge [OPTIONS] COMMAND")
    _assert_lists_exit_codes(proc.stdout)


def test_console_script_unknown_option_is_exit_2():
    proc = _run([_console_script(), "--no-such-option"])
    assert proc.returncode == 2
    assert "No such option" in proc.stderr and "--no-such-option" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_subcommand_help(cli, name):
    result = cli(name, "--help")
    assert result.code == 0, result.err
    assert result.out.startswith(f"Usage: cifar-edge {name} ")
    _assert_lists_exit_codes(result.out)
    assert result.err == ""


def test_short_help_option(cli):
    assert cli("infer", "-h").out == cli("infer", "--help").out


def test_train_help_shows_the_seed_recipe(cli):
    flat = _flat(cli("train", "--help").out)
    # the notebook: batch 64, Adam 1e-3, <= 50 epochs, ReduceLROnPlateau(0.2, 2), EarlyStopping(5)
    assert "seed: 50 epochs, batch 64, adam, lr 0.001 ReduceLROnPlateau 0.2/2, early stop 5" in flat
    assert ("edge: 11 epochs, batch 512, muon (lr x0.25, momentum 0.7) + sgd (momentum 0.9), lr 0.4 one-cycle, "
            "no early stop, flip-crop (pad 2), wd 0.005, smoothing 0.2, fp32, 19 min budget, test-time flip") in flat


def test_version(cli):
    result = cli("--version")
    assert result.code == 0
    assert result.out.strip() == f"cifar-edge, version {version('cifar-edge')}"


@pytest.mark.parametrize("args, needles", [
    (["--bogus"], ["No such option", "--bogus"]),
    (["infer", "--bogus", "m.onnx", "x.jpg"], ["No such option", "--bogus"]),
    (["train", "--model", "nope"], ["'nope' is not one of"]),
    (["train", "--epochs", "0"], ["--epochs"]),
    (["infer"], ["Missing argument", "MODEL"]),
    (["infer", "m.onnx", "x.jpg", "--format", "xml"], ["'xml' is not one of"]),
    (["export", "m.keras", "--scale", "1,2"], ["three comma-separated numbers"]),
    (["no-such-command"], ["No such command", "no-such-command"]),
])
def test_usage_errors_are_exit_2(cli, args, needles):
    result = cli(*args)
    assert result.code == 2, (result.out, result.err)
    for needle in needles:
        assert needle in result.err
    assert "Usage: cifar-edge" in result.err
    assert "Traceback" not in result.err


_HELP_PROBE = r"""
import json, sys
from cifar_edge.cli import main
try:
    main(sys.argv[2:])
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "tf": sorted(m for m in sys.modules if m.split(".")[0] in
      ("tensorflow", "keras", "tf2onnx", "sklearn", "matplotlib"))}), file=sys.stderr)
"""


@pytest.mark.parametrize("name", ["train", "export"])
def test_help_does_not_import_tensorflow(name):
    proc = _run([sys.executable, "-c", _HELP_PROBE, "--", name, "--help"])
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    assert report == {"code": 0, "tf": []}
    assert f"Usage: cifar-edge {name}" in proc.stdout
