"""Old home of the subprocess server helpers: they are in `tests.support.processes`
(and the fixtures ``pki_root``, ``live_server`` and ``certs`` are loaded for every test).
Re-exported only for modules written against this path."""

from tests.support.pki import new_client
from tests.support.processes import make_pki, serving

__all__ = ["make_pki", "new_client", "serving"]
