"""A throwaway Redis Cluster on loopback ports: masters with replicas, failed over on demand."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

from services.ops.mesh.binaries import find_binary
from services.ops.mesh.ports import free_port
from services.ops.mesh.process import ManagedProcess, ProcessError
from services.ops.mesh.redis_server import redis_ping

SLOTS = 16384
FAILING = frozenset({"fail", "fail?"})  # CLUSTER NODES flags of a node seen as down

T = TypeVar("T")
SlotRange = tuple[int, int, int]  # (start_slot, end_slot, master_port)


class ClusterError(ProcessError):
    """The cluster could not be created, a node answered an error, or a wait ran out of time."""


@dataclass(frozen=True)
class ClusterNode:
    """One line of CLUSTER NODES: a node as the answering node sees it."""

    node_id: str
    port: int
    flags: frozenset[str]
    master_id: str  # "-" for a master
    slots: tuple[tuple[int, int], ...]

    @property
    def is_master(self) -> bool:
        """True when flagged master (a failed master keeps its slots until a failover)."""
        return "master" in self.flags


def redis_command(port: int, *args: str, timeout: float = 1.0) -> str:
    """Send one command to the Redis at 127.0.0.1:port; return its bulk or simple-string reply."""
    request = f"*{len(args)}\r\n" + "".join(f"${len(arg.encode())}\r\n{arg}\r\n" for arg in args)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request.encode())
        with sock.makefile("rb") as reply:
            header = reply.readline()
            if header.startswith(b"$"):
                size = int(header[1:])
                return reply.read(size + 2)[:size].decode() if size >= 0 else ""
            if header.startswith(b"+"):
                return header[1:].decode().rstrip()
    raise ClusterError(f"{' '.join(args)} on port {port} answered {header!r}")


def parse_cluster_nodes(text: str) -> list[ClusterNode]:
    """The nodes of a CLUSTER NODES reply; slots being imported or migrated are left out."""
    nodes = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        port = fields[1].split("@")[0].rsplit(":", 1)[-1]
        slots = tuple(_slot_range(item) for item in fields[8:] if not item.startswith("["))
        flags = frozenset(fields[2].split(","))
        nodes.append(ClusterNode(fields[0], int(port or 0), flags, fields[3], slots))
    return nodes


def _slot_range(item: str) -> tuple[int, int]:
    start, _, end = item.partition("-")
    return int(start), int(end or start)


def _fields(text: str) -> dict[str, str]:
    """The `key:value` lines of an INFO or CLUSTER INFO reply."""
    pairs = (line.partition(":") for line in text.splitlines() if not line.startswith("#"))
    return {key: value for key, sep, value in pairs if sep}


def _ranges(nodes: list[ClusterNode]) -> list[SlotRange]:
    return sorted(
        (start, end, node.port) for node in nodes if node.is_master for start, end in node.slots
    )


def _owner(ranges: list[SlotRange], slot: int) -> int | None:
    return next((port for start, end, port in ranges if start <= slot <= end), None)


def _free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


class RedisClusterServer:
    """`masters` masters with `replicas_per_master` replicas each, one `redis-server` per node in
    `directory/node-<port>`; no persistence unless `persist=True` (append-only files)."""

    stop_grace: float = 10.0

    def __init__(
        self,
        directory: Path,
        masters: int = 3,
        replicas_per_master: int = 1,
        persist: bool = False,
        node_timeout_ms: int = 1000,
        ready_timeout: float = 30.0,
    ) -> None:
        if masters < 3:
            raise ValueError("a Redis Cluster needs at least 3 masters")
        self.directory = Path(directory)
        self.masters = masters
        self.replicas_per_master = replicas_per_master
        self.persist = persist
        self.node_timeout_ms = node_timeout_ms
        self.ready_timeout = ready_timeout
        count = masters * (1 + replicas_per_master)
        # Explicit bus ports: the default (port + 10000) fails for client ports above 55535.
        ports = _free_ports(2 * count)
        self.ports = ports[:count]
        self._bus_ports = dict(zip(self.ports, ports[count:], strict=True))
        self._processes: dict[int, ManagedProcess] = {}
        self._killed: dict[int, list[tuple[int, int]]] = {}  # port -> the slots it served

    @property
    def url(self) -> str:
        """Seed nodes (the first three) in our own `redis+cluster://` scheme."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports[:3])

    @property
    def pids(self) -> list[int]:
        """PIDs of the node processes we started, in `ports` order."""
        return [self._processes[port].pid for port in self.ports]

    def start(self) -> Self:
        """Start every node, create the cluster, and wait until every slot is served and every
        replica is in sync; on failure, stop whatever was started."""
        try:
            for port in self.ports:
                self._spawn(port)
            for port in self.ports:
                self._processes[port].wait_ready(partial(redis_ping, port), self.ready_timeout)
            self._create()
            self._poll(self._healthy, "serving every slot with replicas in sync")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, grace: float | None = None) -> None:
        """Stop every node by its PID, replicas first: a master shutting down waits for
        lagging replicas."""
        try:
            replicas = {node.port for node in self._nodes() if "slave" in node.flags}
        except ClusterError:
            replicas = set()
        for port in sorted(self._processes, key=lambda port: port not in replicas):
            self._processes[port].stop(self.stop_grace if grace is None else grace)

    def cluster_info(self, port: int) -> dict[str, str]:
        """CLUSTER INFO of the node on `port`."""
        return _fields(redis_command(port, "CLUSTER", "INFO"))

    def masters_by_slot_range(self) -> list[SlotRange]:
        """Current (start_slot, end_slot, master_port) ranges, as a live node sees them."""
        return _ranges(self._nodes())

    def master_port_for_slot(self, slot: int) -> int:
        """Port of the master currently serving `slot`."""
        port = _owner(self.masters_by_slot_range(), slot)
        if port is None:
            raise ClusterError(f"no master serves slot {slot}")
        return port

    def replica_ports_of(self, master_port: int) -> list[int]:
        """Ports of the nodes the cluster lists as replicas of the node on `master_port`."""
        nodes = self._nodes()
        ids = {node.node_id for node in nodes if node.port == master_port}
        return sorted(node.port for node in nodes if node.master_id in ids)

    def kill(self, port: int, timeout: float = 10.0) -> None:
        """SIGKILL the node on `port` (its PID only) and wait for it to exit."""
        process = self._processes[port]
        if not process.running:
            raise ClusterError(f"node {port} is not running")
        served = [
            (start, end) for start, end, owner in self.masters_by_slot_range() if owner == port
        ]
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout)
        process.stop()  # closes its log
        self._killed[port] = served

    def wait_failover(self, old_master_port: int, timeout: float = 30.0) -> int:
        """Wait until the slots the killed `old_master_port` served belong, in every live node's
        view, to one node that reports itself master, and every live node is ok; return its port."""
        served = self._killed.get(old_master_port)
        if not served:
            raise ClusterError(f"node {old_master_port} was not a master killed by kill()")
        check = partial(self._new_master, old_master_port, served)
        return self._poll(check, f"failed over from {old_master_port}", timeout)

    def restart(self, port: int) -> None:
        """Start a killed node again from its directory (its nodes.conf keeps its identity); it
        rejoins, as a replica if its slots failed over. Waits until it is ok and in sync."""
        if self._processes[port].running:
            raise ClusterError(f"node {port} is still running")
        self._spawn(port)
        self._killed.pop(port, None)
        self._processes[port].wait_ready(partial(redis_ping, port), self.ready_timeout)
        self._poll(partial(self._rejoined, port), f"node {port} rejoined")

    def _argv(self, port: int, directory: Path) -> list[str]:
        argv = [str(find_binary("redis-server")), "--port", str(port), "--bind", "127.0.0.1"]
        argv += ["--dir", str(directory), "--protected-mode", "no", "--daemonize", "no"]
        argv += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        argv += ["--cluster-port", str(self._bus_ports[port])]
        argv += ["--cluster-node-timeout", str(self.node_timeout_ms)]
        # A master waits 5s by default for more replicas before a full sync; here nobody else comes.
        argv += ["--repl-diskless-sync-delay", "0"]
        return [*argv, "--appendonly", "yes" if self.persist else "no", "--save", ""]

    def _spawn(self, port: int) -> None:
        directory = self.directory / f"node-{port}"
        directory.mkdir(parents=True, exist_ok=True)
        process = ManagedProcess(
            f"redis-cluster node {port}", self._argv(port, directory), directory / "redis.log"
        )
        self._processes[port] = process.start()

    def _create(self) -> None:
        """`redis-cli --cluster create`: assign the slots, pair replicas with masters."""
        argv = [str(find_binary("redis-cli")), "--cluster", "create"]
        argv += [f"127.0.0.1:{port}" for port in self.ports]
        argv += ["--cluster-replicas", str(self.replicas_per_master), "--cluster-yes"]
        env = {**os.environ, "TERM": "dumb"}  # no colour codes in the output we report
        try:
            done = subprocess.run(
                argv, capture_output=True, env=env, timeout=self.ready_timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            output = ((exc.stdout or b"") + (exc.stderr or b"")).decode(errors="replace")
            raise ClusterError(f"{argv[0]} --cluster create timed out; output:\n{output}") from exc
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode(errors="replace")
            raise ClusterError(f"{argv[0]} --cluster create exited {done.returncode}:\n{output}")

    def _poll(self, check: Callable[[], T | None], what: str, timeout: float | None = None) -> T:
        """Poll `check` until it returns a truthy value; fail if a node dies or time runs out."""
        limit = self.ready_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        delay = 0.02
        while True:
            result = check()
            if result:
                return result
            for port, process in self._processes.items():
                if port not in self._killed and process.returncode is not None:
                    tail = process.log_tail()
                    raise ClusterError(
                        f"node {port} exited with {process.returncode}; log:\n{tail}"
                    )
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"Redis Cluster not {what} after {limit}s; logs in {self.directory}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)

    def _live_ports(self) -> list[int]:
        return [
            port for port in self.ports if port in self._processes and self._processes[port].running
        ]

    def _view(self, port: int) -> list[ClusterNode]:
        return parse_cluster_nodes(redis_command(port, "CLUSTER", "NODES"))

    def _nodes(self) -> list[ClusterNode]:
        """The cluster as the first live node that answers sees it."""
        for port in self._live_ports():
            try:
                return self._view(port)
            except (OSError, ClusterError):
                continue
        raise ClusterError("no live node of the Redis Cluster answers")

    def _online_replicas(self, port: int) -> int:
        info = _fields(redis_command(port, "INFO", "replication"))
        return sum(
            key.startswith("slave") and "state=online" in value for key, value in info.items()
        )

    def _healthy(self) -> bool:
        """Every node ok and seeing the full shape; every master's replicas in sync."""
        try:
            for port in self.ports:
                info = self.cluster_info(port)
                if info.get("cluster_state") != "ok" or not self._full_shape(self._view(port)):
                    return False
            masters = {port for _, _, port in self.masters_by_slot_range()}
            enough = self.replicas_per_master
            return all(self._online_replicas(port) >= enough for port in masters)
        except (OSError, ClusterError):
            return False

    def _full_shape(self, view: list[ClusterNode]) -> bool:
        """All nodes known and none failing; all slots on `masters` masters with their replicas."""
        if len(view) != len(self.ports) or any(FAILING & node.flags for node in view):
            return False
        if sum(end - start + 1 for start, end, _ in _ranges(view)) != SLOTS:
            return False
        masters = [node for node in view if node.is_master and node.slots]
        replicas = Counter(node.master_id for node in view if "slave" in node.flags)
        wanted = self.replicas_per_master
        return len(masters) == self.masters and all(replicas[m.node_id] == wanted for m in masters)

    def _new_master(self, old: int, served: list[tuple[int, int]]) -> int | None:
        """The port serving `served` in every live view once it is a master and all are ok."""
        try:
            views = {port: self._view(port) for port in self._live_ports()}
            if any(self.cluster_info(port).get("cluster_state") != "ok" for port in views):
                return None
        except (OSError, ClusterError):
            return None
        owners = {_owner(_ranges(view), start) for view in views.values() for start, _ in served}
        if len(owners) != 1:
            return None
        new = owners.pop()
        if new is None or new == old or new not in views:
            return None
        myself = [node for node in views[new] if "myself" in node.flags]
        return new if myself and myself[0].is_master else None

    def _rejoined(self, port: int) -> bool:
        """The node is ok, in sync with its master if a replica, and every live node sees it
        healthy in the same role."""
        try:
            if self.cluster_info(port).get("cluster_state") != "ok":
                return False
            info = _fields(redis_command(port, "INFO", "replication"))
            views = [self._view(live) for live in self._live_ports()]
        except (OSError, ClusterError):
            return False
        if info.get("role") != "master" and info.get("master_link_status") != "up":
            return False
        seen = {
            (node.master_id, node.flags - {"myself"})
            for view in views
            for node in view
            if node.port == port
        }
        return len(seen) == 1 and not FAILING & next(iter(seen))[1]

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
