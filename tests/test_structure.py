"""The shape of the avvp package: its modules import each other without a cycle, each imports on
its own in a fresh interpreter, and none grows past MAX_LINES lines."""
import ast
import subprocess
import sys

import pytest

from conftest import ROOT, stage_env

PACKAGE = ROOT / "avvp"
MAX_LINES = 450
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")


def package_imports(name):
    """The avvp modules that module `name` imports when it is imported (its top-level statements,
    including those under a top-level if/try; imports inside functions run later and are left out)."""
    tree = ast.parse((PACKAGE / f"{name}.py").read_text(encoding="utf-8"))
    found = set()

    def visit(stmts):
        for node in stmts:
            if isinstance(node, ast.ImportFrom):
                if node.level == 1 or node.module == "avvp" or (node.module or "").startswith("avvp."):
                    base = node.module.split(".")[-1] if node.module and node.module != "avvp" else None
                    if base is not None:
                        found.add(base)
                    else:  # from . import x, y / from avvp import x
                        found.update(a.name for a in node.names)
            elif isinstance(node, ast.Import):
                found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("avvp."))
            elif isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(node.orelse)
                for h in getattr(node, "handlers", []):
                    visit(h.body)
                visit(getattr(node, "finalbody", []))
    visit(tree.body)
    return found & set(MODULES)


def find_cycle(graph):
    """One import cycle of `graph` (module -> imported modules) as a list, or None."""
    state, stack = {}, []

    def walk(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                return stack[stack.index(n):] + [n]
            if n not in state:
                cycle = walk(n)
                if cycle:
                    return cycle
        state[m] = "done"
        stack.pop()
        return None

    for m in sorted(graph):
        if m not in state:
            cycle = walk(m)
            if cycle:
                return cycle
    return None


def test_avvp_modules_import_each_other_without_a_cycle():
    graph = {m: package_imports(m) for m in MODULES}
    assert {"errors", "timing", "features", "llp"} <= graph["data"] and "model" in graph["engine"]  # seen at all
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"
    assert package_imports("errors") == set()  # the bottom of the graph


IMPORT_EACH = """
import importlib, sys
failed = []
for name in sys.argv[1:]:
    for k in [k for k in sys.modules if k == "avvp" or k.startswith("avvp.")]:
        del sys.modules[k]  # each module is the first of the package to be imported
    try:
        importlib.import_module("avvp." + name)
    except Exception as e:
        failed.append(f"avvp.{name}: {type(e).__name__}: {e}")
print("\\n".join(failed) or "ok")
"""


def test_each_module_imports_first_on_its_own():
    """Each module imported before any other of the package: a cycle that the static reader could
    miss (an import inside a function called at import time) fails here with ImportError."""
    r = subprocess.run([sys.executable, "-c", IMPORT_EACH, *MODULES], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env=stage_env())
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout[-2000:] + r.stderr[-2000:]


@pytest.mark.parametrize("name", MODULES)
def test_no_module_exceeds_the_line_limit(name):
    n = (PACKAGE / f"{name}.py").read_bytes().count(b"\n")  # what `wc -l` counts
    assert 0 < n <= MAX_LINES, f"avvp/{name}.py has {n} lines (limit {MAX_LINES})"
