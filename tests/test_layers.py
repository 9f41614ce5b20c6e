"""The package's layers point one way (docs/architecture.md, "Layers"): no module imports one of a higher
layer, and no modules import each other in a cycle of any length. Read from the source (every import
statement, also those inside functions), not by importing; kernels/ is read as the maefast.kernels it is
installed as."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# source folder -> the package it is imported as
PACKAGES = {ROOT / "maefast": "maefast", ROOT / "kernels": "maefast.kernels"}
# lowest first; a module may import its own layer's modules and those of lower layers
LAYERS = [
    {"errors", "io", "fields", "lock", "limits", "records", "distributed", "tables", "choices", "lazy", "progress",
     "_source_tree", "_C"},
    {"kernels"},
    {"ops"},
    {"models"},
    {"data"},
    {"train", "embedding", "evaluate", "job_setup"},
    {"cli", "demo", "demo_report", "__init__"},
]


def module_name(path: Path) -> str:
    for folder, package in PACKAGES.items():
        if path.is_relative_to(folder):
            parts = path.relative_to(folder).with_suffix("").parts
            return ".".join((package, *parts)).removesuffix(".__init__")
    raise AssertionError(path)


def source_files() -> list[Path]:
    return [path for folder in PACKAGES for path in sorted(folder.rglob("*.py"))]


def imports() -> dict[str, set[str]]:
    """module -> the maefast modules it imports (`from maefast import x` counts as maefast.x; a relative import
    resolves against the module's package)."""
    modules = {module_name(p) for p in source_files()}
    graph = {}
    for path in source_files():
        name, targets = module_name(path), set()
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if node.level:
                    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    module = f"{base}.{module}" if module else base
                if module.split(".")[0] != "maefast":
                    continue
                for alias in node.names:
                    full = f"{module}.{alias.name}"
                    targets.add(full if full in modules or alias.name == "_C" else module)
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.split(".")[0] == "maefast"}
        graph[name] = targets - {name}
    return graph


def layer_of(module: str) -> int:
    part = module.split(".")[1] if "." in module else "__init__"
    for index, names in enumerate(LAYERS):
        if part in names:
            return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted: every module of one
    reaches every other through imports, so each holds at least one cycle."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in graph.get(module, ()):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return sorted(components)


def test_every_import_points_down_or_sideways():
    upward = [(a, b) for a, targets in imports().items() for b in targets if layer_of(b) > layer_of(a)]
    assert not upward, "imports of a higher layer: " + ", ".join(f"{a} -> {b}" for a, b in sorted(upward))


def test_the_kernels_are_read_as_their_own_layer():
    graph = imports()
    kernels = {name for name in graph if name.startswith("maefast.kernels")}
    assert {"maefast.kernels", "maefast.kernels._common", "maefast.kernels.attention"} <= kernels
    assert "maefast.kernels._common" in graph["maefast.kernels.attention"]
    assert {layer_of(name) for name in kernels} == {LAYERS.index({"kernels"})}


def test_no_modules_import_each_other_in_a_cycle():
    cycles = import_cycles(imports())
    assert not cycles, f"import cycles: {cycles}"


def test_the_cycle_finder_finds_cycles_of_any_length():
    chain = {"a": {"b"}, "b": {"c"}, "c": {"d"}, "d": {"a"}, "e": {"a"}, "f": {"f"}}
    assert import_cycles(chain) == [["a", "b", "c", "d"]]
    assert import_cycles({"a": {"b"}, "b": {"a"}, "c": {"d"}}) == [["a", "b"]]
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
