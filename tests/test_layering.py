"""The packages import each other only downwards (docs/ARCHITECTURE.md, "Layering").

Every import statement of every product module counts, also one inside a function or under
``TYPE_CHECKING``: a lazy import is still a dependency, and hiding one was how ``detector``
and ``anomaly`` came to import each other. Command-line modules (each component's
``cli.py``, ``gateway/``, ``lab/``, ``mld/``) are the top layer and are the only ones that
may import ``config``, the whole-house settings.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Bottom to top. A package may import its own layer's packages only where listed in
# SAME_LAYER; otherwise only lower layers.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("base",),
    ("proto",),
    ("native",),
    ("crypto_transport", "xdp"),
    ("control",),
    ("sniffer",),
    ("detector",),
    ("firewall", "rag"),
    ("anomaly",),
    ("watch",),
    ("gateway", "lab"),
    ("config", "mld"),
)
# (importer, imported) pairs allowed within one layer.
SAME_LAYER: frozenset[tuple[str, str]] = frozenset(
    {("lab", "gateway"), ("mld", "config"), ("config", "mld")}
)
LEVEL = {package: level for level, packages in enumerate(LAYERS) for package in packages}
# Modules of the command-line layer, wherever they live: they may import anything.
COMMAND_LINE_NAMES = ("cli.py",)
COMMAND_LINE_PACKAGES = ("config", "mld", "gateway", "lab")


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name.split(".")[0]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def _violations() -> list[str]:
    bad: list[str] = []
    for package, level in LEVEL.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT)
            command_line = path.name in COMMAND_LINE_NAMES or package in COMMAND_LINE_PACKAGES
            for lineno, imported in _imports(path):
                if imported not in LEVEL or imported == package:
                    continue
                if command_line:
                    continue
                other = LEVEL[imported]
                if other < level or (package, imported) in SAME_LAYER:
                    continue
                bad.append(f"{rel}:{lineno} imports {imported} (layer {other} >= {level})")
    return bad


def test_every_package_is_in_a_layer() -> None:
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert packages - {"tests", "bench"} == set(LEVEL)


def test_packages_import_only_downwards() -> None:
    assert _violations() == []


def test_only_the_command_line_imports_the_whole_house_config() -> None:
    # Also covered by the test above; kept apart so a failure names the config leak itself.
    leaks = [
        str(path.relative_to(ROOT))
        for package in LEVEL
        if package not in COMMAND_LINE_PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if path.name not in COMMAND_LINE_NAMES
        and "config" in {imported for _, imported in _imports(path)}
    ]
    assert leaks == []
