"""The layout rules of DESIGN.md that a reader relies on: no import cycle among the project's modules (imports
inside functions included: a late import only hides a cycle), no module past 500 lines, no class past 300, and
the training loop (train.Trainer) within 250."""
import ast

import pytest

from conftest import REPO

MODULES = {p.stem: p for p in REPO.glob("*.py")}
CLASS_LINES = {"Trainer": 250}


def imports_of(path):
    deps = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            deps |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            deps.add(node.module.split(".")[0])
    return deps & MODULES.keys()


def test_no_import_cycle():
    graph = {name: imports_of(path) for name, path in MODULES.items()}
    done: set = set()

    def visit(name, path):
        for dep in sorted(graph[name]):
            assert dep not in path, "import cycle: " + " -> ".join(path[path.index(dep):] + [dep])
            if dep not in done:
                visit(dep, path + [dep])
        done.add(name)

    for name in sorted(graph):
        visit(name, [name])


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_and_classes_stay_readable(name):
    text = MODULES[name].read_text()
    assert len(text.splitlines()) <= 500, f"{name}.py has {len(text.splitlines())} lines: split it along a seam"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ClassDef):
            lines = node.end_lineno - node.lineno + 1
            limit = CLASS_LINES.get(node.name, 300)
            assert lines <= limit, f"class {name}.{node.name} has {lines} lines (at most {limit})"
