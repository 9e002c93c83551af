"""``jobkit serve``'s executor flags: what is refused before anything starts (no Ray needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cli import base_env, run_jobkit


@pytest.mark.parametrize(("flags", "code", "words"), [
    (["--executor", "ray"], 2, "--executor ray needs --ray-address URL"),
    (["--ray-address", "http://127.0.0.1:1"], 2, "go with --executor ray"),
    (["--ray-python", "python3"], 2, "go with --executor ray"),
    (["--executor", "nope"], 1, "unknown executor 'nope' (known: local, ray)"),
])
def test_bad_executor_flags_are_one_line(flags: list[str], code: int, words: str,
                                         tmp_path: Path) -> None:
    run = run_jobkit("serve", "--listen", "127.0.0.1:0", "--state-dir", tmp_path / "state",
                     *flags, env=base_env(XDG_DATA_HOME=str(tmp_path / "data")))
    assert run.code == code
    assert words in run.error_line()
    assert not (tmp_path / "state").exists() or not any((tmp_path / "state").iterdir())
