"""Where the client looks by default: the server address and the certificate folder.

This module must stay tiny: every client command imports it, and the start-up
time of ``jobkit status`` is a feature.  It computes the same folder as
``jobkit.server.pki.default_client_dir`` (a test checks they agree) without
importing the PKI code, which needs ``cryptography``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_SERVER",
    "default_client_dir",
    "default_client_folder",
    "default_pki_dir",
    "default_pki_folder",
    "parse_server",
]

#: The port ``jobkit serve`` listens on by default.
DEFAULT_PORT = 8443
#: The address ``jobkit serve`` listens on by default.
DEFAULT_SERVER = f"127.0.0.1:{DEFAULT_PORT}"


def default_pki_dir() -> Path:
    """``$XDG_DATA_HOME/jobkit/pki``, else ``~/.local/share/jobkit/pki``.

    A relative ``XDG_DATA_HOME`` is ignored, as the XDG spec asks (and as the
    server does).  Raises ``RuntimeError`` when there is no home folder.
    """
    from pathlib import Path

    return Path(default_pki_folder())


def default_client_dir() -> Path:
    """The client folder ``jobkit serve`` makes for the current user on first start.

    ``default_pki_dir()/clients/USER``, where USER is the login name.  Raises
    ``RuntimeError`` when there is no home folder or no user name to go by.
    """
    from pathlib import Path

    return Path(default_client_folder())


# The same as plain strings: the CLI's start-up does without pathlib.

def default_pki_folder() -> str:
    """`default_pki_dir` as a string."""
    data_home = os.environ.get("XDG_DATA_HOME", "")
    if data_home and os.path.isabs(data_home):
        return os.path.join(data_home, "jobkit", "pki")
    home = os.path.expanduser("~")
    if home == "~":
        raise RuntimeError("cannot find a home folder for the default certificates")
    return os.path.join(home, ".local", "share", "jobkit", "pki")


def default_client_folder() -> str:
    """`default_client_dir` as a string."""
    import getpass

    try:
        user = getpass.getuser()
    except Exception as error:  # KeyError or OSError, depending on the Python version
        raise RuntimeError(f"cannot tell the current user's name: {error}") from None
    return os.path.join(default_pki_folder(), "clients", user)


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
