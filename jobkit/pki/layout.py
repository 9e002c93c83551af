"""Where jobkit's PKI keeps its files: names, folders, modes, and the PKI's errors.

Standard library only, so that the client and the CLI find their certificates
without loading ``cryptography`` (`jobkit.pki.issue` makes the certificates).
``pathlib`` is imported only inside the functions that return a ``Path``: a
client command such as ``jobkit status`` starts without it.

The layout follows Docker's convention of ``ca.pem``, ``cert.pem`` and
``key.pem`` in each folder, so that a client folder is all a client needs::

    DIR/
    ├── ca/{cert.pem,key.pem}               the root CA (keep key.pem offline if you can)
    ├── ca/crl.pem                          the CA's revocation list
    ├── ca/issued.json                      the record of every certificate issued
    ├── server/{ca.pem,cert.pem,key.pem}    serverAuth, SANs for the hosts
    ├── server/crl.pem                      a copy of ca/crl.pem, for the server
    └── clients/NAME/{ca.pem,cert.pem,key.pem}  clientAuth, CN = NAME

Private keys and the record are 0600, certificates and CRLs 0644 and the
folders jobkit creates 0700.
The default PKI (the one ``jobkit serve`` makes on first start) is
``$XDG_DATA_HOME/jobkit/pki``, else ``~/.local/share/jobkit/pki``, and the
default client folder is its ``clients/USER``.

Errors::

    JobkitError
    └── PkiError                  anything the PKI refuses or cannot do
        ├── InvalidName (also ValueError)   a bad client name or host
        └── AlreadyExists                   would overwrite a file (no force)
"""

from __future__ import annotations

import errno
import os
import re
from typing import TYPE_CHECKING

from jobkit.core.errors import JobkitError

if TYPE_CHECKING:
    from pathlib import Path

__all__ = [
    "BUNDLE_FILES",
    "CA_FILE",
    "CA_FILES",
    "CA_FOLDER",
    "CERT_FILE",
    "CERT_MODE",
    "CLIENTS_FOLDER",
    "CN_MAX_LENGTH",
    "CRL_FILE",
    "CRL_MODE",
    "DIR_MODE",
    "ISSUED_FILE",
    "ISSUED_MODE",
    "KEY_FILE",
    "KEY_MODE",
    "SERVER_FOLDER",
    "AlreadyExists",
    "InvalidName",
    "PkiError",
    "ca_dir",
    "client_dir",
    "client_files",
    "client_folder",
    "default_client_dir",
    "default_client_name",
    "default_pki_dir",
    "server_dir",
    "validate_client_name",
]

#: The CA certificate to trust, in a server or client folder.
CA_FILE = "ca.pem"
#: The folder's own certificate.
CERT_FILE = "cert.pem"
#: The folder's own private key.
KEY_FILE = "key.pem"
#: What a server or client folder holds: all a peer needs for mutual TLS.
BUNDLE_FILES = (CA_FILE, CERT_FILE, KEY_FILE)
#: What the CA folder holds: the CA's certificate and its key.
CA_FILES = (CERT_FILE, KEY_FILE)
#: The certificate revocation list, in the CA folder and (a copy) in the server's.
CRL_FILE = "crl.pem"
#: The record of issued certificates, in the CA folder.
ISSUED_FILE = "issued.json"

#: The subfolders of a PKI folder.
CA_FOLDER = "ca"
SERVER_FOLDER = "server"
CLIENTS_FOLDER = "clients"

#: Private keys: the owner only.
KEY_MODE = 0o600
#: Certificates are public; the 0700 folder keeps others out anyway.
CERT_MODE = 0o644
#: A CRL is public by design (it is made to be published).
CRL_MODE = 0o644
#: The record of issued certificates: the CA's own bookkeeping.
ISSUED_MODE = 0o600
#: Every folder the PKI creates.
DIR_MODE = 0o700

#: X.509 (RFC 5280 ub-common-name) caps a CN at 64 characters.
CN_MAX_LENGTH = 64

# A client name becomes a folder name and a certificate CN: keep it boring.
_CLIENT_NAME = re.compile(r"[A-Za-z0-9_@-][A-Za-z0-9._@-]{0,63}")


class PkiError(JobkitError):
    """The PKI refused a request or could not complete it; the message says why."""


class InvalidName(PkiError, ValueError):
    """A client name or host name that jobkit will not put in a certificate."""


