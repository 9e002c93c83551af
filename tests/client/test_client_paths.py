"""The client's default address agrees with the server's, and how it reads an address."""

from __future__ import annotations

import pytest

from jobkit.client import paths


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
