"""Run a few jobs with a local `JobPool`.

    python examples/local_pool.py

The work is in `tour`, written against the `JobPool` interface.
`examples/remote_client.py` runs the very same function against a jobkit
server, through `jobkit.client.Client`: only the object changes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from jobkit import JobNotFound, JobPool

if TYPE_CHECKING:
    from jobkit.client import Client


def tour(jobs: JobPool | Client) -> None:
    """Create, wait, read, follow, stop and delete jobs; print what happens."""
    job = jobs.create("sh", ["-c", "echo hello; echo oops >&2; exit 3"])
    status = jobs.wait(job, timeout=10)
    print(f"job {job}: {status.state}, exit status {status.exit_code}")
    output = jobs.output(job)
    print(f"  stdout {output.stdout!r}, stderr {output.stderr!r}")

    # Output as it is written, from a job that takes its time.
    ticker = jobs.create("sh", ["-c", "for i in 1 2 3; do echo tick $i; sleep 0.1; done"])
    for chunk in jobs.follow(ticker, "stdout"):
        for line in chunk.decode().splitlines():
            print(f"job {ticker} says: {line}")

    # A job that would run for a minute, stopped.
    sleeper = jobs.create("sleep", ["60"], env={"GREETING": "hi"})
    jobs.stop(sleeper, "TERM")
    status = jobs.wait(sleeper, timeout=10)
    print(f"job {sleeper}: {status.state}, signal {status.signal}")

    # A command that does not exist is a job in error state, not an exception.
    missing = jobs.create("no-such-command")
    status = jobs.wait(missing, timeout=10)
    print(f"job {missing}: {status.state}: {status.error}")

    print(f"jobs: {jobs.list()}")
    for job_id in jobs.list():
        jobs.delete(job_id)
    try:
        jobs.status(job)
    except JobNotFound as error:
        print(f"after delete: {error}")


def main() -> None:
    with JobPool() as pool:
        tour(pool)


if __name__ == "__main__":
    main()
