"""What the tests share: helpers to import and fixtures loaded as pytest plugins.

tests/conftest.py loads the fixture modules through ``pytest_plugins``; test
modules import helpers from here, never from a conftest or another test module.

- `waiting`: `wait_until`, the one way a test waits (never ``sleep``).
- `procs`: processes as ``/proc`` shows them: alive, groups, children, descriptors.
- `pools`: the ``backend`` and ``pool`` fixtures over every built-in backend.
- `pki`: the run's PKI (``pki``, with alice, bob and `ADMIN`), fresh client
  identities, certificates forged on purpose.
- `api`: `ApiClient`, one keep-alive HTTPS connection with a client certificate,
  and raw TLS sockets for what it cannot send.
- `servers`: `JobServer` in this process (``server``, ``make_client``,
  ``client``, ``admin``).
- `processes`: ``jobkit serve`` in a subprocess (`ServerProcess`, `serving`,
  and the ``live_server``, ``pki_root`` and ``certs`` fixtures).
- `cli`: the real ``jobkit`` executable in a subprocess (`run_jobkit`, `Run`).
- `fifos`: the ``fifo`` fixture and `release`, to hold a job until the test says.
- `load`: the load driver of tests/security/test_load.py and benchmarks/bench_load.py.
- `stream_load`: many output streams at once: gated paced jobs, follows checked by
  SHA-256, unread downloads, a timed client (tests/security/test_stream_load.py and
  benchmarks/bench_streams.py).
- `imports`: which module imports what, read from the source.
- `measured`: which subprocesses .ci/run's line coverage counts.
"""
