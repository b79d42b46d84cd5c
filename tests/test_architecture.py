"""The arrows between the three packages point one way: embedkit -> probes, stores; never back, never across."""
from __future__ import annotations

import ast
import re
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


# --- the command line is a thin layer: parse, call the application layer, print ---------------------------------

#: Never imported by a CLI module, at any level: the work they do belongs to the application layer.
_NO_WORK_IN_CLI = {"numpy", "torch", "faiss", "zarr", "sklearn", "pandas", "scipy", "cv2"}
#: Not imported at a CLI module's top level (``embedkit --help`` must stay fast); inside a command is fine.
_HEAVY = _NO_WORK_IN_CLI | {"transformers", "timm", "pydicom", "PIL", "rich", "stores", "probes"}
#: embedkit modules a CLI module may import at top level (standard library and typer only otherwise).
_CLI_TOP_LEVEL_OK = ("embedkit.cli", "embedkit.errors", "embedkit.constants", "embedkit.data.adapters")


def _top_level_imports(tree: ast.Module) -> list[tuple[str, int]]:
    """(module, line) of every import executed when the module is imported (not in functions or TYPE_CHECKING)."""
    found: list[tuple[str, int]] = []

    def visit(body):
        for node in body:
            if isinstance(node, ast.Import):
                found.extend((alias.name, node.lineno) for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.append((node.module, node.lineno))
            elif isinstance(node, ast.If):
                test = ast.unparse(node.test)
                if "TYPE_CHECKING" not in test:
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, (ast.Try, ast.With)):
                visit(node.body)
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)

    visit(tree.body)
    return found


def _cli_offences(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    bad = []
    for module, line in _top_level_imports(tree):
        top = module.split(".")[0]
        if top in _HEAVY or (top == "embedkit" and not module.startswith(_CLI_TOP_LEVEL_OK)):
            bad.append(f"{path.name}:{line} imports {module} at top level")
    for node in ast.walk(tree):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
        bad += [f"{path.name}:{node.lineno} imports {n} (array work belongs in embedkit/app)"
                for n in names if n.split(".")[0] in _NO_WORK_IN_CLI]
    return bad


def test_cli_modules_are_thin():
    offenders = []
    for path in sorted((ROOT / "embedkit" / "cli").glob("*.py")):
        offenders += _cli_offences(path)
    assert not offenders, "embedkit/cli must only parse, call and print:\n" + "\n".join(offenders)


def test_thick_cli_module_is_detected(tmp_path):
    bad = tmp_path / "cmd.py"
    bad.write_text("import typer\nimport numpy as np\nfrom embedkit.app.retrieval import search\n"
                   "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import torch\n"
                   "def run():\n    import faiss\n    from embedkit.app import probe\n")
    assert [o.split(" imports ")[1].split(" ")[0] for o in _cli_offences(bad)] == [
        "numpy", "embedkit.app.retrieval", "numpy", "torch", "faiss"]


# --- probes take display names from their caller: no model or dataset name in probes' code --------------------------

#: Names of backbones and datasets (and their parts) that only embedkit knows about.
_NAME_PATTERN = re.compile(r"dinov\d|vit[-_]?[sblgh]\d|convnext|\bvit\b|chexpert|mimic|padchest|vindr|cxr14|chestx|"
                           r"\bnih\b|\bpcxr\b|\bpedi\b", re.IGNORECASE)


def _names_in_code(path: Path) -> list[str]:
    """String literals outside docstrings that mention a model or dataset name."""
    tree = ast.parse(path.read_text(), filename=str(path))
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body and \
                isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant):
            docstrings.add(id(node.body[0].value))
    return [f"{path.relative_to(path.parents[1])}:{node.lineno}: {node.value!r}" for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
            and _NAME_PATTERN.search(node.value)]


def test_probes_never_parse_model_or_dataset_names():
    offenders = []
    for path in sorted((ROOT / "probes").rglob("*.py")):
        offenders += _names_in_code(path)
    assert not offenders, ("probes must take display names from the caller, never match embedkit's model or "
                           "dataset names:\n" + "\n".join(offenders))


