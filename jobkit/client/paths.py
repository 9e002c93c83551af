"""Where the client connects by default, and how it reads a server address.

This module must stay tiny: every client command imports it, and the start-up
time of ``jobkit status`` is a feature.  The default certificate folder is
`jobkit.pki.layout`'s.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_SERVER",
    "parse_server",
]

#: The port ``jobkit serve`` listens on by default.
DEFAULT_PORT = 8443
#: The address ``jobkit serve`` listens on by default.
DEFAULT_SERVER = f"127.0.0.1:{DEFAULT_PORT}"


def parse_server(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPv6]:PORT``, ``HOST`` or ``[IPv6]`` -> ``(host, port)``.

    The port defaults to `DEFAULT_PORT`.  Raises ``ValueError`` with a message
    for people.
    """
    if not isinstance(text, str):
        raise TypeError(f"server must be a string like 'host:8443', not {type(text).__name__}")
    value = text.strip()
    if value.startswith("["):
        host, bracket, rest = value[1:].partition("]")
        if not bracket or not host:
            raise ValueError(f"bad server address {text!r}: expected [IPv6]:PORT")
        if rest and not rest.startswith(":"):
            raise ValueError(f"bad server address {text!r}: expected [IPv6]:PORT")
        port_text = rest[1:] if rest else ""
    elif value.count(":") > 1:
        raise ValueError(f"bad server address {text!r}: write an IPv6 address in brackets, "
                         f"like [::1]:{DEFAULT_PORT}")
    else:
        host, _, port_text = value.partition(":")
        if not host:
            raise ValueError(f"bad server address {text!r}: expected HOST:PORT")
    if not port_text and ":" not in value.rpartition("]")[2]:
        return host, DEFAULT_PORT
    if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad server address {text!r}: the port must be a number "
                         f"from 1 to 65535")
    return host, int(port_text)
