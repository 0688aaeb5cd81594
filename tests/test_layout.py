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


# Manifests read or built outside softlabel/stores/ that stay, each with its reason: (file, function).
MANIFEST_READERS = {
    ("softlabel/files.py", "read_manifest_json"): "the JSON reader every store's manifest is read through",
    ("scripts/bench_check.py", "batch_manifest"): "a benchmark making a synthetic store of a size no relabel run "
                                                  "on this machine reaches (random logits, no teacher)",
    ("scripts/bench_check.py", "make_batch_store"): "the same",
    ("scripts/bench_check.py", "make_per_image_store"): "the same, per image",
    ("scripts/benchlib.py", "make_store"): "the same, for the loader and GPU benchmarks",
    ("scripts/benchlib.py", "extend_store"): "a benchmark extending a store it made, through the store's writer",
    ("scripts/bench_storage.py", "imagenet_manifest"): "a benchmark of the storage formats' sizes on synthetic "
                                                       "labels (no images at all)",
    ("scripts/bench_storage.py", "store_sizes"): "the same",
    ("scripts/bench_storage.py", "label_distance"): "a benchmark comparing two stores' steps",
}

# Keys only a manifest has: a dict literal holding one is a manifest being built.
MANIFEST_ONLY_KEYS = {"format_version", "created_by", "class_to_index", "batches_per_epoch", "dataset_fingerprint"}
STORE_KINDS = {"BATCH", "UPSTREAM", "PER_IMAGE", "FKD_UPSTREAM"}


def manifest_reads(path: pathlib.Path) -> list[tuple[str, int]]:
    """(enclosing function, line) of each ``manifest[...]`` / ``manifest.get(`` (and the same on a
    name bound to a ``*manifest*(...)`` call's result), each use of a Store's ``.manifest`` outside
    ``self``, each dict literal with a key only a manifest has, and each import of a store kind."""
    found = []
    tree = ast.parse(path.read_text())
    bound = {"manifest"} | {t.id for node in ast.walk(tree) if isinstance(node, ast.Assign)
                            and isinstance(node.value, ast.Call) and "manifest" in ast.unparse(node.value.func)
                            for t in node.targets if isinstance(t, ast.Name)}

    def visit(node: ast.AST, function: str) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            function = node.name
        value = None
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
            value = node.value
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
            value = node.func.value
        if isinstance(value, ast.Name) and value.id in bound:
            found.append((function, node.lineno))
        if isinstance(node, ast.Attribute) and node.attr == "manifest" and not (
                isinstance(node.value, ast.Name) and node.value.id == "self"):
            found.append((function, node.lineno))
        if isinstance(node, ast.Dict) and any(isinstance(k, ast.Constant) and k.value in MANIFEST_ONLY_KEYS
                                              for k in node.keys):
            found.append((function, node.lineno))
        if isinstance(node, ast.ImportFrom) and any(a.name in STORE_KINDS for a in node.names):
            found.append((function, node.lineno))
        for child in ast.iter_child_nodes(node):
            visit(child, function)
    visit(tree, "<module>")
    return found


def test_the_manifest_finder_sees_reads():
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        p = pathlib.Path(tmp) / "m.py"
        p.write_text("def f(store, manifest):\n    a = manifest['x']\n    b = store.manifest.get('y')\n"
                     "    manifest['z'] = 1\n    return self.manifest\n"
                     "def g(path):\n    ref = per_image.read_manifest(path)\n    return ref['num_crops']\n"
                     "def h(index):\n    return {'created_by': 'x', 'n': len(index)}\n"
                     "def k():\n    from softlabel.stores import PER_IMAGE\n")
        assert manifest_reads(p) == [("f", 2), ("f", 3), ("g", 8), ("h", 10), ("k", 12)]


def test_manifests_are_read_and_built_only_inside_stores():
    """A command or tool asks the Store (settings, teachers(), labelling(), summary(),
    class_index()...) and has its manifest built there (``new_manifest`` of each writable format),
    so a format's manifest keys and its kinds are known to ``softlabel/stores/`` only."""
    top = ROOT.parent
    paths = [p for p in sorted(ROOT.rglob("*.py")) if "stores" not in p.relative_to(ROOT).parts[:1]]
    paths += sorted((top / "scripts").glob("*.py"))
    reads = {(str(p.relative_to(top)), f, line) for p in paths for f, line in manifest_reads(p)}
    unexpected = sorted(r for r in reads if r[:2] not in MANIFEST_READERS)
    assert not unexpected, "manifest read or built outside softlabel/stores/: " + "; ".join(
        f"{f} in {fn}() line {line}" for f, fn, line in unexpected)
    stale = set(MANIFEST_READERS) - {r[:2] for r in reads}
    assert not stale, f"allowed but no longer reading a manifest: {sorted(stale)}"
