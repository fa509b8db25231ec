"""The Redis client every process builds once, in its wiring: one Redis, or a Redis Cluster.

A cluster URL names seed nodes, `redis+cluster://host:port[,host:port...]` (`rediss+cluster://`
with TLS); the client finds the rest. Either URL may end in `?partitions=N`, the live state's
partition count (services/live/names.py): 1 by default on one Redis, CLUSTER_PARTITIONS on a
cluster. Every process of a mesh must use the same URL's count.
"""

from __future__ import annotations

from typing import cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from services.live import names

# Partitions on a cluster unless the URL says: divisible by 1, 2, 3, 4, 6 and 12 shards, so
# those spread the partitions evenly.
CLUSTER_PARTITIONS = 12
_CLUSTER_SCHEMES = frozenset({"redis+cluster", "rediss+cluster"})


def is_cluster_url(url: str) -> bool:
    return urlsplit(url).scheme.lower() in _CLUSTER_SCHEMES


def partitions_in(url: str) -> int:
    """The partition count a Redis URL asks for, or its topology's default."""
    query = dict(parse_qsl(urlsplit(url).query))
    if "partitions" in query:
        return int(query["partitions"])
    return CLUSTER_PARTITIONS if is_cluster_url(url) else 1


def redis_client(url: str) -> Redis:
    """A pooled client for the URL's topology; the process's live names follow its partition
    count. A cluster client is typed as Redis: Ridemesh sends it only what a cluster serves
    (single-slot scripts, pipelines without transactions, sharded pub/sub)."""
    names.use_partitions(partitions_in(url))
    if is_cluster_url(url):
        return cast(Redis, cluster_client(url))
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "partitions"]
    plain = urlunsplit(parts._replace(query=urlencode(query)))
    # Callers beyond the pool size wait rather than open more sockets.
    pool = BlockingConnectionPool.from_url(plain, max_connections=64, timeout=10)
    return Redis.from_pool(pool)  # aclose() closes the pool and its connections too


def cluster_client(url: str) -> RedisCluster:
    """A Redis Cluster client seeded with the URL's nodes. A command that meets a dead master
    retries (refreshing the slot map) for about as long as a replica takes to be promoted."""
    parts = urlsplit(url)
    credentials, _, hosts = parts.netloc.rpartition("@")
    username, _, password = credentials.partition(":")
    seeds = []
    for place in hosts.split(","):
        host, _, port = place.rpartition(":")
        seeds.append(ClusterNode(host or "127.0.0.1", int(port or 6379)))
    return RedisCluster(
        startup_nodes=seeds,
        username=username or None,
        password=password or None,
        ssl=parts.scheme.lower() == "rediss+cluster",
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=12),
        max_connections=64,
    )
