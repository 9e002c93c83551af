"""The ``jobkit`` command (placeholder until the CLI lands: prints the version)."""

from __future__ import annotations

import sys

from jobkit._version import __version__


def main(argv: list[str] | None = None) -> int:
    print(f"jobkit {__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
