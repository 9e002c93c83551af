"""``jobkit serve``: run the HTTPS API until Ctrl-C or SIGTERM."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from jobkit.cli.errors import EXIT_USAGE, CliError, OneLineCommand
from jobkit.core.durations import parse_duration
from jobkit.core.pool import DEFAULT_EXECUTOR
from jobkit.core.sizes import format_size, parse_size
from jobkit.server.log_format import LOG_FORMATS
from jobkit.server.metrics import DEFAULT_METRICS_PORT
from jobkit.server.serve import DEFAULT_THREADS
from jobkit.server.tenants import (
    DEFAULT_KEEP_BYTES,
    DEFAULT_KEEP_JOBS,
    DEFAULT_MAX_CLIENT_STREAMS,
    DEFAULT_MAX_JOBS,
    DEFAULT_MAX_OUTPUT,
    DEFAULT_MAX_STREAMS,
    DEFAULT_SERVER_BACKEND,
    DEFAULT_STREAM_IDLE_TIMEOUT,
)
from jobkit.wire import DEFAULT_SERVER, parse_address

if TYPE_CHECKING:
    from jobkit.server.policy import ServerPolicy

__all__ = ["serve"]


def _listen(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, int]:
    try:
        return parse_address(value, listen=True)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


def _metrics_listen(ctx: click.Context, param: click.Parameter,
                    value: str | None) -> tuple[str, int] | None:
    if value is None:
        return None
    try:
        return parse_address(value, listen=True)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


def _size(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    try:
        return None if value is None else parse_size(f"--{param.name}".replace("_", "-"), value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    try:
        return None if value is None else parse_duration("--keep-for", value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


def _executor_options(executor: str, ray_address: str | None,
                      ray_python: str | None) -> dict[str, str] | None:
    """``executor_options`` from the flags; a usage error for flags of another executor."""
    if executor != "ray":
        if ray_address is not None or ray_python is not None:
            raise CliError("--ray-address and --ray-python go with --executor ray", EXIT_USAGE)
        return None
    if ray_address is None:
        raise CliError("--executor ray needs --ray-address URL (e.g. http://10.0.0.5:8265)",
                       EXIT_USAGE)
    options = {"address": ray_address}
    if ray_python is not None:
        options["python"] = ray_python
    return options


def _resource_policy(config: Path | None, flags: dict[str, object]) -> ServerPolicy:
    """The policy of ``--config`` with the options given on the command line over it."""
    from jobkit.server.policy import policy_from_settings, read_config

    ctx = click.get_current_context()
    try:
        settings = {} if config is None else read_config(config)
        for key, value in flags.items():
            source = ctx.get_parameter_source(key.replace("-", "_"))
            if value is not None and source is not click.core.ParameterSource.DEFAULT:
                settings[key] = value
        return policy_from_settings(settings)
    except ValueError as error:
        raise CliError(str(error), EXIT_USAGE) from None


@click.command(cls=OneLineCommand)
@click.option(
    "--certs", type=click.Path(path_type=Path, file_okay=False), default=None,
    help="Folder made by 'jobkit certs init' (or its server/ subfolder). "
         "Default: a PKI under your data folder, created on first use.",
)
@click.option(
    "--listen", default=DEFAULT_SERVER, show_default=True, metavar="HOST:PORT",
    callback=_listen, help="Address to listen on ([::1]:PORT for IPv6; port 0 picks one).",
)
@click.option("--backend", default=DEFAULT_SERVER_BACKEND, show_default=True,
              help="Output backend for jobs: file (on disk, kept across restarts), memory, "
                   "tempfile, ring, or a plugin's.")
@click.option("--allow-backend", "allowed", multiple=True, metavar="NAME",
              help="Another backend clients may ask for in PUT /jobs (repeatable). "
                   "Default: only --backend.")
@click.option("--max-output", default=format_size(DEFAULT_MAX_OUTPUT).replace(" ", ""),
              show_default=True, callback=_size, metavar="SIZE",
              help="Bytes kept of each stream of each job (file keeps the newest, "
                   "memory the first).")
@click.option("--keep-jobs", type=click.IntRange(min=0), default=DEFAULT_KEEP_JOBS,
              show_default=True,
              help="Finished jobs each client keeps; the oldest beyond are deleted.")
@click.option("--keep-bytes", default=format_size(DEFAULT_KEEP_BYTES).replace(" ", ""),
              show_default=True, callback=_size, metavar="SIZE",
              help="Output of finished jobs each client keeps on disk; its oldest "
                   "finished jobs beyond are deleted.")
@click.option("--keep-for", default=None, callback=_duration, metavar="DURATION",
              help="Delete finished jobs this long after they ended (90m, 12h, 7d). "
                   "Default: keep them.")
@click.option("--threads", type=click.IntRange(min=2), default=DEFAULT_THREADS,
              show_default=True,
              help="Worker threads; half of them may serve follow streams.")
@click.option("--admin", "admins", multiple=True, metavar="CN",
              help="A client CN that may list and act on every client's jobs (repeatable).")
@click.option("--max-jobs", type=click.IntRange(min=0), default=DEFAULT_MAX_JOBS,
              show_default=True,
              help="Live jobs one client may have at once (0: no limit).")
@click.option("--config", "config", type=click.Path(path_type=Path, dir_okay=False),
              default=None, metavar="FILE",
              help="A TOML file with the resource policy (the four options below and "
                   "--max-jobs, and per-client overrides); options given here win. "
                   "See docs/server.md.")
@click.option("--default-limits", default=None, metavar="LIMITS",
              help="Limits of jobs that do not ask for them, e.g. memory=1G,pids=512 "
                   "(cpu, memory, pids, io-read, io-write).")
@click.option("--max-limits", default=None, metavar="LIMITS",
              help="Limits no job may exceed, e.g. memory=4G,cpu=2: asking more is refused "
                   "(403); a job that asks none gets them.")
@click.option("--max-cpu", type=click.FloatRange(min=0, min_open=True), default=None,
              metavar="CPUS",
              help="CPUs of one client's running jobs together (their cpu limits); more "
                   "is refused (429). Default: no quota.")
@click.option("--max-memory", default=None, metavar="SIZE",
              help="Memory of one client's running jobs together (their memory limits); "
                   "more is refused (429). Default: no quota.")
@click.option("--stream-idle-timeout", type=click.FloatRange(min=0),
              default=DEFAULT_STREAM_IDLE_TIMEOUT, show_default=True, metavar="SECONDS",
              help="End a follow stream that sent nothing for this long (clients resume "
                   "at their offset); 0: never.")
@click.option("--max-streams", type=click.IntRange(min=1), default=DEFAULT_MAX_STREAMS,
              show_default=True, metavar="N",
              help="Output streams (follows, downloads, /output) open at once on the "
                   "server; more are refused (503). None holds a thread while it waits.")
@click.option("--max-client-streams", type=click.IntRange(min=1),
              default=DEFAULT_MAX_CLIENT_STREAMS, show_default=True, metavar="N",
              help="Output streams one client may hold at once; more are refused (429).")
@click.option(
    "--state-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
    help="Where every client's jobs and output are kept across restarts. Default: "
         "$XDG_STATE_HOME/jobkit/serve-HOST-PORT (a temporary folder for port 0).",
)
@click.option(
    "--cgroups/--no-cgroups", default=None,
    help="Give each job its own cgroup v2 (so setsid() cannot escape stop/delete). "
         "Default: where this process may create cgroups.",
)
@click.option(
    "--audit-log", type=click.Path(path_type=Path, dir_okay=False), default=None,
    metavar="FILE",
    help="Where the audit log goes (hash-chained JSON lines; 'jobkit audit'). "
         "Default: audit.log in the state folder.",
)
@click.option(
    "--metrics-listen", default=None, callback=_metrics_listen, metavar="HOST:PORT",
    help=f"Also serve the Prometheus metrics over plain HTTP there, e.g. "
         f"127.0.0.1:{DEFAULT_METRICS_PORT} (keep it on loopback). Default: no such "
         f"listener; admins read GET /metrics over mutual TLS.",
)
@click.option("--metrics-per-client", is_flag=True,
              help="Label the per-job metrics with the client's CN (for a few known clients).")
@click.option("--log-format", type=click.Choice(LOG_FORMATS), default="plain",
              show_default=True,
              help="The access log and warnings on stderr: plain lines, or one JSON object "
                   "per line.")
@click.option("--executor", default=DEFAULT_EXECUTOR, show_default=True, metavar="NAME",
              help="Where jobs run: local (this machine), ray (a Ray cluster: --ray-address), "
                   "or a plugin's. See docs/executors.md.")
@click.option("--ray-address", default=None, metavar="URL",
              help="With --executor ray: the cluster's job submission address, e.g. "
                   "http://10.0.0.5:8265 (keep Ray's dashboard on a private address).")
@click.option("--ray-python", default=None, metavar="PATH",
              help="With --executor ray: the Python with jobkit installed on Ray's nodes "
                   "(default: python3).")
@click.option("--quiet", "-q", is_flag=True, help="No access log; warnings and errors only.")
def serve(certs: Path | None, listen: tuple[str, int], backend: str,
          allowed: tuple[str, ...], max_output: int, keep_jobs: int, keep_bytes: int,
          keep_for: float | None, threads: int, admins: tuple[str, ...], max_jobs: int,
          config: Path | None, default_limits: str | None, max_limits: str | None,
          max_cpu: float | None, max_memory: str | None, stream_idle_timeout: float,
          max_streams: int, max_client_streams: int, state_dir: Path | None,
          cgroups: bool | None, audit_log: Path | None,
          metrics_listen: tuple[str, int] | None, metrics_per_client: bool,
          log_format: str, executor: str, ray_address: str | None, ray_python: str | None,
          quiet: bool) -> None:
    """Serve the jobkit HTTPS API with mutual TLS 1.3 until Ctrl-C or SIGTERM.

    Every client authenticates with a certificate from the server's CA; the
    certificate's CN is its identity, and it sees only its own jobs. Jobs and
    their output are kept in the state folder across restarts; on exit, every
    running job is killed. Every security-relevant act is in the audit log.
    SIGHUP reloads the certificate, key, CA and CRL (so does a change of the
    CRL file).
    """
    from jobkit.core.errors import JobkitError
    from jobkit.core.plugins import backend_names
    from jobkit.core.retention import Retention
    from jobkit.locations import default_state_dir
    from jobkit.pki import PkiError, ensure_default_pki
    from jobkit.server.log_format import configure_logging
    from jobkit.server.serve import JobServer
    from jobkit.server.tenants import StoragePolicy

    configure_logging(log_format, logging.WARNING if quiet else logging.INFO)
    # The format uses none of these, and the access log makes a record per
    # request: skip collecting them (the logging HOWTO's "Optimization").
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    known = backend_names()
    for name in (backend, *allowed):
        if name not in known:
            raise CliError(
                f"unknown backend {name!r} (known: {', '.join(sorted(known))})", EXIT_USAGE
            )
    executor_options = _executor_options(executor, ray_address, ray_python)
    resources = _resource_policy(config, {
        "max-jobs": max_jobs, "default-limits": default_limits, "max-limits": max_limits,
        "max-cpu": max_cpu, "max-memory": max_memory,
    })
    assert max_output is not None and keep_bytes is not None  # they have defaults
    storage = StoragePolicy(
        backend, frozenset(allowed), max_output,
        Retention(max_age=keep_for, max_jobs=keep_jobs, max_bytes=keep_bytes),
    )
    try:
        if certs is None:
            folder, created = ensure_default_pki()
            if created:
                click.echo(f"Created a new PKI in {folder}")
            else:
                click.echo(f"Using the PKI in {folder}")
            clients = sorted(p.name for p in (folder / "clients").iterdir() if p.is_dir())
            for name in clients:
                click.echo(f"Client certificate for {name!r}: {folder / 'clients' / name}")
            certs = folder
        host, port = listen
        if state_dir is None:
            state_dir = default_state_dir(host, port)
        server = JobServer(certs, host=host, port=port, storage=storage, threads=threads,
                           admins=admins, max_jobs=resources.base.max_jobs, cgroups=cgroups,
                           resources=resources,
                           stream_idle_timeout=stream_idle_timeout,
                           max_streams=max_streams, max_client_streams=max_client_streams,
                           state_dir=state_dir, audit_log=audit_log,
                           metrics_listen=metrics_listen,
                           metrics_per_client=metrics_per_client, executor=executor,
                           executor_options=executor_options)
        click.echo(f"Keeping jobs in {server.state.root}: {storage.describe()}")
        if executor_options is not None:
            click.echo(f"Running jobs on the {executor} cluster at {executor_options['address']}")
        if server.recovered:
            click.echo(f"Killed {len(server.recovered)} job(s) left running by a previous "
                       f"server (state: {server.state.root})")
    except (PkiError, JobkitError, ValueError) as error:
        raise CliError(str(error)) from None
    except OSError as error:
        where = f" {error.filename}" if error.filename else ""
        raise CliError(f"cannot read the certificates or open the audit log{where}: "
                       f"{error.strerror or error}") from None
    try:
        server.start()
    except OSError as error:
        where = (f"{listen[0]}:{listen[1]}" if metrics_listen is None
                 else f"{listen[0]}:{listen[1]} or {metrics_listen[0]}:{metrics_listen[1]}")
        raise CliError(
            f"cannot listen on {where}, or write the audit log: {error.strerror or error}"
        ) from None
    # One line: scripts wait for it (and read no further).
    places = [f"certificates: {server.certs}", f"audit log: {server.audit.path}"]
    if server.metrics_address is not None:
        host, port = server.metrics_address
        places.append(f"metrics: http://{host}:{port}/metrics")
    click.echo(f"Serving on {server.url} ({'; '.join(places)}); Ctrl-C to stop")
    sys.stdout.flush()
    signum = server.run_until_signalled()
    if signum:
        kept = "" if server.state.temporary else f"; every job is kept in {server.state.root}"
        if executor == DEFAULT_EXECUTOR:
            click.echo(f"Stopped: every running job was killed{kept}", err=True)
        else:
            click.echo(f"Stopped: running jobs run on ({executor}); a server on the same "
                       f"state folder takes them over{kept}", err=True)
