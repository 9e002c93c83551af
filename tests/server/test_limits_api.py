"""Limits over the API: ``PUT /jobs`` fields, the status, and the server's policy.

Real servers on 127.0.0.1 with real kernel limits (cgroup v1 on the machines
this project is tested on; tests that need enforcement skip, saying why,
where this process may not create cgroups).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from jobkit.core.limits import Limits
from jobkit.server.policy import ClientPolicy, ServerPolicy, policy_from_settings, read_config
from tests.support.api import ApiClient
from tests.support.pki import new_client_folder
from tests.support.servers import running_server

#: A program whose first act is to take 1 GiB (and touch it).
ALLOCATE_1G = [sys.executable, "-c", "b = bytearray(1 << 30)"]


def _enforcing() -> str | None:
    from jobkit.core import cgroups

    enforced = cgroups.detect().enforcement()
    missing = [name for name in ("cpu", "memory", "pids") if enforced.get(name) in (None, "none")]
    return f"this machine cannot enforce {', '.join(missing)}" if missing else None


needs_cgroups = pytest.mark.skipif(_enforcing() is not None, reason=str(_enforcing()))


def _client(pki: Path, address: tuple[str, int], prefix: str = "limits") -> ApiClient:
    name, folder = new_client_folder(pki, prefix)
    return ApiClient(address, folder, name)


def _put(client: ApiClient, cmd: str, *args: str, **fields: Any) -> Any:
    return client.request("PUT", "/jobs", {"cmd": cmd, "args": list(args), **fields})


@pytest.mark.parametrize(("fields", "named"), [
    ({"limits": "256M"}, "'limits'"),
    ({"limits": [1]}, "'limits'"),
    ({"limits": {"memory": "lots"}}, "'limits.memory'"),
    ({"limits": {"memory": -1}}, "'limits.memory'"),
    ({"limits": {"cpu": 0}}, "'limits.cpu'"),
    ({"limits": {"cpu": "0.5"}}, "'limits.cpu'"),
    ({"limits": {"pids": 1.5}}, "'limits.pids'"),
    ({"limits": {"pids": True}}, "'limits.pids'"),
    ({"limits": {"io_read_bps": "1.5B"}}, "'limits.io_read_bps'"),
    ({"limits": {"strict": "yes"}}, "'limits.strict'"),
    ({"limits": {"swap": "1G"}}, "'swap'"),
    ({"network": "no"}, "'network'"),
    ({"network": 0}, "'network'"),
], ids=lambda value: str(value))
def test_bad_limits_are_400_naming_the_field(make_client: Callable[..., ApiClient],
                                              fields: dict[str, Any], named: str) -> None:
    client = make_client()
    response = _put(client, "true", **fields)
    assert response.status == 400, response
    problem = response.problem()
    assert problem["type"] == "urn:jobkit:problem:bad-field"
    assert named in problem["detail"]
    assert client.get("/jobs").json()["ids"] == []  # nothing was started


@needs_cgroups
def test_status_has_the_limits_and_the_usage(pki: Path) -> None:
    with running_server(pki) as server:
        client = _client(pki, server.address)
        job = client.create("sh", "-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done",
                            limits={"cpu": 0.5, "memory": "256M", "pids": 100})
        status = client.wait(job, timeout=30)
        assert status["status"] == "completed" and status["exit_code"] == 0
        assert status["limits"] == {"cpu": 0.5, "memory": 256 << 20, "pids": 100,
                                    "io_read_bps": None, "io_write_bps": None,
                                    "strict": True}
        assert status["enforced_by"] == "cgroup1" or "cgroup2" in status["enforced_by"]
        assert status["unenforced"] == [] and status["oom_killed"] is False
        assert status["network"] is True
        usage = status["usage"]
        assert usage["source"] == "cgroup"
        assert usage["cpu_user_s"] + usage["cpu_system_s"] > 0
        assert usage["peak_memory"] > 0
        # A job without limits says so.
        plain = client.wait(client.create("true"))
        assert plain["limits"] is None and plain["enforced_by"] is None
        client.close()


@needs_cgroups
def test_a_job_over_its_memory_is_reported_out_of_memory(pki: Path) -> None:
    with running_server(pki) as server:
        client = _client(pki, server.address)
        job = client.create(*ALLOCATE_1G, limits={"memory": "64M"})
        status = client.wait(job, timeout=30)
        assert status["status"] == "killed" and status["signal_name"] == "SIGKILL"
        assert status["oom_killed"] is True
        assert status["error_msg"] == "out of memory (limit 64 MiB)"
        client.close()


def test_a_request_over_a_maximum_is_403_naming_the_limit(pki: Path) -> None:
    policy = ServerPolicy(ClientPolicy(max_limits=Limits(memory="4G", cpu=2)))
    with running_server(pki, resources=policy) as server:
        client = _client(pki, server.address)
        response = _put(client, "true", limits={"memory": "8G"})
        assert response.status == 403, response
        problem = response.problem()
        assert problem["type"] == "urn:jobkit:problem:not-allowed"
        assert problem["limit"] == "memory" and problem["maximum"] == 4 << 30
        assert "memory" in problem["detail"] and "4 GiB" in problem["detail"]
        response = _put(client, "true", limits={"memory": "1G", "cpu": 3})
        assert response.status == 403 and response.problem()["limit"] == "cpu"
        assert client.get("/jobs").json()["ids"] == []
        # At the maximum is fine, and what a job leaves out it gets at the maximum.
        job = client.create("true", limits={"memory": "4G"})
        assert client.wait(job)["limits"]["cpu"] == 2.0
        client.close()


@needs_cgroups
def test_default_limits_apply_to_jobs_that_ask_for_none(pki: Path) -> None:
    policy = ServerPolicy(ClientPolicy(default_limits=Limits(memory="64M", pids=512)))
    with running_server(pki, resources=policy) as server:
        client = _client(pki, server.address)
        status = client.wait(client.create(*ALLOCATE_1G), timeout=30)
        assert status["limits"]["memory"] == 64 << 20 and status["limits"]["pids"] == 512
        # Enforced, not only shown: the kernel killed it.
        assert status["status"] == "killed" and status["oom_killed"] is True
        # A job asking for its own keeps them, and gets the defaults it left out.
        status = client.wait(client.create("true", limits={"memory": "128M"}))
        assert status["limits"]["memory"] == 128 << 20 and status["limits"]["pids"] == 512
        assert status["status"] == "completed"
        client.close()


@needs_cgroups
@pytest.mark.parametrize(("quota", "limits", "over"), [
    ({"max_memory": 256 << 20}, {"memory": "100M"}, {"memory": "100M"}),
    ({"max_cpu": 1.0}, {"cpu": 0.5}, {"cpu": 0.5}),
], ids=["memory", "cpu"])
def test_a_client_over_its_quota_gets_429_while_another_starts_jobs(
        pki: Path, quota: dict[str, Any], limits: dict[str, Any],
        over: dict[str, Any]) -> None:
    name = next(iter(over))
    policy = ServerPolicy(ClientPolicy(**quota))
    with running_server(pki, resources=policy) as server:
        greedy = _client(pki, server.address, "greedy")
        other = _client(pki, server.address, "other")
        first = greedy.create("sleep", "60", limits=limits)
        second = greedy.create("sleep", "60", limits=limits)
        response = _put(greedy, "sleep", "60", limits=over)
        assert response.status == 429, response
        problem = response.problem()
        assert problem["type"] == "urn:jobkit:problem:quota-exceeded"
        assert problem["quota"] == name and f"{name} quota" in problem["detail"]
        # A job without that limit counts as the whole quota: refused too.
        assert _put(greedy, "true").status == 429
        # Nothing else suffers: another client starts jobs, the greedy one reads its own.
        assert other.status(other.create("sleep", "60", limits=limits))["status"] == "running"
        assert greedy.status(first)["status"] == "running"
        # Its share comes back once a job is gone.
        assert greedy.request("DELETE", f"/jobs/{first}").status == 200
        assert _put(greedy, "sleep", "60", limits=over).status == 201
        assert _put(greedy, "sleep", "60", limits=over).status == 429
        # ... or once it has ended (stopped here), deleted or not.
        assert greedy.request("POST", f"/jobs/{second}/stop", {"signal": "SIGKILL"}).status == 200
        assert greedy.wait(second)["status"] == "killed"
        assert _put(greedy, "sleep", "60", limits=over).status == 201
        greedy.close()
        other.close()


def test_per_client_overrides_from_a_toml_file(pki: Path, tmp_path: Path) -> None:
    trusted, folder = new_client_folder(pki, "trusted")
    config = tmp_path / "policy.toml"
    config.write_text(
        'max-limits = { memory = "128M", cpu = 1 }\n'
        'max-jobs = 1\n'
        f'[clients."{trusted}"]\n'
        'max-limits = { memory = "1G" }\n'
        'max-jobs = 3\n'
    )
    policy = policy_from_settings(read_config(config))
    assert policy.for_client(trusted).max_limits == Limits(memory="1G", cpu=1)
    with running_server(pki, resources=policy) as server:
        everyone = _client(pki, server.address)
        special = ApiClient(server.address, folder, trusted)
        response = _put(everyone, "sleep", "60", limits={"memory": "512M"})
        assert response.status == 403 and response.problem()["limit"] == "memory"
        for _ in range(3):
            special.create("sleep", "60", limits={"memory": "512M"})
        # The cpu maximum is the server's: merged limit by limit.
        assert _put(special, "true", limits={"cpu": 2}).status == 403
        assert _put(special, "sleep", "60").status == 429  # its own max-jobs, 3
        everyone.create("sleep", "60")
        assert _put(everyone, "sleep", "60").status == 429  # the server's, 1
        everyone.close()
        special.close()


@pytest.mark.parametrize(("text", "message"), [
    ("max-limts = {}\n", "unknown setting 'max-limts'"),
    ('max-limits = { memory = "lots" }\n', "memory"),
    ('default-limits = { memory = "2G" }\nmax-limits = { memory = "1G" }\n',
     "over the maximum"),
    ("max-cpu = -1\n", "max-cpu"),
    ("max-jobs = \"many\"\n", "max-jobs"),
    ("[clients.x]\nmax-limts = 1\n", "unknown setting 'max-limts'"),
    ("not toml at all [\n", "not valid TOML"),
], ids=lambda value: str(value)[:30])
def test_bad_config_files_are_refused_for_people(tmp_path: Path, text: str,
                                                 message: str) -> None:
    config = tmp_path / "policy.toml"
    config.write_text(text)
    with pytest.raises(ValueError, match=message):
        policy_from_settings(read_config(config))


def test_openapi_describes_limits_and_network(make_client: Callable[..., ApiClient]) -> None:
    document = make_client().get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    request = schemas["JobRequest"]["properties"]
    assert request["limits"] == {"$ref": "#/components/schemas/Limits"}
    assert set(schemas["Limits"]["properties"]) == {*Limits.NAMES, "strict"}
    assert request["network"]["type"] == "boolean"
    status = schemas["JobStatus"]["properties"]
    for key in ("limits", "network", "enforced_by", "unenforced", "oom_killed", "usage"):
        assert key in status, key
    responses = document["paths"]["/jobs"]["put"]["responses"]
    assert "quota" in responses["429"]["description"]
    assert "maximum" in responses["403"]["description"]
