"""`Client.create(limits=, network=)` and the limits and usage in `Client.status`."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from jobkit import Limits
from jobkit.client import Client
from jobkit.core.errors import ServerError
from jobkit.core.models import State
from jobkit.server.policy import ClientPolicy, ServerPolicy
from tests.support.pki import new_client_folder
from tests.support.servers import running_server


def _client(pki: Path, address: tuple[str, int]) -> Client:
    host, port = address
    return Client(f"{host}:{port}", new_client_folder(pki, "py")[1])


def test_limits_go_to_the_server_and_come_back_in_the_status(pki: Path) -> None:
    from jobkit.core import cgroups

    if "none" in cgroups.detect().enforcement().get("memory", "none"):
        pytest.skip("this machine cannot enforce a memory limit")
    policy = ServerPolicy(ClientPolicy(max_limits=Limits(memory="1G")))
    with running_server(pki, resources=policy) as server, \
            _client(pki, server.address) as client:
        job = client.create(sys.executable, ["-c", "b = bytearray(1 << 30)"],
                            limits=Limits(memory="64M", pids=100))
        status = client.wait(job, timeout=30)
        assert status.limits == Limits(memory="64M", pids=100)
        assert status.state is State.KILLED and status.oom_killed
        assert status.error == "out of memory (limit 64 MiB)"
        assert status.usage is not None and status.usage.source == "cgroup"
        assert status.enforced_by is not None and status.network is True
        with pytest.raises(ServerError, match="maximum") as refused:
            client.create("true", limits=Limits(memory="2G"))
        assert refused.value.status == 403
        with pytest.raises(TypeError):
            client.create("true", limits={"memory": "1G"})  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            client.create("true", network="no")  # type: ignore[arg-type]
        assert client.list() == [job]  # the refused ones never reached the server's pool
