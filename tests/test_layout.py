"""The package's layout: no module of softlabel imports, even inside a function, a module that
imports it back (directly or through others). A cycle makes the import order matter and hides
which module is the lower one."""
from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent / "softlabel"


def import_graph() -> dict[str, set[str]]:
    """Module -> the softlabel modules it imports (top-level and in functions)."""
    mods = {}
    for p in ROOT.rglob("*.py"):
        name = ".".join(("softlabel",) + p.relative_to(ROOT).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = p
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        package = m if p.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(p.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            graph[m] |= {t for t in targets if t in mods and t != m}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (iterative Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
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
    return found


def test_the_finder_sees_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_softlabel_has_no_import_cycles():
    graph = import_graph()
    assert "softlabel.stores.batch" in graph and "softlabel.stores.topk" in graph["softlabel.stores.packed"]
    found = cycles(graph)
    assert not found, "import cycles: " + "; ".join(
        " <-> ".join(f"{m} -> {sorted(graph[m] & set(c))}" for m in c) for c in found)


# Reads of a manifest outside softlabel/stores/ that stay, each with its reason: (file, function).
MANIFEST_READERS = {
    ("softlabel/files.py", "read_manifest_json"): "the JSON reader every store's manifest is read through",
    ("softlabel/classmap.py", "class_index_of"): "the class mapping, asked by stores/ and the trainer (moved by "
                                                 "the trainer refactor)",
    ("softlabel/training/epochs.py", "store_epochs"): "moved by the trainer refactor",
    ("softlabel/training/report.py", "store_notes"): "moved by the trainer refactor",
    ("softlabel/training/report.py", "validation_loader"): "moved by the trainer refactor",
    ("scripts/bench_check.py", "make_batch_store"): "a benchmark writing a store from the manifest it builds",
    ("scripts/benchlib.py", "extend_store"): "a benchmark extending a store it made, through the store's writer",
    ("scripts/bench_storage.py", "label_distance"): "a benchmark comparing two stores' steps",
}


def manifest_reads(path: pathlib.Path) -> list[tuple[str, int]]:
    """(enclosing function, line) of each ``manifest[...]`` / ``manifest.get(`` and each use of a
    Store's ``.manifest`` outside ``self``."""
    found = []

    def visit(node: ast.AST, function: str) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            function = node.name
        value = None
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
            value = node.value
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
            value = node.func.value
        if isinstance(value, ast.Name) and value.id == "manifest":
            found.append((function, node.lineno))
        if isinstance(node, ast.Attribute) and node.attr == "manifest" and not (
                isinstance(node.value, ast.Name) and node.value.id == "self"):
            found.append((function, node.lineno))
        for child in ast.iter_child_nodes(node):
            visit(child, function)
    visit(ast.parse(path.read_text()), "<module>")
    return found


def test_the_manifest_finder_sees_reads():
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        p = pathlib.Path(tmp) / "m.py"
        p.write_text("def f(store, manifest):\n    a = manifest['x']\n    b = store.manifest.get('y')\n"
                     "    manifest['z'] = 1\n    return self.manifest\n")
        assert manifest_reads(p) == [("f", 2), ("f", 3)]


def test_manifests_are_read_only_inside_stores():
    """A command or tool asks the Store (settings, teachers(), labelling(), summary()...), so a
    format's manifest keys are known to its own module only."""
    top = ROOT.parent
    paths = [p for p in sorted(ROOT.rglob("*.py")) if "stores" not in p.relative_to(ROOT).parts[:1]]
    paths += sorted((top / "scripts").glob("*.py"))
    reads = {(str(p.relative_to(top)), f, line) for p in paths for f, line in manifest_reads(p)}
    unexpected = sorted(r for r in reads if r[:2] not in MANIFEST_READERS)
    assert not unexpected, "manifest read outside softlabel/stores/: " + "; ".join(
        f"{f} in {fn}() line {line}" for f, fn, line in unexpected)
    stale = set(MANIFEST_READERS) - {r[:2] for r in reads}
    assert not stale, f"allowed but no longer reading a manifest: {sorted(stale)}"
