"""Free loopback TCP ports for throwaway servers."""

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
