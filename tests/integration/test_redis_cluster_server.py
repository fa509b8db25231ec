"""A real Redis Cluster: every slot served with replicas, a key survives its master's SIGKILL, stop
by PID leaves nothing running."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import pytest
from redis.cluster import RedisCluster
from redis.crc import key_slot

from services.ops.mesh.redis_cluster import SLOTS, RedisClusterServer
from tests.waiting import alive

pytestmark = pytest.mark.integration


def test_three_masters_with_one_replica_each_serve_every_slot(tmp_path: Path) -> None:
    with RedisClusterServer(tmp_path) as cluster:
        ranges = cluster.masters_by_slot_range()
        assert ranges[0][0] == 0
        assert ranges[-1][1] == SLOTS - 1
        assert all(end + 1 == start for (_, end, _), (start, _, _) in pairwise(ranges))
        masters = {port for _, _, port in ranges}
        assert len(masters) == 3
        replicas = {master: cluster.replica_ports_of(master) for master in masters}
        assert all(len(ports) == 1 for ports in replicas.values())
        nodes = masters | {port for ports in replicas.values() for port in ports}
        assert sorted(nodes) == sorted(cluster.ports)
        for port in cluster.ports:
            info = cluster.cluster_info(port)
            assert info["cluster_state"] == "ok"
            assert info["cluster_slots_assigned"] == str(SLOTS)
        seeds = ",".join(f"127.0.0.1:{port}" for port in cluster.ports[:3])
        assert cluster.url == f"redis+cluster://{seeds}"
        pids = cluster.pids
        assert len(set(pids)) == 6
        assert all(alive(pid) for pid in pids)
    assert not any(alive(pid) for pid in pids)


def _write_replicated(port: int, key: str, value: str) -> int:
    """Write `key` through a cluster client; return the port of the master that took it, once
    WAIT says a replica has the write."""
    client = RedisCluster(host="127.0.0.1", port=port, decode_responses=True)
    try:
        client.set(key, value)
        assert client.get(key) == value
        node = client.nodes_manager.get_node_from_slot(key_slot(key.encode()))
        # WAIT counts the writes of its own connection; the node's pool hands back the SET's one.
        assert client.get_redis_connection(node).wait(1, 1000) >= 1
        return int(node.port)
    finally:
        client.close()


def _read(port: int, key: str) -> bytes | str | None:
    """`key` through a fresh cluster client seeded with `port`."""
    client = RedisCluster(host="127.0.0.1", port=port, decode_responses=True)
    try:
        return client.get(key)
    finally:
        client.close()


def test_a_replicated_key_survives_its_masters_sigkill(tmp_path: Path) -> None:
    key = "ride:42:state"
    with RedisClusterServer(tmp_path) as cluster:
        started = cluster.pids
        master = _write_replicated(cluster.ports[0], key, "en-route")
        slot = key_slot(key.encode())
        assert cluster.master_port_for_slot(slot) == master
        (replica,) = cluster.replica_ports_of(master)

        cluster.kill(master)
        assert not alive(started[cluster.ports.index(master)])
        new_master = cluster.wait_failover(master)

        assert new_master == replica
        assert cluster.master_port_for_slot(slot) == new_master
        survivor = next(port for port in cluster.ports if port != master)
        assert _read(survivor, key) == "en-route"

        cluster.restart(master)
        assert cluster.replica_ports_of(new_master) == [master]
        everyone = {*started, *cluster.pids}
    assert not any(alive(pid) for pid in everyone)
