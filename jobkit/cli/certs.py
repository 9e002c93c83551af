"""``jobkit certs``: make the certificates for mutual TLS with jobkit's own PKI.

Commands::

    jobkit certs init DIR [--host NAME]... [--client NAME]... [--force]
    jobkit certs client DIR NAME [--force]

Errors and exit codes (the convention of every ``certs`` command): an expected
failure is reported as a single line on stderr, ``jobkit: error: <message>``,
never a traceback, and the exit code says whose fault it was:

* 2: the command line is wrong (a bad client name or host; click's own usage
  errors, such as a missing argument, also exit 2);
* 1: anything else (a file exists and ``--force`` was not given, the CA cannot
  be read, the file system refused a write).

Warnings are single lines on stderr starting ``jobkit: warning: ``. What was
made is reported on stdout.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from jobkit import pki
from jobkit.cli.errors import EXIT_FAILURE, EXIT_USAGE, CliError, OneLineGroup

__all__ = ["certs"]

F = TypeVar("F", bound=Callable[..., Any])


def _translate_errors(function: F) -> F:
    """Turn PKI and OS errors raised by ``function`` into `CliError` (one place)."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except pki.InvalidName as error:
            raise CliError(str(error), EXIT_USAGE) from None
        except pki.PkiError as error:
            raise CliError(str(error), EXIT_FAILURE) from None
        except OSError as error:
            where = f": {error.filename}" if error.filename else ""
            raise CliError(f"{error.strerror or error}{where}", EXIT_FAILURE) from None

    return wrapper  # type: ignore[return-value]


def _warn(message: str) -> None:
    click.echo(f"jobkit: warning: {message}", err=True)


def _client_folders(root: Path) -> set[str]:
    try:
        return {entry.name for entry in (root / "clients").iterdir() if entry.is_dir()}
    except OSError:
        return set()


def _shown(path: Path) -> str:
    # Absolute paths, so the printed folder can be pasted anywhere.
    return str(path.absolute())


@click.group(cls=OneLineGroup, context_settings={"help_option_names": ["-h", "--help"]})
def certs() -> None:
    """Make the CA, server and client certificates for mutual TLS.

    Keys are ECDSA P-256, signatures SHA-256. Private keys are written 0600 and
    folders 0700; nothing existing is overwritten without --force.
    """


@certs.command("init")
@click.argument("directory", metavar="DIR")
@click.option(
    "--host",
    "hosts",
    multiple=True,
    metavar="NAME",
    help="A DNS name or IP address the server is reached by (repeatable; "
    f"default: {', '.join(pki.DEFAULT_HOSTS)}).",
)
@click.option(
    "--client",
    "clients",
    multiple=True,
    metavar="NAME",
    help="Issue a client certificate with this CN (repeatable).",
)
@click.option("--force", is_flag=True, help="Replace existing files (and the CA!).")
@_translate_errors
def init(directory: str, hosts: Sequence[str], clients: Sequence[str], force: bool) -> None:
    """Make a new CA in DIR, a server certificate and client certificates.

    \b
    DIR/ca/{cert,key}.pem                  the CA: keep key.pem private
    DIR/server/{ca,cert,key}.pem           for 'jobkit serve --certs DIR'
    DIR/clients/NAME/{ca,cert,key}.pem     all a client needs
    """
    root = Path(directory)
    hosts = tuple(hosts) or pki.DEFAULT_HOSTS
    before = _client_folders(root) if force else set()
    pki.init_pki(root, hosts, clients, force=force)
    click.echo(f"Made a new certificate authority in {_shown(root / 'ca')}")
    click.echo("  (ca/key.pem signs every certificate: keep it private, offline if you can)")
    click.echo(f"Made the server certificate in {_shown(root / 'server')}")
    click.echo(f"  valid for: {', '.join(hosts)}")
    for name in dict.fromkeys(clients):
        click.echo(f"Made the client certificate {name!r} in {_shown(root / 'clients' / name)}")
    click.echo(f"Start a server with: jobkit serve --certs {_shown(root)}")
    for name in sorted(before - set(clients)):
        _warn(
            f"{_shown(root / 'clients' / name)} was issued by the replaced CA and will be "
            f"refused; issue it again with: jobkit certs client {_shown(root)} {name} --force"
        )


@certs.command("client")
@click.argument("directory", metavar="DIR")
@click.argument("name", metavar="NAME")
@click.option("--force", is_flag=True, help="Replace an existing client folder's files.")
@_translate_errors
def client(directory: str, name: str, force: bool) -> None:
    """Issue a client certificate with CN NAME from the CA in DIR.

    Writes DIR/clients/NAME/{ca,cert,key}.pem: give that folder to the client.
    """
    folder = pki.issue_client(directory, name, force=force)
    click.echo(f"Made the client certificate {name!r} in {_shown(folder)}")
