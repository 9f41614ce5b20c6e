"""The package's layers point one way (docs/architecture.md, "Layers"): no module imports one of a higher
layer, and no two modules import each other. Read from the source (import statements), not by importing."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "maefast"
# lowest first; a module may import its own layer's modules and those of lower layers
LAYERS = [
    {"errors", "io", "fields", "lock", "limits", "records", "distributed", "tables", "_source_tree", "_C"},
    {"kernels"},
    {"ops"},
    {"models"},
    {"data"},
    {"train", "embedding", "evaluate"},
    {"cli", "demo", "demo_report", "__init__"},
]


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")


def imports() -> dict[str, set[str]]:
    """module -> the maefast modules it imports (`from maefast import x` counts as maefast.x)."""
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name, targets = module_name(path), set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "maefast":
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    targets.add(full if full in modules or alias.name == "_C" else node.module)
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


def test_every_import_points_down_or_sideways():
    upward = [(a, b) for a, targets in imports().items() for b in targets if layer_of(b) > layer_of(a)]
    assert not upward, "imports of a higher layer: " + ", ".join(f"{a} -> {b}" for a, b in sorted(upward))


def test_no_two_modules_import_each_other():
    graph = imports()
    cycles = sorted({tuple(sorted((a, b))) for a, targets in graph.items() for b in targets if a in graph.get(b, ())})
    assert not cycles, f"import cycles: {cycles}"
