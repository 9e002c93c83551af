"""Backends come from plugins: the built-ins, an installed package, broken ones."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import jobkit
from jobkit import BackendNotFound, JobPool
from jobkit.core import plugins

ROOT = Path(__file__).resolve().parents[2]


def test_builtins_are_registered_as_plugins() -> None:
    assert {"memory", "tempfile", "ring"} <= set(plugins.backend_names())
    for module in plugins.DEFAULT_PLUGINS:
        assert plugins.pm.get_plugin(module) is not None


def test_unknown_backend_names_the_known_ones() -> None:
    with pytest.raises(BackendNotFound, match=r"known: .*memory"):
        JobPool("nope")


class Upper:
    """A plugin registered in-process, the way a test or an app would."""

    @jobkit.hookimpl
    def jobkit_register_backends(self, register):  # type: ignore[no-untyped-def]
        from jobkit.backends.memory import MemoryStore

        class UpperStore(MemoryStore):
            def fill_from(self, fd: int, limit: int) -> int:
                data = os.read(fd, limit)
                if data:
                    self.append(data.upper())
                return len(data)

        class UpperBackend:
            def open_store(self, job_id: str, stream: str) -> UpperStore:
                return UpperStore()

        register("upper", UpperBackend)
        register("memory", UpperBackend)  # a clash: the built-in must win


@pytest.fixture
def upper_plugin():
    plugin = Upper()
    plugins.pm.register(plugin, "upper-test")
    plugins.reset()
    yield
    plugins.pm.unregister(plugin)
    plugins.reset()


def test_a_registered_plugin_is_used_by_name_and_cannot_hijack(upper_plugin) -> None:
    with pytest.warns(RuntimeWarning, match="'memory' registered twice"):
        names = plugins.backend_names()
    assert "upper" in names
    with JobPool("upper") as pool:
        job = pool.create("echo", ["shout"])
        pool.wait(job, 10)
        assert pool.output(job).stdout == b"SHOUT\n"
        plain = pool.create("echo", ["quiet"], backend="memory")
        pool.wait(plain, 10)
        assert pool.output(plain).stdout == b"quiet\n"


USE_LOGFILES = """
import os, sys
from jobkit import JobPool
from jobkit.core import plugins
print(",".join(plugins.backend_names()))
if "logfiles" in plugins.backend_names():
    with JobPool("logfiles", {"directory": sys.argv[1]}) as pool:
        job = pool.create("echo", ["logged"])
        pool.wait(job, 10)
        print(pool.output(job).stdout.decode().strip())
        pool.delete(job)
    print(sorted(os.listdir(sys.argv[1])))
"""


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Install examples/jobkit-logfiles into a private target folder."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(target),
            str(ROOT / "examples" / "jobkit-logfiles"),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return target


def run_with(site: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]), **env}
    return subprocess.run(
        [sys.executable, "-c", USE_LOGFILES, *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
    )


def test_an_installed_plugin_is_found_through_its_entry_point(installed_example, tmp_path) -> None:
    out = run_with(installed_example, str(tmp_path))
    assert out.returncode == 0, out.stderr
    names, text, files = out.stdout.splitlines()
    assert "logfiles" in names.split(",")
    assert text == "logged"
    kept = ast.literal_eval(files)  # the log files outlive the deleted job
    assert [name.rsplit("-", 1)[1] for name in kept] == ["1.stderr.log", "1.stdout.log"]


def test_autoloading_can_be_turned_off(installed_example, tmp_path) -> None:
    out = run_with(installed_example, str(tmp_path), JOBKIT_NO_PLUGINS="1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["file,memory,ring,tempfile"]


def test_a_broken_plugin_warns_and_the_rest_works(tmp_path: Path) -> None:
    dist = tmp_path / "broken_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[jobkit]\nbroken = broken_plugin_mod\n")
    (tmp_path / "broken_plugin_mod.py").write_text("raise RuntimeError('boom at import')\n")
    out = run_with(tmp_path, str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "could not load plugin 'broken'" in out.stderr and "boom at import" in out.stderr
    assert out.stdout.splitlines() == ["file,memory,ring,tempfile"]