def test_name_parsing_is_detected(tmp_path):
    (tmp_path / "probes").mkdir()
    bad = tmp_path / "probes" / "m.py"
    bad.write_text('"""Docstrings may say dinov3 and NIH."""\nimport re\n'
                   'FAMILY = re.compile(r"dinov3-(vit[sb]16)")\ndef f(x):\n    return x.startswith("chexpert")\n')
    assert [o.split(":")[1] for o in _names_in_code(bad)] == ["3", "5"]


# --- no import cycles among embedkit's modules ---------------------------------------------------------------------

def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _lazy_imports(tree: ast.Module) -> list[ast.stmt]:
    """Every import statement that can execute, at any depth (inside functions too), except ``TYPE_CHECKING``."""
    found: list[ast.stmt] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append(child)
            visit(child)

    visit(tree)
    return found


def _import_graph(root: Path, package: str, *, lazy: bool = False) -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports at top level (``from pkg import sub`` counts as ``pkg.sub``);
    with ``lazy``, imports inside functions count too (a cycle hidden behind a function-level import is still one).
    """
    modules = {_module_name(p, root): p for p in sorted((root / package).rglob("*.py"))}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_pkg = path.name == "__init__.py"
        targets: list[str] = [m for m, _ in _top_level_imports(tree)]
        statements = _lazy_imports(tree) if lazy else tree.body
        targets += [a.name for node in statements if isinstance(node, ast.Import) for a in node.names]
        # Relative imports and the names of ``from X import a, b`` (a submodule when a file of that name exists).
        for node in statements:
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                    anchor = anchor[:len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                    targets.append(base)
                targets += [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules]
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


@pytest.mark.parametrize("package", ["embedkit", "probes", "stores"])
def test_no_import_cycles(package):
    cycles = _cycles(_import_graph(ROOT, package))
    assert not cycles, "import cycles (top-level imports):\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_import_cycle_is_detected(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from pkg.sub.b import B\n")
    (pkg / "sub" / "a.py").write_text("from pkg.sub import b\nA = 1\n")
    (pkg / "sub" / "b.py").write_text("from .a import A\nB = 2\n")
    (pkg / "c.py").write_text("def late():\n    from pkg.sub import a\n")  # lazy: not an edge
    # a imports the package pkg.sub, whose __init__ imports b, which imports a
    assert _cycles(_import_graph(tmp_path, "pkg")) == [["pkg.sub", "pkg.sub.a", "pkg.sub.b"]]
    (pkg / "sub" / "a.py").write_text("A = 1\n")
    assert _cycles(_import_graph(tmp_path, "pkg")) == []


#: Packages whose modules must not form a cycle even through function-level imports (the lazy import that hid
#: ``backbones.spec`` <-> ``backbones.zoo``).
_NO_LAZY_CYCLES = ("embedkit.backbones", "embedkit.extract")


def _within(graph: dict[str, set[str]], package: str) -> dict[str, set[str]]:
    inside = {m for m in graph if m == package or m.startswith(package + ".")}
    return {m: graph[m] & inside for m in inside}


@pytest.mark.parametrize("package", _NO_LAZY_CYCLES)
def test_no_import_cycles_counting_lazy_imports(package):
    graph = _within(_import_graph(ROOT, "embedkit", lazy=True), package)
    assert len(graph) > 3, f"{package} not found"
    cycles = _cycles(graph)
    assert not cycles, "import cycles (function-level imports included):\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_lazy_import_cycle_is_detected(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "spec.py").write_text("def ensure():\n    from pkg import zoo  # noqa\n")
    (pkg / "zoo.py").write_text("from pkg.spec import ensure\n")
    (pkg / "hint.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.zoo\n")
    assert _cycles(_import_graph(tmp_path, "pkg")) == []
    assert _cycles(_import_graph(tmp_path, "pkg", lazy=True)) == [["pkg.spec", "pkg.zoo"]]
    (pkg / "spec.py").write_text("def ensure():\n    import pkg.hint  # noqa\n")
    assert _cycles(_import_graph(tmp_path, "pkg", lazy=True)) == []
