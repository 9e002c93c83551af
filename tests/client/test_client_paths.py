"""The client's defaults agree with the server's, without importing the server."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobkit.client import paths
from jobkit.server import pki


@pytest.mark.parametrize("xdg", [None, "/srv/data", "relative/data", ""],
                         ids=["unset", "absolute", "relative", "empty"])
def test_default_folders_agree_with_the_pki(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                             xdg: str | None) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    if xdg is None:
        monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_DATA_HOME", xdg)
    assert paths.default_pki_dir() == pki.default_pki_dir()
    assert paths.default_client_dir() == pki.default_client_dir()


def test_default_folder_follows_xdg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", "/srv/data")
    monkeypatch.setenv("USER", "carol")
    monkeypatch.setenv("LOGNAME", "carol")
    assert paths.default_client_dir() == Path("/srv/data/jobkit/pki/clients/carol")


def test_default_server_is_what_serve_listens_on() -> None:
    from jobkit.server.serve import DEFAULT_HOST, DEFAULT_PORT

    assert f"{DEFAULT_HOST}:{DEFAULT_PORT}" == paths.DEFAULT_SERVER


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:8443", ("127.0.0.1", 8443)),
    ("build-box:9000", ("build-box", 9000)),
    ("build-box", ("build-box", 8443)),
    ("[::1]:8443", ("::1", 8443)),
    ("[::1]", ("::1", 8443)),
    (" localhost:1 ", ("localhost", 1)),
])
def test_parse_server(text: str, expected: tuple[str, int]) -> None:
    assert paths.parse_server(text) == expected


@pytest.mark.parametrize("text", [
    "", ":8443", "host:", "host:port", "host:0", "host:65536", "::1:8443", "[::1", "[]:1",
    "[::1]x", "[::1]:", "host:\uff18\uff14\uff14\uff13"  # full-width digits,
])
def test_parse_server_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="bad server address"):
        paths.parse_server(text)
