"""One HTTP/1.0 POST over a unix socket: how the tests and the benches talk to the plugin socket,
as Docker does. The standard library's HTTP client speaks TCP only, and a Docker SDK or aiohttp
connector would be a heavier dependency for a helper that also runs on the GPU host's benches.
"""

from __future__ import annotations

import socket
from pathlib import Path


def unix_post(path: Path, route: str, body: bytes = b"", *, timeout: float = 2.0) -> bytes | None:
    """The whole answer (status line, headers, body), or None when nothing answers at `path`
    or what answers is not HTTP."""
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(f"POST {route} HTTP/1.0\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                         + body)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
    except OSError:
        return None
    return data if data.startswith(b"HTTP/1.") else None
