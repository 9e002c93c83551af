"""The server's resource policy: default and maximum limits per job, quotas per client.

An operator sets it with ``jobkit serve`` flags or a TOML file (``--config``,
see docs/server.md); each client certificate's CN may have its own values
in the file.  For every ``PUT /jobs`` the app asks the caller's
`ClientPolicy` for the job's limits (`ClientPolicy.limits_for`: defaults
filled in, a request over a maximum refused with 403 naming the limit, never
lowered) and takes the job's share of the client's quotas from the
`QuotaLedger` (429 naming the quota; nothing else is touched).
"""

from __future__ import annotations

import importlib
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs

from jobkit.core.limits import Limits
from jobkit.core.sizes import format_size, parse_size
from jobkit.server.errors import ApiError
from jobkit.server.tenants import DEFAULT_MAX_JOBS
from jobkit.wire import ProblemKind

__all__ = [
    "SETTINGS",
    "ClientPolicy",
    "QuotaLedger",
    "QuotaShare",
    "ServerPolicy",
    "parse_limits",
    "policy_from_settings",
    "read_config",
]

#: What a policy setting is called in the TOML file (and, with ``--``, as a flag).
SETTINGS = ("default-limits", "max-limits", "max-jobs", "max-cpu", "max-memory")
#: Other names accepted in ``--default-limits`` / ``--max-limits`` (the ``exec`` flags').
_ALIASES = {"io-read": "io_read_bps", "io-write": "io_write_bps",
            "io_read": "io_read_bps", "io_write": "io_write_bps"}


def _limit_text(name: str, value: float | int) -> str:
    if name == "cpu":
        return f"{value:g} CPUs"
    if name == "pids":
        return f"{value} processes"
    return format_size(int(value)) + ("/s" if name.startswith("io_") else "")


@attrs.frozen
class ClientPolicy:
    """What one client's jobs get and may ask for.

    Attributes:
        default_limits: Limits a job gets for each limit it does not ask for.
        max_limits: Limits no job may exceed: a job asking more is refused
            (403 naming the limit), and a job leaving one out gets the
            maximum (unless ``default_limits`` has it).
        max_jobs: Running jobs the client may have at once (0: no limit).
        max_cpu: CPUs of the client's running jobs together (their ``cpu``
            limits); a job without a cpu limit counts as all of it.  None: no quota.
        max_memory: Bytes of the client's running jobs' ``memory`` limits
            together; a job without one counts as all of it.  None: no quota.
    """

    default_limits: Limits | None = None
    max_limits: Limits | None = None
    max_jobs: int = DEFAULT_MAX_JOBS
    max_cpu: float | None = None
    max_memory: int | None = None

    def __attrs_post_init__(self) -> None:
        if self.max_jobs < 0:
            raise ValueError(f"max-jobs must be 0 (no limit) or more, not {self.max_jobs}")
        if self.max_cpu is not None and not self.max_cpu > 0:
            raise ValueError(f"max-cpu must be a positive number of CPUs, not {self.max_cpu}")
        if self.max_memory is not None and self.max_memory <= 0:
            raise ValueError(f"max-memory must be positive, not {self.max_memory}")
        if self.default_limits is not None and self.max_limits is not None:
            for name in Limits.NAMES:
                default = getattr(self.default_limits, name)
                most = getattr(self.max_limits, name)
                if default is not None and most is not None and default > most:
                    raise ValueError(
                        f"the default {name} limit ({_limit_text(name, default)}) is over "
                        f"the maximum ({_limit_text(name, most)})")

    def limits_for(self, asked: Limits | None) -> Limits | None:
        """The limits a job asking for ``asked`` runs with; `ApiError` 403 over a maximum.

        Each limit is the one asked for, else the default, else the maximum.
        """
        most = self.max_limits
        if asked is not None and most is not None:
            for name in asked.asked():
                value, cap = getattr(asked, name), getattr(most, name)
                if cap is not None and value > cap:
                    raise ApiError(
                        ProblemKind.NOT_ALLOWED,
                        f"limit {name} of {_limit_text(name, value)} is over this server's "
                        f"maximum of {_limit_text(name, cap)} for this client",
                        limit=name, maximum=cap)
        values: dict[str, Any] = {}
        for name in Limits.NAMES:
            for source in (asked, self.default_limits, most):
                value = None if source is None else getattr(source, name)
                if value is not None:
                    values[name] = value
                    break
        if not values:
            return asked  # None, or nothing but strict=...
        strict = (asked if asked is not None else self.default_limits or Limits()).strict
        return Limits(**values, strict=strict)

    def share(self, limits: Limits | None) -> QuotaShare:
        """What a job with ``limits`` takes of this client's cpu and memory quotas."""
        cpu = None if limits is None else limits.cpu
        memory = None if limits is None else limits.memory
        return QuotaShare(
            cpu=0.0 if self.max_cpu is None else (self.max_cpu if cpu is None else cpu),
            memory=0 if self.max_memory is None else (
                self.max_memory if memory is None else memory),
        )


