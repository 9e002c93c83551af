import re
from pathlib import Path

import jobkit

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_all_is_explicit_and_sorted() -> None:
    assert isinstance(jobkit.__all__, list) and jobkit.__all__
    assert sorted(jobkit.__all__) == jobkit.__all__


def test_every_public_name_is_documented() -> None:
    # The one list of public names is jobkit.__all__; a name added to it must
    # be explained in docs/ (the version excepted: `jobkit --version` shows it).
    documented = " ".join(path.read_text() for path in DOCS.glob("*.md"))
    missing = [name for name in jobkit.__all__
               if name != "__version__" and not re.search(rf"\b{name}\b", documented)]
    assert missing == []


def test_every_name_exists() -> None:
    for name in jobkit.__all__:
        assert getattr(jobkit, name) is not None


def test_error_tree() -> None:
    assert issubclass(jobkit.JobNotFound, jobkit.JobkitError)
    assert issubclass(jobkit.JobNotFound, LookupError)
    assert issubclass(jobkit.BackendNotFound, LookupError)
    assert issubclass(jobkit.ExecutorNotFound, LookupError)
    assert issubclass(jobkit.ExecutorUnavailable, jobkit.JobkitError)
    assert issubclass(jobkit.PoolClosed, RuntimeError)
    for name in ("ConnectionFailed", "AuthenticationFailed", "ServerError"):
        assert issubclass(getattr(jobkit, name), jobkit.ClientError)


def test_state_values() -> None:
    assert [s.value for s in jobkit.State] == [
        "pending", "running", "error", "completed", "killed", "lost"]
    assert [s.value for s in jobkit.State if not s.final] == ["pending", "running"]
    assert jobkit.State("completed") is jobkit.State.COMPLETED


def test_core_imports_no_http_or_terminal_code() -> None:
    import subprocess
    import sys

    code = (
        "import sys, jobkit; from jobkit import JobPool; JobPool().close(); "
        "heavy = ('bottle', 'cheroot', 'rich', 'click', 'cryptography', 'ray'); "
        "bad = [m for m in heavy if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_every_public_name_has_a_home() -> None:
    assert sorted([*jobkit._EXPORTS, "__version__"]) == jobkit.__all__
    assert set(dir(jobkit)) >= set(jobkit.__all__)


def test_unknown_names_raise_attribute_error() -> None:
    import pytest

    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        jobkit.Nope  # noqa: B018
