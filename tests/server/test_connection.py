"""cheroot's internals that jobkit overrides are still there, and cheroot is pinned.

`jobkit.server.connection` lists in its docstring every cheroot name it
touches; a cheroot release that renames or drops one must fail here, loudly,
rather than in a subtle way at run time.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

from jobkit.server import connection

ROOT = Path(__file__).resolve().parents[2]
#: A docstring bullet: ``* ``cheroot.module.Name``: ... its ``a``, ``b`` ...``.
BULLET = re.compile(r"^\* ``(cheroot(?:\.\w+)+)``(.*?)(?=^\* |\Z)", re.M | re.S)


def listed() -> dict[str, list[str]]:
    """cheroot object -> the names of it the docstring says we use."""
    doc = connection.__doc__ or ""
    names: dict[str, list[str]] = {}
    for match in BULLET.finditer(doc):
        owner, text = match.group(1), match.group(2)
        names[owner] = [name for name in re.findall(r"``(\w+)``", text)]
        # A bullet may name more cheroot objects (``cheroot.errors.socket_...``).
        for extra in re.findall(r"``(cheroot(?:\.\w+)+)``", text):
            names.setdefault(extra, [])
    return names


def resolve(dotted: str) -> Any:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            value: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for part in parts[cut:]:
            value = getattr(value, part)
        return value
    raise ImportError(dotted)


def uses(owner: Any, name: str) -> bool:
    """``owner`` has ``name``, as an attribute or one its code sets or calls."""
    if hasattr(owner, name):
        return True
    classes = [c for c in getattr(owner, "__mro__", (owner,))
               if getattr(c, "__module__", "").startswith("cheroot")]
    return any(re.search(rf"\.{name}\b", inspect.getsource(c)) for c in classes)


def test_the_docstring_lists_cheroot_names() -> None:
    names = listed()
    assert "cheroot.server.HTTPConnection" in names and "cheroot.wsgi.Server" in names
    assert sum(map(len, names.values())) > 20


@pytest.mark.parametrize(("owner", "names"), sorted(listed().items()))
def test_every_listed_cheroot_name_exists(owner: str, names: list[str]) -> None:
    target = resolve(owner)  # AttributeError / ImportError: renamed or gone
    missing = [name for name in names if not uses(target, name)]
    assert not missing, f"cheroot {version('cheroot')}: {owner} has no {missing}"


def test_every_cheroot_name_the_module_uses_is_listed() -> None:
    source = Path(connection.__file__).read_text()
    aliases = {"cheroot_errors": "cheroot.errors", "cheroot_server": "cheroot.server",
               "wsgi": "cheroot.wsgi"}
    used: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in aliases):
            used.add(f"{aliases[node.value.id]}.{node.attr}")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cheroot."):
            used.update(f"{node.module}.{alias.name}" for alias in node.names)
    assert used, "the checker found no cheroot names at all"
    assert used <= set(listed()), sorted(used - set(listed()))


def test_cheroot_is_pinned_to_the_major_version_it_was_written_against() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    pin = re.search(r'"cheroot>=(\d+)[^"]*,<(\d+)"', text)
    assert pin, "pyproject.toml must pin cheroot to one major version"
    low, high = int(pin.group(1)), int(pin.group(2))
    assert high == low + 1
    assert int(version("cheroot").split(".")[0]) == low
