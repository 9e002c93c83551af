"""The tour of `local_pool.py`, run by a jobkit server instead of a local pool.

    jobkit serve                                     # in another terminal
    python examples/remote_client.py [HOST:PORT [CERTS]]

With no arguments it uses JOBKIT_SERVER and JOBKIT_CERTS, or the defaults
that ``jobkit serve`` sets up (127.0.0.1:8443, the current user's client
certificate in the default PKI).  The output is the same as local_pool.py's.
"""

from __future__ import annotations

import os
import sys

from local_pool import tour  # the very same function

from jobkit.client import DEFAULT_SERVER, Client


def main() -> None:
    server = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("JOBKIT_SERVER",
                                                                   DEFAULT_SERVER)
    certs = sys.argv[2] if len(sys.argv) > 2 else os.environ.get("JOBKIT_CERTS")
    with Client(server, certs) as client:
        tour(client)


if __name__ == "__main__":
    main()