@attrs.frozen
class QuotaShare:
    """What one job takes of its client's quotas.

    Attributes:
        cpu: CPUs (0 where the client has no cpu quota).
        memory: Bytes (0 where the client has no memory quota).
    """

    cpu: float = 0.0
    memory: int = 0


@attrs.frozen
class ServerPolicy:
    """The policy of every client: `base`, or the CN's own in `clients`.

    Attributes:
        base: Every client's policy, unless it has its own.
        clients: Per-CN policies (``[clients."CN"]`` in the config file).
    """

    base: ClientPolicy = ClientPolicy()
    clients: Mapping[str, ClientPolicy] = attrs.field(factory=dict)

    def for_client(self, cn: str) -> ClientPolicy:
        """The policy of client ``cn``."""
        return self.clients.get(cn, self.base)

    def describe(self) -> dict[str, Any]:
        """The base policy as scalars, for the audit log's ``server.started`` config.

        Per-client policies are listed by CN (``client_policies``).
        """
        base = self.base

        def limits(value: Limits | None) -> str | None:
            return None if value is None else value.describe()

        return {"default_limits": limits(base.default_limits),
                "max_limits": limits(base.max_limits), "max_jobs": base.max_jobs,
                "max_cpu": base.max_cpu, "max_memory": base.max_memory,
                "client_policies": sorted(self.clients)}


