"""aiohttp imported without parsing the system's CA bundle.

When `aiohttp` is imported, its client builds two verified SSL contexts (connector.py, done at
import since aiohttp#9029 so that no event loop blocks on it later). Each context parses the
whole CA bundle: 470 M of the 1,150 M instructions of `python3 -c 'import aiohttp, pynvml'`
on our CI machine (callgrind), and 2 MiB of RSS. The daemon serves HTTP and never uses aiohttp's
client: its Engine client is the standard library's, and it gives its TLS context its own CA
file. So while the serve path imports aiohttp, `ssl.SSLContext.load_default_certs` gives new
contexts the system's CA *directory* instead, where OpenSSL looks a certificate up when one is
verified rather than parsing them all at load. Where the system has no CA directory, contexts
load the default certificates as usual. Nothing else changes: the stdlib method is put back
when the import ends, and only contexts made meanwhile are affected.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterator


@contextlib.contextmanager
def ca_directory_only() -> Iterator[None]:
    """While this block runs, default SSL contexts get the CA directory, not the CA bundle."""
    original = ssl.SSLContext.load_default_certs
    capath = ssl.get_default_verify_paths().capath  # None where the directory does not exist

    def load_default_certs(self: ssl.SSLContext,
                           purpose: ssl.Purpose = ssl.Purpose.SERVER_AUTH) -> None:
        if capath is None:
            original(self, purpose)
        else:
            self.load_verify_locations(capath=capath)

    ssl.SSLContext.load_default_certs = load_default_certs  # type: ignore[method-assign]
    try:
        yield
    finally:
        ssl.SSLContext.load_default_certs = original  # type: ignore[method-assign]
