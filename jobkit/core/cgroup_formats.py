"""The text of the cgroup files jobkit writes (limits) and reads (usage, OOM kills).

Pure functions, no file access: each cgroup version's formats are tested
here on any machine, including cgroup v2's where no v2 controller is
writable.  The kernel's documentation of each file:
Documentation/admin-guide/cgroup-v2.rst and .../cgroup-v1/*.rst.
"""

from __future__ import annotations

from jobkit.core.limits import Limits

__all__ = [
    "CPU_PERIOD_US",
    "Device",
    "LimitFile",
    "cpu_max",
    "cpu_quota_us",
    "io_max",
    "parse_blkio_bytes",
    "parse_cpuacct_all",
    "parse_io_stat",
    "parse_keyed",
    "v1_limit_files",
    "v2_limit_files",
]

#: The period CPU quotas are counted in: 100 ms, the kernel's and systemd's default.
CPU_PERIOD_US = 100_000

#: A block device as ``(major, minor)``.
Device = tuple[int, int]

#: ``(controller, file, text)``: write ``text`` to ``file`` of the job's group
#: in the hierarchy of ``controller``.  Order matters (see `v1_limit_files`).
LimitFile = tuple[str, str, str]

#: Which controller enforces each limit, per cgroup version.
CONTROLLERS = {
    2: {"cpu": "cpu", "memory": "memory", "pids": "pids",
        "io_read_bps": "io", "io_write_bps": "io"},
    1: {"cpu": "cpu", "memory": "memory", "pids": "pids",
        "io_read_bps": "blkio", "io_write_bps": "blkio"},
}


def cpu_quota_us(cpu: float, period_us: int = CPU_PERIOD_US) -> int:
    """Microseconds of CPU time per ``period_us`` for ``cpu`` CPUs (at least the kernel's 1 ms)."""
    return max(1000, round(cpu * period_us))


def cpu_max(cpu: float, period_us: int = CPU_PERIOD_US) -> str:
    """cgroup v2 ``cpu.max``: ``"$QUOTA $PERIOD"``, e.g. ``"50000 100000"`` for half a CPU."""
    return f"{cpu_quota_us(cpu, period_us)} {period_us}"


def io_max(device: Device, read_bps: int | None, write_bps: int | None) -> str:
    """cgroup v2 ``io.max``: ``"MAJ:MIN rbps=N wbps=N"``, ``max`` for no limit."""
    read = "max" if read_bps is None else str(read_bps)
    write = "max" if write_bps is None else str(write_bps)
    return f"{device[0]}:{device[1]} rbps={read} wbps={write}"


def v2_limit_files(limits: Limits, device: Device | None) -> list[LimitFile]:
    """The cgroup v2 files that enforce ``limits`` (io ones only with a ``device``).

    ``memory.swap.max`` is 0, so that the memory limit is not escaped into
    swap; where the kernel has no swap accounting the file is missing and the
    caller skips it.
    """
    files: list[LimitFile] = []
    if limits.cpu is not None:
        files.append(("cpu", "cpu.max", cpu_max(limits.cpu)))
    if limits.memory is not None:
        files.append(("memory", "memory.max", str(limits.memory)))
        files.append(("memory", "memory.swap.max", "0"))
    if limits.pids is not None:
        files.append(("pids", "pids.max", str(limits.pids)))
    if device is not None and (limits.io_read_bps is not None or limits.io_write_bps is not None):
        files.append(("io", "io.max", io_max(device, limits.io_read_bps, limits.io_write_bps)))
    return files


def v1_limit_files(limits: Limits, device: Device | None) -> list[LimitFile]:
    """The cgroup v1 files that enforce ``limits`` (io ones only with a ``device``).

    The memory limit comes before the memory+swap one: the kernel refuses a
    ``memory.memsw.limit_in_bytes`` below ``memory.limit_in_bytes``.  Setting
    both to the same value leaves no room for swap.  The memsw file exists
    only with swap accounting; the caller skips it where it is missing.
    """
    files: list[LimitFile] = []
    if limits.cpu is not None:
        files.append(("cpu", "cpu.cfs_period_us", str(CPU_PERIOD_US)))
        files.append(("cpu", "cpu.cfs_quota_us", str(cpu_quota_us(limits.cpu))))
    if limits.memory is not None:
        files.append(("memory", "memory.limit_in_bytes", str(limits.memory)))
        files.append(("memory", "memory.memsw.limit_in_bytes", str(limits.memory)))
    if limits.pids is not None:
        files.append(("pids", "pids.max", str(limits.pids)))
    if device is not None:
        where = f"{device[0]}:{device[1]}"
        if limits.io_read_bps is not None:
            text = f"{where} {limits.io_read_bps}"
            files.append(("blkio", "blkio.throttle.read_bps_device", text))
        if limits.io_write_bps is not None:
            text = f"{where} {limits.io_write_bps}"
            files.append(("blkio", "blkio.throttle.write_bps_device", text))
    return files


def parse_keyed(text: str) -> dict[str, int]:
    """``"key value"`` lines (``cpu.stat``, ``memory.events``, ``memory.oom_control``)."""
    values = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        try:
            values[key] = int(value)
        except ValueError:
            continue  # not a number: a line of another kernel's format
    return values


def parse_cpuacct_all(text: str) -> tuple[int, int]:
    """cgroup v1 ``cpuacct.usage_all``: total (user, system) nanoseconds over every CPU.

    Lines look like ``"0 1282537124441 636371209889"`` under a
    ``"cpu user system"`` heading.
    """
    user = system = 0
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) == 3:
            user += int(fields[1])
            system += int(fields[2])
    return user, system


def parse_io_stat(text: str) -> tuple[int, int]:
    """cgroup v2 ``io.stat``: total (read, written) bytes over every device.

    Lines look like ``"254:0 rbytes=1024 wbytes=0 rios=1 wios=0 dbytes=0 dios=0"``.
    """
    read = written = 0
    for line in text.splitlines():
        for field in line.split()[1:]:
            key, _, value = field.partition("=")
            if key == "rbytes":
                read += int(value)
            elif key == "wbytes":
                written += int(value)
    return read, written


def parse_blkio_bytes(text: str) -> tuple[int, int]:
    """cgroup v1 ``blkio.throttle.io_service_bytes_recursive``: (read, written) bytes.

    Lines look like ``"254:0 Read 4096"``, then a ``"Total N"`` line.
    """
    read = written = 0
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2].isdigit():
            if parts[1] == "Read":
                read += int(parts[2])
            elif parts[1] == "Write":
                written += int(parts[2])
    return read, written