class QuotaLedger:
    """The cpu and memory shares of every client's running jobs.

    A job's share is taken (`reserve`) before it is created and counted
    until the job ends or is deleted (`forget`, told by the pool's
    ``on_finished``).  A job that ended before it was counted is noticed when
    its client reaches a quota (its jobs' statuses are read then), so the cost
    of a creation does not grow with the jobs a client has.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, dict[str, QuotaShare]] = {}
        self._pending: dict[str, list[QuotaShare]] = {}

    def reserve(self, cn: str, policy: ClientPolicy, share: QuotaShare,
                running: Callable[[str], bool]) -> None:
        """Take ``share`` for a job of ``cn`` about to be created; `ApiError` 429 over a quota.

        ``running(job_id)`` says whether a job counted so far still runs.
        Call `created` once the creation is over, whatever happened.
        """
        if policy.max_cpu is None and policy.max_memory is None:
            return
        with self._lock:
            if self._over(cn, policy, share) is not None:
                jobs = self._jobs.get(cn, {})
                for job_id in [job_id for job_id in jobs if not running(job_id)]:
                    del jobs[job_id]
                over = self._over(cn, policy, share)
                if over is not None:
                    name, used, quota = over
                    asked = share.cpu if name == "cpu" else share.memory
                    raise ApiError(
                        ProblemKind.QUOTA_EXCEEDED,
                        f"over the {name} quota: client {cn!r} has running jobs with "
                        f"{_limit_text(name, used)} of {_limit_text(name, quota)}, and this "
                        f"job needs {_limit_text(name, asked)}; wait for some to finish, "
                        f"or stop or delete them", quota=name)
            self._pending.setdefault(cn, []).append(share)

    def _over(self, cn: str, policy: ClientPolicy,
              share: QuotaShare) -> tuple[str, float, float] | None:
        shares = [*self._jobs.get(cn, {}).values(), *self._pending.get(cn, [])]
        cpu = sum(s.cpu for s in shares)
        memory = sum(s.memory for s in shares)
        # A little slack on CPUs: 0.1 + 0.2 must fit in 0.3.
        if policy.max_cpu is not None and cpu + share.cpu > policy.max_cpu + 1e-9:
            return "cpu", cpu, policy.max_cpu
        if policy.max_memory is not None and memory + share.memory > policy.max_memory:
            return "memory", memory, policy.max_memory
        return None

    def created(self, cn: str, share: QuotaShare, job_id: str | None) -> None:
        """The creation `reserve` was for is over; ``job_id`` None if it failed."""
        with self._lock:
            pending = self._pending.get(cn)
            if not pending or share not in pending:
                return  # nothing was reserved (no quota)
            pending.remove(share)
            if job_id is not None:
                self._jobs.setdefault(cn, {})[job_id] = share

    def forget(self, cn: str, job_id: str) -> None:
        """``job_id`` of ``cn`` ended or was deleted: its share is free."""
        with self._lock:
            self._jobs.get(cn, {}).pop(job_id, None)


# -- settings: flags and the config file ----------------------------------------------------


def parse_limits(what: str, text: str) -> Limits:
    """``memory=1G,pids=512,cpu=2`` -> `Limits`; ``ValueError`` naming ``what`` otherwise."""
    values: dict[str, Any] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        name = _ALIASES.get(key, key)
        if not sep or name not in Limits.NAMES:
            raise ValueError(f"{what}: expected NAME=VALUE with NAME one of "
                             f"{', '.join(Limits.NAMES)}, not {item.strip()!r}")
        try:
            values[name] = (float(value) if name == "cpu"
                            else int(value) if name == "pids" else value)
        except ValueError:
            raise ValueError(f"{what}: {name} must be a number, not {value!r}") from None
    return _limits(what, values)


def _limits(what: str, values: object) -> Limits:
    if isinstance(values, str):
        return parse_limits(what, values)
    if not isinstance(values, dict):
        raise ValueError(f"{what} must be a table such as {{ memory = \"1G\" }}")
    try:
        return Limits.from_dict({_ALIASES.get(str(k), str(k)).replace("-", "_"): v
                                 for k, v in values.items()})
    except (TypeError, ValueError) as error:
        raise ValueError(f"{what}: {error}") from None


def read_config(path: Path) -> dict[str, Any]:
    """The settings of a ``--config`` TOML file (see docs/server.md); ``ValueError`` for people.

    Needs ``tomllib`` (Python 3.11 and later).
    """
    if sys.version_info < (3, 11):
        raise ValueError(f"--config {path}: reading a TOML file needs Python 3.11 or later "
                         f"(use the flags instead)")
    # Imported by name: mypy checks this module for Python 3.10, which has no tomllib.
    tomllib: Any = importlib.import_module("tomllib")
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except OSError as error:
        raise ValueError(f"cannot read --config {path}: {error.strerror or error}") from None
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"--config {path}: not valid TOML: {error}") from None
    _check_keys(str(path), data, allow_clients=True)
    clients = data.get("clients", {})
    if not isinstance(clients, dict) or not all(isinstance(v, dict) for v in clients.values()):
        raise ValueError(f"--config {path}: [clients.\"CN\"] must be tables")
    for cn, settings in clients.items():
        _check_keys(f"{path} [clients.{cn!r}]", settings, allow_clients=False)
    return data


def _check_keys(where: str, data: Mapping[str, Any], *, allow_clients: bool) -> None:
    known = (*SETTINGS, "clients") if allow_clients else SETTINGS
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown setting {unknown[0]!r} "
                         f"(known: {', '.join(known)})")


def policy_from_settings(settings: Mapping[str, Any]) -> ServerPolicy:
    """A `ServerPolicy` from `read_config`'s form (flags merged in by the caller).

    A client's ``default-limits`` and ``max-limits`` are merged limit by limit
    over the top-level ones; its other settings replace them.
    """
    base = _client_policy("the server's policy", settings, {})
    clients = {}
    for cn, own in settings.get("clients", {}).items():
        clients[cn] = _client_policy(f"the policy of client {cn!r}", own, settings)
    return ServerPolicy(base, clients)


def _client_policy(where: str, own: Mapping[str, Any],
                   base: Mapping[str, Any]) -> ClientPolicy:
    def limits(key: str) -> Limits | None:
        merged: dict[str, Any] = {}
        for source in (base, own):
            if source.get(key) is not None:
                given = _limits(key, source[key])
                merged.update({name: getattr(given, name) for name in given.asked()})
        return Limits(**merged) if merged else None

    def setting(key: str) -> Any:
        return own[key] if key in own else base.get(key)

    try:
        max_jobs = setting("max-jobs")
        if max_jobs is not None and (isinstance(max_jobs, bool)
                                     or not isinstance(max_jobs, int)):
            raise ValueError(f"max-jobs must be a whole number, not {max_jobs!r}")
        max_cpu = setting("max-cpu")
        if max_cpu is not None and (isinstance(max_cpu, bool)
                                    or not isinstance(max_cpu, (int, float))):
            raise ValueError(f"max-cpu must be a number of CPUs, not {max_cpu!r}")
        max_memory = setting("max-memory")
        return ClientPolicy(
            default_limits=limits("default-limits"),
            max_limits=limits("max-limits"),
            max_jobs=DEFAULT_MAX_JOBS if max_jobs is None else max_jobs,
            max_cpu=None if max_cpu is None else float(max_cpu),
            max_memory=None if max_memory is None else parse_size("max-memory", max_memory),
        )
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: {error}") from None
