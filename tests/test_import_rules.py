"""Which package may import what: the map of docs/architecture.md, enforced.

Every import statement of every module counts, wherever it is (at the top,
inside a function, under ``TYPE_CHECKING``): an import deferred for start-up
time is still a dependency.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "jobkit"

#: Third-party packages that only the server, the CLI and the PKI's issuing part use.
WEB_AND_TERMINAL = ("bottle", "cheroot", "rich", "click")


def modules() -> Iterator[tuple[str, Path]]:
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
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def stdlib(module: str) -> bool:
    return module.partition(".")[0] in sys.stdlib_module_names


def third_party(found: set[str]) -> set[str]:
    return {m.partition(".")[0] for m in found if not stdlib(m) and not within(m, "jobkit")}


ALL = dict(modules())


def test_the_packages_are_all_seen() -> None:
    assert {"jobkit.wire", "jobkit.core.pool", "jobkit.client.remote",
            "jobkit.server.app", "jobkit.cli.main"} <= set(ALL)


@pytest.mark.parametrize("name", [n for n in ALL if within(n, "jobkit.core", "jobkit.backends")])
def test_the_core_knows_nothing_of_http_tls_or_terminals(name: str) -> None:
    found = imports(name, ALL[name])
    assert not {m for m in found if within(m, "jobkit.server", "jobkit.client", "jobkit.cli",
                                            "jobkit.pki", "jobkit.wire")}
    assert not third_party(found) & {*WEB_AND_TERMINAL, "cryptography"}


@pytest.mark.parametrize("name", [n for n in ALL if within(n, "jobkit.client")])
def test_the_client_imports_no_server(name: str) -> None:
    found = imports(name, ALL[name])
    assert not {m for m in found if within(m, "jobkit.server", "jobkit.cli", "jobkit.pki.issue")}
    assert not third_party(found) & {*WEB_AND_TERMINAL, "cryptography"}


@pytest.mark.parametrize("name", [n for n in ALL if within(n, "jobkit.server")])
def test_the_server_imports_no_client_and_no_cli(name: str) -> None:
    found = imports(name, ALL[name])
    assert not {m for m in found if within(m, "jobkit.client", "jobkit.cli")}


def test_the_wire_imports_only_the_standard_library() -> None:
    found = imports("jobkit.wire", ALL["jobkit.wire"])
    assert found and all(stdlib(m) for m in found), sorted(m for m in found if not stdlib(m))


#: The PKI's modules that make and sign certificates and CRLs: only they use cryptography.
PKI_ISSUING = ("jobkit.pki.issue", "jobkit.pki.signing", "jobkit.pki.crl", "jobkit.pki.lifecycle")


@pytest.mark.parametrize("name", [n for n in ALL if within(n, "jobkit.pki")])
def test_the_pki_uses_cryptography_only_to_issue(name: str) -> None:
    found = imports(name, ALL[name])
    assert not {m for m in found if within(m, "jobkit.server", "jobkit.client", "jobkit.cli")}
    # The layout (names, folders, errors) is what the client needs: no cryptography.
    allowed = {"cryptography"} if name in PKI_ISSUING else set()
    assert third_party(found) <= allowed
    jobkit_imports = {m for m in found if within(m, "jobkit")}
    assert all(within(m, "jobkit.pki", "jobkit.core.errors") for m in jobkit_imports), (
        sorted(jobkit_imports))
    if name not in PKI_ISSUING:
        # The package itself may name the issuing part, but only import it lazily.
        tree = ast.parse(ALL[name].read_text())
        top = {alias.name if isinstance(node, ast.Import) else node.module
               for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))
               for alias in node.names}
        assert not {m for m in top if m and within(m, "jobkit.pki.issue", "cryptography")}


def test_a_rule_breaker_is_caught(tmp_path: Path) -> None:
    # The checker itself: it sees imports inside functions and relative ones.
    module = tmp_path / "jobkit" / "core" / "sneaky.py"
    module.parent.mkdir(parents=True)
    module.write_text("def f():\n    from ..server import app\n    import bottle\n")
    found = imports("jobkit.core.sneaky", module)
    assert "jobkit.server.app" in found and "bottle" in third_party(found)
