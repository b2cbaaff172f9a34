"""The package's layers hold: no import cycle, no import hidden inside a function, each layer importing only the
layers below it, and ``import jaxrec`` loading the core without pandas (docs/architecture.md)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "jaxrec"

# what each layer may import (besides itself); core and scale are the pure-JAX base (see docs/architecture.md)
ALLOWED = {
    "_version": set(),
    "core": {"scale"},
    "scale": {"core"},
    "testing": {"core"},
    "contrib": {"core"},
    "models": {"core", "testing"},
    "data": {"core", "scale"},
    "evaluation": {"core", "scale", "data", "models"},
    "experiment": {"core", "scale", "data", "models", "evaluation", "contrib", "testing", "_version"},
    "methods": {"core", "scale", "data", "models", "evaluation", "experiment"},
    "serve": {"core", "scale", "data", "models", "evaluation", "experiment", "_version"},
    "cli": {"core", "scale", "data", "models", "evaluation", "experiment", "methods", "serve"},
    "__init__": {"_version", "core", "scale"},
    "__main__": {"cli"},
}
# scale reads only the core's contract modules, so that the core's inner loop and trainer can use scale
SCALE_MAY_IMPORT = {"jaxrec.core.batch", "jaxrec.core.losses", "jaxrec.core.params", "jaxrec.core.features"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str, path: Path) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return path.stem  # jaxrec/__init__.py, jaxrec/__main__.py
    return parts[1]


def imports(path: Path) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """``(top-level jaxrec imports, jaxrec imports inside functions or classes)`` as (module, line)."""
    tree = ast.parse(path.read_text())
    top, nested = [], []

    def targets(node) -> list[str]:
        if isinstance(node, ast.Import):
            return [a.name for a in node.names]
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # "from jaxrec.x import y": y may be a module itself
            return [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module for a in node.names
            ]
        return []

    for node in ast.walk(tree):
        if not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        names = [n for n in targets(node) if n == "jaxrec" or n.startswith("jaxrec.")]
        at_top = node in tree.body or any(node in getattr(n, "body", []) for n in tree.body if isinstance(n, ast.If))
        (top if at_top else nested).extend((n, node.lineno) for n in names)
    return top, nested


def test_no_import_inside_a_function():
    hidden = [f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}" for path in MODULES.values()
              for name, line in imports(path)[1]]  # fmt: skip
    assert not hidden, "lazy imports (move them to the top, or fix the layering that needed them):\n" + "\n".join(
        hidden
    )


def test_each_layer_imports_only_the_layers_below_it():
    wrong = []
    for module, path in MODULES.items():
        own = layer(module, path)
        for name, line in imports(path)[0]:
            if name == "jaxrec":
                wrong.append(f"{module}:{line} imports the jaxrec package itself")
                continue
            target = name.split(".")[1]
            if target != own and target not in ALLOWED[own]:
                wrong.append(f"{module}:{line} ({own}) imports {name} ({target})")
            if own == "scale" and target == "core" and name not in SCALE_MAY_IMPORT:
                wrong.append(f"{module}:{line}: scale may import only the core's contract modules, not {name}")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle():
    graph = {m: {n for n, _ in imports(p)[0] if n in MODULES and n != m} for m, p in MODULES.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(m, stack):
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append(" -> ".join(stack[stack.index(n) :] + [n]))
            elif n not in state:
                visit(n, stack + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checks_see_the_package():
    # a broken walk would make the tests above pass vacuously
    assert {"jaxrec.core.inner", "jaxrec.core.trainer", "jaxrec.data.tasks", "jaxrec.cli"} <= set(MODULES)
    top, _ = imports(MODULES["jaxrec.core.trainer"])
    assert any(name == "jaxrec.core.objectives" for name, _ in top)
    assert set(ALLOWED) >= {layer(m, p) for m, p in MODULES.items()}


@pytest.mark.parametrize("module", ["jaxrec", "jaxrec.core.trainer", "jaxrec.scale.row_sparse"])
def test_the_core_imports_without_pandas(module):
    heavy = ("pandas", "jaxrec.data", "jaxrec.models")
    code = f"import sys, {module}; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_the_layers_above_load_when_used():
    code = "import sys, jaxrec; jaxrec.cold_start_split; jaxrec.Experiment; print('pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"
