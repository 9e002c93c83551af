"""The load driver's old home: it is `tests.support.load` (benchmarks/bench_load.py and
tests/security/test_load.py still import it from here)."""

from tests.support.load import Figures, LoadClient, expected_output, report, run_load

__all__ = ["Figures", "LoadClient", "expected_output", "report", "run_load"]
