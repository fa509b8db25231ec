"""Free loopback TCP ports for throwaway servers, and the small HTTP checks run against them."""

import http.client
import socket


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on `host` that nothing was listening on a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.2) -> bool:
    """Return True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_get(
    port: int, path: str, host: str = "127.0.0.1", timeout: float = 1.0
) -> tuple[int, bytes]:
    """GET http://host:port/path: the status and the body. Raises OSError when nothing answers."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def http_ok(port: int, path: str, timeout: float = 1.0) -> bool:
    """True when GET http://127.0.0.1:port/path answers 200 (a readiness check)."""
    try:
        return http_get(port, path, timeout=timeout)[0] == 200
    except OSError:
        return False
