"""Which package may import what: the map of docs/architecture.md, enforced.

Every import statement of every module counts, wherever it is (at the top,
inside a function, under ``TYPE_CHECKING``): an import deferred for start-up
time is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support.imports import ALL, imports, stdlib, third_party, within

#: Third-party packages that only the server, the CLI and the PKI's issuing part use.
WEB_AND_TERMINAL = ("bottle", "cheroot", "rich", "click")


def test_the_packages_are_all_seen() -> None:
    assert {"jobkit.wire", "jobkit.core.pool", "jobkit.client.remote",
            "jobkit.server.app", "jobkit.cli.main"} <= set(ALL)


@pytest.mark.parametrize("name", [n for n in ALL if within(n, "jobkit.core", "jobkit.backends")])
def test_the_core_knows_nothing_of_http_tls_or_terminals(name: str) -> None:
    found = imports(name, ALL[name])
    assert not {m for m in found if within(m, "jobkit.server", "jobkit.client", "jobkit.cli",
                                            "jobkit.pki", "jobkit.wire")}
    assert not third_party(found) & {*WEB_AND_TERMINAL, "cryptography"}


@pytest.mark.parametrize("name", [n for n in ALL if within(n, "jobkit.executors")])
def test_executors_use_the_core_and_ray_only_in_one_place(name: str) -> None:
    found = imports(name, ALL[name])
    assert not {m for m in found if within(m, "jobkit.server", "jobkit.client", "jobkit.cli",
                                            "jobkit.pki", "jobkit.wire")}
    assert not third_party(found) & {*WEB_AND_TERMINAL, "cryptography"}
    # Ray (and aiohttp, its dependency) only where its use is listed, inside functions.
    if name != "jobkit.executors.ray_client":
        assert not third_party(found) & {"ray", "aiohttp"}
    tree = ast.parse(ALL[name].read_text())
    top = {alias.name if isinstance(node, ast.Import) else node.module
           for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))
           for alias in node.names}
    assert not {m for m in top if m and within(m, "ray", "aiohttp")}


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
