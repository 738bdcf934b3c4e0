"""The package's layering, checked from the source: each subpackage imports only the
layers below it (cluster, workers and serve are siblings that never import each other),
no module reads another module's _private names, and no module grows past ~600 lines."""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "python" / "pyclusterc"

# What each subpackage may import (besides itself). The root modules (__init__,
# __main__, the pool shim) only re-export and may import anything.
ALLOWED = {
    "_lowlevel": {"_native"},
    "shared": {"_native", "_lowlevel"},
    "ipc": {"_native", "_lowlevel", "shared"},
    "cluster": {"_native", "_lowlevel", "shared", "ipc"},
    "workers": {"_native", "_lowlevel", "shared", "ipc"},
    "serve": {"_native", "_lowlevel", "shared", "ipc"},
    "manager": {"_native", "_lowlevel", "shared", "ipc", "cluster", "serve", "workers"},
    "cli": {"_native", "_lowlevel", "shared", "ipc", "cluster", "serve", "workers", "manager"},
}
MAX_LINES = 650


def modules():
    return sorted(p for p in PACKAGE.rglob("*.py"))


def module_name(path):
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_package(path):
    return path.name == "__init__.py"


def imported(path, text=None):
    """(line, absolute module imported, names imported from it or None) per import."""
    tree = ast.parse(path.read_text() if text is None else text, str(path))
    here = module_name(path).split(".")
    base = here if is_package(path) else here[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, None, ast.Import(names=[alias])
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[:len(base) - (node.level - 1)]
                target = ".".join(anchor + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield node.lineno, target, [a.name for a in node.names], node


def subpackage(dotted):
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "pyclusterc" else None


def test_the_layout_has_its_layers():
    found = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert set(ALLOWED) <= found


def layer_violations(path, text=None):
    source = subpackage(module_name(path))
    if source is None or source not in ALLOWED or path.parent == PACKAGE:
        return []  # a root module
    found = []
    for line, target, names, _ in imported(path, text):
        if not target.startswith("pyclusterc"):
            continue
        layer = subpackage(target)
        candidates = [layer] if layer else [n.split(".")[0] for n in names or ()]
        for imported_layer in candidates:
            if imported_layer in (None, source) or imported_layer.startswith("__"):
                continue
            if imported_layer not in ALLOWED[source]:
                found.append(f"{path.relative_to(PACKAGE)}:{line} imports pyclusterc.{imported_layer}; "
                             f"{source}/ may import only {sorted(ALLOWED[source])}")
    return found


def private_reads(path, text=None):
    text = path.read_text() if text is None else text
    tree = ast.parse(text, str(path))
    own = module_name(path)
    module_aliases = {}
    found = []
    for line, target, names, node in imported(path, text):
        if not target.startswith("pyclusterc"):
            continue
        if names is None:  # import pyclusterc.x[ as y]
            for alias in node.names:
                module_aliases[alias.asname or alias.name.split(".")[0]] = alias.name
            continue
        for name in names:
            if (name.startswith("_") and not name.startswith("__") and name != "_native"
                    and not (target + "." + name).startswith(own)):
                found.append(f"{path.relative_to(PACKAGE)}:{line} imports the private name {name} from {target}")
        for alias in node.names:
            module_aliases[alias.asname or alias.name] = target + "." + alias.name
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in module_aliases and node.attr.startswith("_")
                and not node.attr.startswith("__")):
            found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} reads {node.value.id}.{node.attr}, "
                         "a private name of another module")
    return found


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_down_only(path):
    assert layer_violations(path) == []


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_reads_another_modules_private_names(path):
    assert private_reads(path) == []


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_is_too_long(path):
    lines = path.read_text().count("\n")
    assert lines <= MAX_LINES, f"{path.relative_to(PACKAGE)} has {lines} lines; split it (at most {MAX_LINES})"


def test_the_checks_catch_what_they_look_for():
    """Fed a module that breaks each rule, each check reports it."""
    fake = PACKAGE / "serve" / "fake.py"
    text = ("from .. import cluster\nfrom ..manager.process import ProcessManager\n"
            "from ..shared.buffer import _HEADER_SIZE\nimport pyclusterc.cluster as c\n"
            "c._state\ncluster._state\n")
    layers = layer_violations(fake, text)
    assert len(layers) == 3 and "pyclusterc.cluster" in layers[0] and "pyclusterc.manager" in layers[1]
    private = private_reads(fake, text)
    assert any("_HEADER_SIZE" in v for v in private)
    assert any("c._state" in v for v in private) and any("cluster._state" in v for v in private)
    assert layer_violations(PACKAGE / "manager" / "fake.py", "from ..cluster import listen\n") == []
