"""jobkit's remote client: the `JobPool` verbs against a jobkit server.

    from jobkit.client import Client

    with Client("build-box:8443", certs="~/jobkit-pki/clients/alice") as jobs:
        job_id = jobs.create("make", ["-j4"])
        for chunk in jobs.follow(job_id, "stdout"):
            print(chunk.decode(), end="")
        print(jobs.wait(job_id).exit_code)

Built on the standard library's ``http.client`` and ``ssl`` (see
``docs/client.md``); it imports neither the server nor ``cryptography``.
"""

from jobkit.client.follower import RemoteFollower
from jobkit.client.remote import DEFAULT_TIMEOUT, Client
from jobkit.pki.layout import default_client_dir
from jobkit.wire import DEFAULT_SERVER

__all__ = [
    "DEFAULT_SERVER",
    "DEFAULT_TIMEOUT",
    "Client",
    "RemoteFollower",
    "default_client_dir",
]
