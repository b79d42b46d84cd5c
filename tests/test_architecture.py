"""The arrows between the three packages point one way: embedkit -> probes, stores; never back, never across."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"stores": {"embedkit", "probes"}, "probes": {"embedkit", "stores"}}


def _imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_forbidden_imports(package):
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = _imported_top_levels(path) & FORBIDDEN[package]
        if bad:
            offenders.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert not offenders, "forbidden arrows:\n" + "\n".join(offenders)


def test_forbidden_arrow_is_detected(tmp_path):
    bad = tmp_path / "m.py"
    bad.write_text("from embedkit.errors import EmbedkitError\nimport stores.errors\n")
    assert _imported_top_levels(bad) == {"embedkit", "stores"}


def test_cli_help_does_not_import_heavy_modules():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from embedkit.cli.main import app\n"
        "r = CliRunner().invoke(app, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "heavy = [m for m in ('torch', 'transformers', 'timm', 'faiss', 'zarr', 'sklearn', 'pydicom') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "", f"'embedkit --help' imported {proc.stdout.strip()}"


def test_user_error_exits_2_with_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "embedkit", "info", str(tmp_path / "missing.zarr")], capture_output=True, text=True
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr


def _json_writes_without_allow_nan(path: Path) -> list[int]:
    """Lines where JSON goes to a file (``json.dump``, or ``json.dumps`` inside a ``write``/``write_text``/``pwrite``
    call) without ``allow_nan=False``: Python would write NaN/Infinity, which strict JSON parsers reject."""
    tree = ast.parse(path.read_text(), filename=str(path))

    def is_json_call(node, name):
        return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == name
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "json")

    def strict(call):
        return any(k.arg == "allow_nan" and isinstance(k.value, ast.Constant) and k.value.value is False
                   for k in call.keywords)

    bad = set()
    for node in ast.walk(tree):
        if is_json_call(node, "dump") and not strict(node):
            bad.add(node.lineno)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                node.func.attr in ("write", "write_text", "pwrite"):
            for arg in node.args:
                for inner in ast.walk(arg):
                    if is_json_call(inner, "dumps") and not strict(inner):
                        bad.add(inner.lineno)
    return sorted(bad)


def test_json_files_are_written_strictly():
    offenders = []
    for package in ("embedkit", "probes", "stores"):
        for path in sorted((ROOT / package).rglob("*.py")):
            offenders += [f"{path.relative_to(ROOT)}:{line}" for line in _json_writes_without_allow_nan(path)]
    assert not offenders, "JSON written without allow_nan=False (use a NaN -> null helper):\n" + "\n".join(offenders)


def test_non_strict_json_write_is_detected(tmp_path):
    bad = tmp_path / "m.py"
    bad.write_text("import json\np.write_text(json.dumps(d) + '\\n')\njson.dump(d, f)\n"
                   "p.write_text(json.dumps(d, allow_nan=False))\n")
    assert _json_writes_without_allow_nan(bad) == [2, 3]
