"""jobkit.pki.layout: the default folders, and a package that finds files without cryptography."""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jobkit import pki
from jobkit.pki import crl, issue, layout, lifecycle, record, trust

#: The modules whose public names the package exports.
EXPORTING = (layout, issue, record, crl, lifecycle, trust)


@pytest.fixture
def carol(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A user named carol whose home folder is tmp_path/home; no XDG_DATA_HOME."""
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setattr(getpass, "getuser", lambda: "carol")
    return home


def test_default_folders_follow_xdg(carol: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", "/srv/data")
    assert pki.default_pki_dir() == Path("/srv/data/jobkit/pki")
    assert pki.default_client_dir() == Path("/srv/data/jobkit/pki/clients/carol")
    assert pki.client_folder() == "/srv/data/jobkit/pki/clients/carol"


@pytest.mark.parametrize("xdg", [None, "relative/data", ""], ids=["unset", "relative", "empty"])
def test_default_folders_without_a_usable_xdg(carol: Path, monkeypatch: pytest.MonkeyPatch,
                                              xdg: str | None) -> None:
    # The XDG spec says a relative path is invalid and must be ignored.
    if xdg is not None:
        monkeypatch.setenv("XDG_DATA_HOME", xdg)
    expected = carol / ".local" / "share" / "jobkit" / "pki"
    assert pki.default_pki_dir() == expected
    assert pki.default_client_dir() == expected / "clients" / "carol"
    assert pki.client_folder() == str(expected / "clients" / "carol")


def test_a_given_folder_is_used_with_its_home_expanded(carol: Path) -> None:
    assert pki.client_folder("~/certs/alice") == str(carol / "certs" / "alice")
    assert pki.client_folder(Path("relative/alice")) == "relative/alice"
    assert pki.client_folder("") == ""  # not the default: the caller said ""


def test_no_home_folder(carol: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os.path, "expanduser", lambda path: path)  # as with no HOME, no passwd
    with pytest.raises(pki.PkiError, match="cannot find a home folder for the default PKI"):
        pki.client_folder()
    # An absolute XDG_DATA_HOME needs no home folder.
    monkeypatch.setenv("XDG_DATA_HOME", "/srv/data")
    assert pki.default_client_dir() == Path("/srv/data/jobkit/pki/clients/carol")


def test_no_usable_user_name(carol: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_user() -> str:
        raise OSError("No username set in the environment")

    monkeypatch.setattr(getpass, "getuser", no_user)
    with pytest.raises(pki.PkiError, match="cannot tell the current user's name"):
        pki.client_folder()
    monkeypatch.setattr(getpass, "getuser", lambda: "../evil")
    with pytest.raises(pki.PkiError, match=r"'\.\./evil' cannot be a client name"):
        pki.default_client_dir()
    # A folder given outright needs no user name.
    assert pki.client_folder("/srv/certs") == "/srv/certs"


def test_the_cli_says_when_there_is_no_default_folder(tmp_path: Path) -> None:
    # getpass reads LOGNAME first; a name that cannot be a folder leaves no default.
    env = {key: value for key, value in os.environ.items() if not key.startswith("JOBKIT_")}
    env.update(LOGNAME="../evil", XDG_DATA_HOME=str(tmp_path), JOBKIT_SERVER="127.0.0.1:1")
    done = subprocess.run([sys.executable, "-m", "jobkit", "list"], capture_output=True,
                          text=True, env=env, timeout=60, check=False)
    assert done.returncode == 6, done
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "jobkit: error: the user name '../evil' cannot be a client name (invalid client name "
        "'../evil': it must not start with '.'); make certificates with 'jobkit certs init' "
        "instead; give a client folder with --certs"
    ]


def test_client_dir_is_checked(tmp_path: Path) -> None:
    assert pki.client_dir(tmp_path, "alice") == tmp_path / "clients" / "alice"
    with pytest.raises(pki.InvalidName, match=r"must not start with '\.'"):
        pki.client_dir(tmp_path, "..")


# -- the package ------------------------------------------------------------------------


def test_all_is_explicit_sorted_and_complete() -> None:
    for module in (pki, *EXPORTING):
        assert len(set(module.__all__)) == len(module.__all__)
    homes = {name: module for module in EXPORTING for name in module.__all__}
    assert sum(len(module.__all__) for module in EXPORTING) == len(homes)  # no clashes
    assert set(pki.__all__) == set(homes)
    # ruff's order (RUF022): constants, then classes, then functions, each sorted.
    assert pki.__all__ == sorted(pki.__all__, key=lambda name: (
        0 if name.isupper() else 1 if name[0].isupper() else 2, name))
    for name in pki.__all__:
        assert getattr(pki, name) is getattr(homes[name], name), name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        pki.nope  # noqa: B018


def test_finding_files_loads_no_cryptography(tmp_path: Path) -> None:
    # What the client and the CLI do on every command, in a fresh interpreter.
    code = (
        "import json, sys\n"
        "import jobkit.pki\n"
        "from jobkit.pki import PkiError, client_folder, layout\n"
        "client_folder('~/certs')\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    modules = set(json.loads(done.stdout))
    heavy = ("cryptography", "jobkit.pki.issue", "jobkit.pki.trust", "jobkit.pki.record",
             "jobkit.server", "pathlib", "ssl", "attrs")
    assert [m for m in modules if any(m == h or m.startswith(h + ".") for h in heavy)] == []
