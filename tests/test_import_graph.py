"""The house's import rules, read from the code with ast: no import circle among the modules of hpo/, objectives/
and storage/, and every import in the allowed direction, between the packages and between the rooms of a package."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("hpo", "objectives", "storage")

ROOMS = {
    "hpo": [("study",), ("views",), ("execution",)],
    "objectives": [("_config", "_lazy"), ("data",), ("students",), ("evaluation",), ("training",), ("tasks",)],
    "storage": [],
}
"""Each package's rooms from the bottom up: a room imports only rooms below it (and its own modules). A package's
top-level modules (``hpo._cli``, ``hpo._export``, the package ``__init__``) sit above all its rooms; in objectives
``_config`` and ``_lazy`` are the base every room stands on. Importing its own package's ``__init__`` from inside a
room would import every room, so it counts as importing the top."""

PACKAGE_IMPORTS = {"hpo": {"objectives", "storage"}, "objectives": set(), "storage": set()}
"""Which other packages of the project each package may import."""

NEVER = {"storage": {"torch", "transformers", "datasets"}}
"""Libraries a package never imports: ``storage`` runs where no torch is installed (``hpo status`` on a laptop)."""


def modules(root: Path = ROOT) -> dict[str, Path]:
    found = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            found[".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")] = path
    return found


def imports(mods: dict[str, Path], name: str) -> set[str]:
    """Every module, project or library, that ``name`` imports anywhere in its code (function bodies too)."""
    path, out = mods[name], set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".")[: len(name.split(".")) - node.level + (path.name == "__init__.py")]
                base = ".".join([*parts, base] if base else parts)
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in mods)
    return out


def graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> project modules it imports (a name inside a module counts as the module)."""
    edges = {}
    for name in mods:
        targets = set()
        for target in imports(mods, name):
            while target and target not in mods:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                targets.add(target)
        edges[name] = targets
    return edges


def cycles(edges: dict[str, set[str]], mods: dict[str, Path]) -> list[list[str]]:
    """Strongly connected components (Tarjan) that tie two or more modules other than a package ``__init__`` (a
    package importing its own modules, and they a name from it, is no circle)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
            if sum(mods[m].name != "__init__.py" for m in component) > 1:
                found.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def level(name: str) -> int:
    """The position of a module's room in :data:`ROOMS` (a top-level module or ``__init__``: above every room)."""
    parts = name.split(".")
    for i, names in enumerate(ROOMS[parts[0]]):
        if len(parts) > 1 and parts[1] in names:
            return i
    return len(ROOMS[parts[0]])


def against_the_direction(mods: dict[str, Path]) -> list[str]:
    """Imports against the allowed direction, one line each."""
    wrong = []
    for name in mods:
        package = name.split(".")[0]
        for target in sorted(imports(mods, name)):
            top = target.split(".")[0]
            if top in NEVER.get(package, ()):
                wrong.append(f"{name} imports {target}: {package} never imports {top}")
            elif top in PACKAGES and top != package and top not in PACKAGE_IMPORTS[package]:
                wrong.append(f"{name} imports {target}: {package} never imports {top}")
            elif top == package:
                owner = target
                while owner not in mods:
                    owner = owner.rpartition(".")[0]
                if level(owner) > level(name):
                    wrong.append(f"{name} imports {target}, a room above its own")
    return wrong


def test_there_is_no_import_circle() -> None:
    mods = modules()
    assert cycles(graph(mods), mods) == []


def test_every_import_goes_the_allowed_direction() -> None:
    assert against_the_direction(modules()) == []


def test_the_study_and_the_views_import_without_torch() -> None:
    """``hpo status``, ``hpo report`` and ``hpo pause`` start without loading torch (a second or more of start-up)."""
    code = "import sys, hpo._cli, hpo.study, hpo.views, objectives, storage; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"


def test_every_room_is_a_package_that_says_what_it_owns() -> None:
    for package, rooms in ROOMS.items():
        for name in (name for names in rooms for name in names if not name.startswith("_")):
            init = ROOT / package / name / "__init__.py"
            assert ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))), init


@pytest.mark.parametrize(
    ("files", "found"),
    [
        ({"hpo/study/_a.py": "from hpo.views import x", "hpo/views/__init__.py": ""}, "a room above its own"),
        ({"objectives/data/_a.py": "import hpo", "hpo/__init__.py": ""}, "objectives never imports hpo"),
        ({"storage/_a.py": "def f():\n    import torch"}, "storage never imports torch"),
        (
            {"objectives/students/_a.py": "from objectives.training._b import y", "objectives/training/_b.py": ""},
            "above",
        ),
        ({"objectives/data/_a.py": "from objectives import y", "objectives/__init__.py": ""}, "above"),
    ],
)
def test_the_checks_catch_what_they_forbid(tmp_path: Path, files: dict[str, str], found: str) -> None:
    """The rules run on a small tree made to break each of them, and on a circle, so they cannot pass vacuously."""
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir(exist_ok=True)
    mods = modules(tmp_path)
    assert any(found in line for line in against_the_direction(mods))


def test_a_circle_is_found(tmp_path: Path) -> None:
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir()
    (tmp_path / "objectives" / "_a.py").write_text("from objectives._b import x")
    (tmp_path / "objectives" / "_b.py").write_text("def f():\n    from objectives._a import y")
    (tmp_path / "objectives" / "_c.py").write_text("from objectives import x")
    (tmp_path / "objectives" / "__init__.py").write_text("from objectives._a import x\nfrom objectives._c import z")
    mods = modules(tmp_path)
    # _c and the package import each other: a package and one module is no circle; _a and _b are one
    assert cycles(graph(mods), mods) == [["objectives._a", "objectives._b"]]
