"""The package's shape, read from its source: layers, no import circle, small modules.

The README and ``proxy/__init__.py`` promise a layered package whose imports only go down:
web -> services -> core -> upstream, store, telemetry -> config, errors. Domain code never imports
``aiohttp.web`` nor reads an application: web/app.py hands every handler its services.
These tests read every module with :mod:`ast`, so a broken promise fails here, with the
offending import named, before a reader trips over it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "proxy"

# What each layer may import from the proxy itself (besides its own package).
MAY_IMPORT = {
    "errors": set(),
    "config": {"errors"},
    "telemetry": {"config", "errors"},
    "store": {"config", "errors"},
    "upstream": {"telemetry", "config", "errors"},
    "core": {"upstream", "store", "telemetry", "config", "errors"},
    # The composition root: builds every service from the configuration, once.
    "services": {"core", "upstream", "store", "telemetry", "config", "errors"},
    "web": {"services", "core", "upstream", "store", "telemetry", "config", "errors"},
    # The fake Twitch stands alone: it shares no code with what it fakes.
    "mock_twitch": set(),
}
# The entry points sit on top and may import anything.
ENTRY_POINTS = {"__init__", "__main__", "cli", "server", "admin"}
# Layers whose code must not know about aiohttp's server side.
DOMAIN = {"errors", "config", "telemetry", "store", "upstream", "core"}
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        yield module_name(path), path


def layer_of(module: str) -> str:
    """``proxy.core.refresh`` -> ``core``; ``proxy.cli`` -> ``cli`` (an entry point)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports_of(module: str, path: Path) -> Iterator[tuple[str, int]]:
    """Every proxy module that ``module`` imports (TYPE_CHECKING imports included)."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("proxy"):
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("proxy"):
                continue
            for alias in node.names:
                # `from . import pages` imports a module; `from .x import Name` imports x.
                candidate = f"{target}.{alias.name}"
                known = (PACKAGE.parent / candidate.replace(".", "/")).with_suffix(".py")
                yield (candidate if known.exists() else target), node.lineno


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for module, path in modules():
        edges[module] = {target for target, _ in imports_of(module, path) if target != module}
    return edges


def test_imports_only_go_down_the_layers() -> None:
    wrong = []
    for module, path in modules():
        layer = layer_of(module)
        if layer in ENTRY_POINTS:
            continue
        assert layer in MAY_IMPORT, f"{module} is in no known layer; add it to MAY_IMPORT"
        for target, line in imports_of(module, path):
            if target == "proxy":
                continue  # the package itself holds only __version__
            target_layer = layer_of(target)
            if target_layer != layer and target_layer not in MAY_IMPORT[layer]:
                wrong.append(f"{path.relative_to(REPO)}:{line} ({layer}) imports {target}")
    assert wrong == []


def test_no_import_circle() -> None:
    edges = graph()
    circles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                circles.append(path[path.index(target):] + [target])
            elif target in edges and state.get(target) is None:
                visit(target)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if state.get(node) is None:
            visit(node)
    assert circles == []


DOMAIN_MODULES = [(module, path) for module, path in modules() if layer_of(module) in DOMAIN]


@pytest.mark.parametrize("module, path", DOMAIN_MODULES, ids=[m for m, _ in DOMAIN_MODULES])
def test_domain_code_never_touches_the_web_server(module: str, path: Path) -> None:
    source = path.read_text("utf-8")
    tree = ast.parse(source)
    web_imports = [
        node.lineno for node in ast.walk(tree)
        if (isinstance(node, ast.ImportFrom) and node.module in ("aiohttp", "aiohttp.web")
            and (node.module == "aiohttp.web" or any(a.name == "web" for a in node.names)))
        or (isinstance(node, ast.Import) and any(a.name == "aiohttp.web" for a in node.names))
    ]
    assert web_imports == [], f"{module} imports aiohttp.web"
    assert "request.app" not in source and ".app[" not in source


def test_no_module_over_400_lines() -> None:
    big = {}
    for root in ("proxy", "tests", "bench"):
        for path in (REPO / root).rglob("*.py"):
            lines = len(path.read_text("utf-8").splitlines())
            if lines > MAX_LINES:
                big[str(path.relative_to(REPO))] = lines
    assert big == {}


def test_the_scan_sees_a_wrong_import(tmp_path: Path) -> None:
    """The layer check is not vacuous: an upward import in a core module is found."""
    source = "from ..web.keys import config_key\nfrom . import refresh\n"
    module = tmp_path / "probe.py"
    module.write_text(source)
    found = list(imports_of("proxy.core.probe", module))
    assert ("proxy.web.keys", 1) in found and ("proxy.core.refresh", 2) in found
