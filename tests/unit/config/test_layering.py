"""proxy.config is the bottom layer: its modules import nothing else of the proxy."""

from __future__ import annotations

import ast
from pathlib import Path

import proxy.config

CONFIG_DIR = Path(proxy.config.__file__).parent


def _proxy_imports(path: Path) -> list[str]:
    """Modules of the proxy outside proxy.config that ``path`` imports."""
    outside = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level > 1 or (node.level == 0 and (node.module or "").startswith("proxy")
                                  and not (node.module or "").startswith("proxy.config")):
                outside.append("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            outside += [alias.name for alias in node.names
                        if alias.name.startswith("proxy") and
                        not alias.name.startswith("proxy.config")]
    return outside


def test_config_modules_import_nothing_above_them():
    modules = sorted(CONFIG_DIR.glob("*.py"))
    assert len(modules) >= 5  # schema, load, checks, secret, store_url, ...
    found = {path.name: _proxy_imports(path) for path in modules}
    assert found == {path.name: [] for path in modules}


def test_the_check_sees_an_upward_import(tmp_path):
    upward = tmp_path / "upward.py"
    upward.write_text("from ..store import open_store\nimport proxy.web.app\n")
    assert _proxy_imports(upward) == ["..store", "proxy.web.app"]
