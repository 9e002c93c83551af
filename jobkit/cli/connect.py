"""The global ``--server`` and ``--certs`` options, and the `Client` they make."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from jobkit.cli.errors import EXIT_USAGE, CertificatesUnusable, CliError

if TYPE_CHECKING:  # imported when a client is made: `jobkit --help` needs no ssl
    from click.shell_completion import CompletionItem

    from jobkit.client import Client

__all__ = ["ClientOptions", "client_from", "complete_job_ids", "connect"]


class ClientOptions:
    """What the group's global options said; the client is made on first use."""

    def __init__(self, server: str | None, certs: str | None) -> None:
        self.server = server
        self.certs = certs
        self._client: Client | None = None

    def client(self) -> Client:
        if self._client is None:
            self._client = client_from(self.server, self.certs)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def client_from(server: str | None, certs: str | None, timeout: float | None = None) -> Client:
    """A `Client` for ``--server`` / ``--certs`` (None: the defaults), with CLI errors.

    Raises `CliError` (usage) for a malformed address and
    `CertificatesUnusable` when the certificate folder cannot be used.
    """
    from jobkit.client import Client
    from jobkit.pki.layout import PkiError, client_folder
    from jobkit.wire import DEFAULT_SERVER, parse_address

    address = server or DEFAULT_SERVER
    try:
        parse_address(address)
    except ValueError as error:
        raise CliError(f"--server: {error}", EXIT_USAGE) from None
    try:
        folder = client_folder(certs or None)
    except PkiError as error:
        raise CertificatesUnusable(f"{error}; give a client folder with --certs") from None
    try:
        if timeout is None:
            return Client(address, folder)
        return Client(address, folder, timeout=timeout)
    except OSError as error:
        message = error.strerror or str(error)
        if error.filename and str(error.filename) not in message:
            message = f"{message}: {error.filename}"
        if certs is None:
            message += "; or give a client folder with --certs (or JOBKIT_CERTS)"
        raise CertificatesUnusable(message) from None
    except ValueError as error:
        raise CertificatesUnusable(str(error)) from None


def connect(ctx: click.Context) -> Client:
    """The client for this command line, made from the root group's options."""
    options = ctx.find_object(ClientOptions)
    if options is None:  # a command run on its own, outside the group (tests)
        options = ClientOptions(None, None)
        ctx.obj = options
    ctx.call_on_close(options.close)
    return options.client()


def complete_job_ids(ctx: click.Context, param: click.Parameter,
                     incomplete: str) -> list[CompletionItem]:
    """Shell completion for a job id: asks the server for our jobs (quietly, briefly)."""
    from click.shell_completion import CompletionItem

    params = ctx.find_root().params
    try:
        with client_from(params.get("server"), params.get("certs"), timeout=2.0) as client:
            jobs = [client.status_record(job) for job in client.list_json().get("jobs") or ()]
    except Exception:  # completion must never print a traceback into the prompt
        return []
    return [
        CompletionItem(job.id, help=f"{job.state}: {job.command}")
        for job in jobs
        if job.id.startswith(incomplete)
    ]
