"""Which module imports what, read from jobkit's source (every import statement counts)."""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "jobkit"


def modules() -> Iterator[tuple[str, Path]]:
    """``(dotted name, path)`` of every module of the jobkit package."""
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def imports(name: str, path: Path) -> set[str]:
    """Every module ``name`` imports (absolute names; ``from a import b`` counts as ``a.b``)."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def within(module: str, *prefixes: str) -> bool:
    """True if ``module`` is one of ``prefixes`` or inside one."""
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def stdlib(module: str) -> bool:
    """True if ``module`` belongs to Python's standard library."""
    return module.partition(".")[0] in sys.stdlib_module_names


def third_party(found: set[str]) -> set[str]:
    """The top-level packages among ``found`` that are neither stdlib nor jobkit."""
    return {m.partition(".")[0] for m in found if not stdlib(m) and not within(m, "jobkit")}


#: Every module of the package, by dotted name.
ALL = dict(modules())
