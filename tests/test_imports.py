"""No import cycle anywhere in jaxbias/, counting imports inside functions too."""
from __future__ import annotations

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _modules(root: str) -> dict[str, str]:
    out = {}
    for d, _, files in os.walk(os.path.join(root, "jaxbias")):
        for f in files:
            if f.endswith(".py"):
                name = os.path.relpath(os.path.join(d, f), root)[:-3].replace(os.sep, ".")
                out[name.removesuffix(".__init__")] = os.path.join(d, f)
    return out


def import_graph(root: str) -> dict[str, set[str]]:
    """Module -> the jaxbias modules it imports anywhere in its body (``from a import b``: ``a.b`` if a module)."""
    mods = _modules(root)

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for mod, path in mods.items():
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                deps |= {resolve(a.name) for a in node.names if a.name.split(".")[0] == "jaxbias"}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolved against this module's package
                    pkg = mod if path.endswith("__init__.py") else mod.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        pkg = pkg.rpartition(".")[0]
                    base = f"{pkg}.{base}".rstrip(".")
                if base.split(".")[0] != "jaxbias":
                    continue
                for a in node.names:
                    full = f"{base}.{a.name}"
                    deps.add(full if full in mods else resolve(base))
        deps.discard(None)
        deps.discard(mod)
        graph[mod] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_in_the_package():
    graph = import_graph(ROOT)
    assert len(graph) > 40 and "jaxbias.training.loop" in graph["jaxbias.train"]
    assert cycles(graph) == []


def test_no_loop_between_the_folders_of_the_package():
    """Folded to the level of jaxbias's folders and top modules (``jaxbias.methods``, ``jaxbias.training``, ...), the
    imports form no cycle either: e.g. attribution trains through ``jaxbias.training``, not through
    ``jaxbias.train``, whose methods (targeted noise) use attribution's maps."""
    graph = import_graph(ROOT)
    top = {}
    for m, deps in graph.items():
        a = ".".join(m.split(".")[:2])
        top.setdefault(a, set()).update(".".join(d.split(".")[:2]) for d in deps)
        top[a].discard(a)
    assert cycles(top) == []


def test_training_knows_no_method_and_no_layer_above_it():
    """``jaxbias.training`` trains any loss: it imports no method, no run layer, no workflow and not the run
    directory (the loop is handed a store); only its checkpointer touches files, the loop through a store."""
    graph = import_graph(ROOT)
    training = {m for m in graph if m == "jaxbias.training" or m.startswith("jaxbias.training.")}
    assert {"jaxbias.training.loop", "jaxbias.training.state", "jaxbias.training.step"} <= training
    above = ("jaxbias.methods", "jaxbias.runs", "jaxbias.train", "jaxbias.sweep", "jaxbias.workdir", "jaxbias.cli",
             "jaxbias.concepts", "jaxbias.explain", "jaxbias.datasets")
    bad = sorted(f"{m} -> {d}" for m in training for d in graph[m]
                 if any(d == a or d.startswith(a + ".") for a in above))
    assert bad == []
    mods = _modules(ROOT)
    for m in training - {"jaxbias.training.checkpoint"}:
        with open(mods[m]) as f:
            tree = ast.parse(f.read())
        file_calls = [ast.unparse(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call) and (
            (isinstance(n.func, ast.Name) and n.func.id == "open")
            or (isinstance(n.func, ast.Attribute) and isinstance(n.func.value, ast.Name)
                and n.func.value.id in ("os", "shutil", "pathlib", "tempfile") and n.func.attr not in ("environ",))
            or (isinstance(n.func, ast.Attribute) and n.func.attr in ("write_text", "write_bytes", "mkdir")))]
        assert [c for c in file_calls if not c.startswith("os.environ")] == [], m
    assert "jaxbias.methods" in graph["jaxbias.train"]  # fit makes a method's loss, then trains it there


def test_the_cycle_finder_finds_a_function_level_cycle(tmp_path):
    pkg = tmp_path / "jaxbias"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("import numpy\nfrom jaxbias import b\n")
    (pkg / "b.py").write_text("def f():\n    from jaxbias.sub.c import g\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("def g():\n    from ..a import x\n")
    (pkg / "d.py").write_text("from jaxbias.a import y\n")
    graph = import_graph(str(tmp_path))
    assert graph["jaxbias.b"] == {"jaxbias.sub.c"} and graph["jaxbias.sub.c"] == {"jaxbias.a"}
    assert cycles(graph) == [["jaxbias.a", "jaxbias.b", "jaxbias.sub.c"]]



def test_the_run_directory_file_names_are_spelled_in_one_module():
    """Every reader and writer of a run directory asks ``jaxbias.workdir.run_path``: no other module holds one
    of its file names as a string (docstrings that mention a name are whole sentences, not the name)."""
    from jaxbias.workdir import FILES

    names = set(FILES.values())
    found = {}
    for mod, path in _modules(ROOT).items():
        with open(path) as f:
            tree = ast.parse(f.read())
        hits = sorted({n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in names})
        if hits:
            found[mod] = hits
    assert set(found) == {"jaxbias.workdir"}, found
    assert set(found["jaxbias.workdir"]) == names


def test_no_module_imports_another_modules_private_names():
    """A name with a leading underscore stays in its module (a package may share a private ``_module`` among its
    own modules): what another module needs is public, documented API."""
    mods = _modules(ROOT)
    found = []
    for mod, path in mods.items():
        with open(path) as f:
            tree = ast.parse(f.read())
        package = mod.rpartition(".")[0]
        module_aliases = {}  # local name -> the jaxbias module it is bound to
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jaxbias"):
                for a in node.names:
                    if f"{node.module}.{a.name}" in mods:
                        module_aliases[a.asname or a.name] = f"{node.module}.{a.name}"
                    if a.name.startswith("_") and not a.name.startswith("__") and node.module != package:
                        found.append(f"{mod}: from {node.module} import {a.name}")
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("jaxbias") and a.asname:
                        module_aliases[a.asname] = a.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in module_aliases and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                found.append(f"{mod}: {module_aliases[node.value.id]}.{node.attr}")
    assert not found, found