class AlreadyExists(PkiError):
    """Making the certificates would overwrite an existing file (and force was not given)."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"{path} already exists (use --force to replace it)")
        self.path = path


def validate_client_name(name: str) -> str:
    """Return ``name`` if it is a safe client name, else raise `InvalidName`.

    A client name is both a folder name under ``clients/`` and the certificate's
    CN, so it is restricted to 1-64 ASCII letters, digits, ``-``, ``_``, ``.`` and
    ``@``, not starting with ``.`` (which also rules out ``.`` and ``..``).
    """
    if not isinstance(name, str):
        raise InvalidName(f"client name must be a string, not {type(name).__name__}")
    if not name:
        raise InvalidName("client name must not be empty")
    if _CLIENT_NAME.fullmatch(name) is None:
        if name.startswith("."):
            why = "must not start with '.'"
        elif len(name) > CN_MAX_LENGTH:
            why = f"is longer than {CN_MAX_LENGTH} characters"
        else:
            why = "may only contain ASCII letters, digits, '-', '_', '.' and '@'"
        raise InvalidName(f"invalid client name {name!r}: it {why}")
    return name


# -- folders inside a PKI folder --------------------------------------------------------


def _path(*parts: str | os.PathLike[str]) -> Path:
    from pathlib import Path

    return Path(*parts)


def client_dir(root: str | os.PathLike[str], name: str) -> Path:
    """``root/clients/NAME``, the folder of client ``name``; raises `InvalidName`."""
    return _path(root, CLIENTS_FOLDER, validate_client_name(name))


def ca_dir(directory: str | os.PathLike[str]) -> Path:
    """The folder of the CA's ``cert.pem`` and ``key.pem``: ``DIR/ca``, or ``DIR`` itself.

    ``directory`` may be a PKI folder or its ``ca/`` subfolder. Nothing is
    checked beyond telling the two apart: loading the CA reports what is missing.
    """
    root = _path(directory)
    folder = root / CA_FOLDER
    if not folder.is_dir() and all((root / name).is_file() for name in CA_FILES):
        return root
    return folder


def server_dir(certs: str | os.PathLike[str]) -> Path:
    """Return the folder holding the server's ``ca.pem``, ``cert.pem`` and ``key.pem``.

    ``certs`` is either a folder made by ``jobkit certs init`` or its ``server/``
    subfolder. Raises `PkiError` naming what is missing otherwise.
    """
    path = _path(certs)
    if not path.exists():
        raise PkiError(f"certificate folder {path} does not exist")
    if not path.is_dir():
        raise PkiError(f"{path} is not a folder")
    server = path / SERVER_FOLDER
    candidates = [server, path] if server.is_dir() else [path]
    for folder in candidates:
        if all((folder / name).is_file() for name in BUNDLE_FILES):
            return folder
    folder = candidates[0]
    missing = [name for name in BUNDLE_FILES if not (folder / name).is_file()]
    raise PkiError(
        f"{folder} is not a server certificate folder: missing {', '.join(missing)} "
        f"(expected a folder made by 'jobkit certs init', or its server/ subfolder)"
    )


def client_files(folder: str | os.PathLike[str]) -> tuple[str, str, str]:
    """The paths of a client folder's ``ca.pem``, ``cert.pem`` and ``key.pem``, checked.

    Raises ``FileNotFoundError`` / ``NotADirectoryError`` / ``PermissionError``
    naming the missing or unreadable folder or file (the client's errors are
    the built-in ones for files, so that a caller can tell them from TLS errors).
    """
    path = os.fspath(folder)
    if not os.path.exists(path):
        raise FileNotFoundError(
            errno.ENOENT,
            f"certificate folder {path} does not exist (make one with 'jobkit certs init', "
            f"or start 'jobkit serve' once to get the default one)",
            path,
        )
    if not os.path.isdir(path):
        raise NotADirectoryError(errno.ENOTDIR, f"{path} is not a certificate folder", path)
    ca, cert, key = (os.path.join(path, name) for name in BUNDLE_FILES)
    for file in (ca, cert, key):
        if not os.path.isfile(file):
            raise FileNotFoundError(
                errno.ENOENT,
                f"{file} is missing (a client certificate folder holds "
                f"{', '.join(BUNDLE_FILES)})",
                file,
            )
        if not os.access(file, os.R_OK):
            raise PermissionError(errno.EACCES, f"{file} is not readable", file)
    return ca, cert, key


# -- the default PKI --------------------------------------------------------------------
# Worked out with os.path and plain strings: the client calls these on every
# command that is given no --certs.


def _default_pki_folder() -> str:
    data_home = os.environ.get("XDG_DATA_HOME", "")
    if data_home and os.path.isabs(data_home):  # the XDG spec: ignore a relative one
        return os.path.join(data_home, "jobkit", "pki")
    home = os.path.expanduser("~")
    if home == "~":
        raise PkiError("cannot find a home folder for the default PKI")
    return os.path.join(home, ".local", "share", "jobkit", "pki")


def default_client_name() -> str:
    """The name of the default client: the current user's login name.

    Raises `PkiError` when there is no user name to go by, or when it cannot be
    a client name (see `validate_client_name`).
    """
    import getpass

    try:
        user = getpass.getuser()
    except Exception as error:  # getpass raises KeyError or OSError, by version
        raise PkiError(f"cannot tell the current user's name: {error}") from None
    try:
        return validate_client_name(user)
    except InvalidName as error:
        raise PkiError(
            f"the user name {user!r} cannot be a client name ({error}); "
            f"make certificates with 'jobkit certs init' instead"
        ) from None


def _default_client_folder() -> str:
    return os.path.join(_default_pki_folder(), CLIENTS_FOLDER, default_client_name())


def default_pki_dir() -> Path:
    """``$XDG_DATA_HOME/jobkit/pki``, else ``~/.local/share/jobkit/pki``.

    A relative ``XDG_DATA_HOME`` is ignored, as the XDG spec asks. Raises
    `PkiError` when there is no home folder to go by.
    """
    return _path(_default_pki_folder())


def default_client_dir() -> Path:
    """The client folder ``jobkit serve`` makes for the current user on first start.

    ``default_pki_dir()/clients/USER``, where USER is the login name. Raises
    `PkiError` when there is no home folder, no user name, or a user name that
    cannot be a client name.
    """
    return _path(_default_client_folder())


def client_folder(certs: str | os.PathLike[str] | None = None) -> str:
    """The client certificate folder to use, as a string.

    ``certs`` with a leading ``~`` expanded, or the default client folder (see
    `default_client_dir`) when ``certs`` is None. Raises `PkiError` as
    `default_client_dir` does.
    """
    if certs is None:
        return _default_client_folder()
    return os.path.expanduser(certs)
