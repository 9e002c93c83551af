"""``jobkit certs``: make the certificates for mutual TLS with jobkit's own PKI.

Commands::

    jobkit certs init DIR [--host NAME]... [--client NAME]... [--force]
    jobkit certs client DIR NAME [--force]
    jobkit certs list DIR [--json]
    jobkit certs revoke DIR (NAME | --serial HEX)
    jobkit certs renew DIR (NAME | --server) [--revoke-old]

Errors and exit codes (the convention of every ``certs`` command): an expected
failure is reported as a single line on stderr, ``jobkit: error: <message>``,
never a traceback, and the exit code says whose fault it was:

* 2: the command line is wrong (a bad client name, host or serial; click's own
  usage errors, such as a missing argument, also exit 2);
* 1: anything else (a file exists and ``--force`` was not given, the CA cannot
  be read, no certificate to revoke or renew, the file system refused a write).

Warnings are single lines on stderr starting ``jobkit: warning: ``. What was
made is reported on stdout.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from datetime import datetime
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
    """Make the CA, server and client certificates for mutual TLS; list, revoke, renew.

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


# -- after issuing: list, revoke, renew ------------------------------------------------

_STATUS_STYLES = {"current": "green", "replaced": "yellow", "revoked": "red",
                  "expired": "dim"}


def _day(moment: datetime | None) -> str:
    return "-" if moment is None else moment.strftime("%Y-%m-%d")


def _serial(serial: int) -> str:
    from jobkit.pki.record import format_serial

    return format_serial(serial)


@certs.command("list")
@click.argument("directory", metavar="DIR")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_translate_errors
def list_command(directory: str, as_json: bool) -> None:
    """List every certificate the CA in DIR issued: name, kind, serial, expiry, status.

    \b
    current    the certificate in its folder now
    replaced   renewed or issued again since, but still valid: revoke it
               with --serial if the old key may be out there
    revoked    on the CRL
    expired    past its validity
    """
    import json

    from jobkit.cli.tables import Column, echo_table

    listed = pki.list_certificates(directory)
    if as_json:
        click.echo(json.dumps({"certificates": [c.to_json() for c in listed]}))
        return
    rows = [(c.certificate.name or "?", c.certificate.kind, _serial(c.certificate.serial),
             _day(c.certificate.not_after), c.status) for c in listed]
    echo_table((Column("NAME"), Column("KIND"), Column("SERIAL"), Column("EXPIRES"),
                Column("STATUS")), rows, [_STATUS_STYLES.get(row[-1]) for row in rows])


def _one_target(name: str | None, other: object, what: str) -> None:
    if (name is None) == (other is None or other is False):
        raise CliError(f"give either NAME or {what}", EXIT_USAGE)


def _wrote_crl(root: Path, files: Sequence[Path], count: int) -> None:
    click.echo(f"Wrote the CRL ({count} revoked): {', '.join(_shown(f) for f in files)}")
    if not (root / "server").is_dir():
        _warn(f"{_shown(root)} has no server/ folder: copy {_shown(files[0])} to the "
              f"server's certificate folder as crl.pem")


@certs.command("revoke")
@click.argument("directory", metavar="DIR")
@click.argument("name", metavar="NAME", required=False)
@click.option("--serial", metavar="HEX", help="Revoke the certificate with this serial "
                                              "(as 'jobkit certs list' shows it) instead.")
@_translate_errors
def revoke_command(directory: str, name: str | None, serial: str | None) -> None:
    """Revoke client NAME's certificates (every one not yet revoked), or one by --serial.

    The CA in DIR signs a new CRL, written to DIR/ca/crl.pem and
    DIR/server/crl.pem; a running server refuses the revoked certificates from
    its next connection on.  To let NAME in again, renew it: 'jobkit certs
    renew DIR NAME'.
    """
    _one_target(name, serial, "--serial")
    number = None if serial is None else pki.parse_serial(serial)
    done = pki.revoke(directory, name, serial=number)
    if done.unrecorded:
        _warn(f"serial {serial} is in no record of this CA; revoked anyway")
    for cert in done.revoked:
        label = f"{cert.name!r}" if cert.name else "a certificate"
        click.echo(f"Revoked {label} ({cert.kind}, serial {_serial(cert.serial)})")
    for cert in done.already:
        click.echo(f"Already revoked: {cert.name or '?'} (serial {_serial(cert.serial)})")
    record = pki.load_record(directory)
    _wrote_crl(Path(directory), done.crl_files, len(record.revoked()))


@certs.command("renew")
@click.argument("directory", metavar="DIR")
@click.argument("name", metavar="NAME", required=False)
@click.option("--server", "server", is_flag=True, help="Renew the server certificate.")
@click.option("--revoke-old", is_flag=True,
              help="Also revoke the certificates it replaces.")
@_translate_errors
def renew_command(directory: str, name: str | None, server: bool, revoke_old: bool) -> None:
    """Issue client NAME's certificate again (or the server's): new key, new serial.

    The same CN, hosts and usages, valid for two years from now, written
    over the old files.  The old certificate stays valid until it expires
    unless --revoke-old.
    """
    _one_target(name, server, "--server")
    done = pki.renew(directory, name, server=server, revoke_old=revoke_old)
    new, old = done.certificate, done.replaced
    what = "the server certificate" if server else f"the client certificate {name!r}"
    click.echo(f"Renewed {what} in {_shown(done.folder)}: serial {_serial(new.serial)}, "
               f"valid until {_day(new.not_after)}")
    if done.revoked:
        for cert in done.revoked:
            click.echo(f"Revoked the certificate it replaces (serial {_serial(cert.serial)})")
        record = pki.load_record(directory)
        _wrote_crl(Path(directory), done.crl_files, len(record.revoked()))
    elif not old.revoked:
        click.echo(f"The old certificate (serial {_serial(old.serial)}) stays valid until "
                   f"{_day(old.not_after)}: revoke it with 'jobkit certs revoke "
                   f"{_shown(Path(directory))} --serial {_serial(old.serial)}'")
    if server:
        click.echo("A running server uses it once reloaded ('kill -HUP' its process) "
                   "or restarted.")
    else:
        click.echo(f"Give {_shown(done.folder)} to {name} again.")
