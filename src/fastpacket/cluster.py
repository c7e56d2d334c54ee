"""The bus between servers: groups (rooms) that span worker processes and
machines, over Redis pub/sub.

A server given a bus (``fp.aio.serve(..., bus="redis://127.0.0.1:6379/0")``,
``fastpacket.run(..., bus=...)``, ``fastpacket serve APP --bus URL``) makes
each of its groups one group with the groups of the same name on every
other server sharing the bus: ``group.send`` and ``group.send_batch`` reach
the members on every server. This is the established design of
Socket.IO's Redis adapter and Colyseus' RedisPresence: every server
publishes its room sends to Redis and delivers what it receives to its own
members.

How it works:

- a server subscribes to a group's channel (``NAMESPACE:group:s:NAME`` for
  a str name, ``NAMESPACE:group:i:NAME`` for an int) while the group has
  members on that server, and unsubscribes when the last one leaves;
- what one loop iteration sends to a group is one PUBLISH: a 16-byte header
  (magic, version, flags, run count, the sending server's random 64-bit id),
  one u32 per run of ``send`` or ``send_batch`` packets, then the packets,
  packed into aggregate frames (lz4 when it pays, as ``fp.Aggregator``
  decides) where the layout has a type field;
- a server skips its own messages (its members got the packets directly)
  and delivers the others' to its members natively: ``send`` packets with
  each member's own seq, ``send_batch`` packets byte for byte;
- one publishing connection per Redis node, used by one task in order, so
  what one server sends to a group reaches every member in the order it
  was sent;
- the publish backlog is bounded (``max_backlog_bytes``): past it, new
  messages are dropped and counted (``bus_dropped_packets_total{reason=
  "backlog"}``), never queued without end.

Guarantees: while Redis is reachable, every packet sent to a group reaches
every member on every server exactly once, and the packets one server sends
to a group arrive in the order it sent them. Across an outage it is
at-most-once: while Redis is unreachable, local members still get every
send, sends to the other servers are dropped and counted
(``bus_dropped_packets_total{reason="disconnected"}``, one log line per
outage), and the bus reconnects with capped backoff (``RECONNECT_MAX_S``),
resubscribes every group with members here and resumes; what was published
during the outage is not replayed. There is no order between different
senders (two servers' sends interleave as Redis receives them).

Redis Cluster: ``redis+cluster://host:port`` (or ``rediss+cluster://``;
any node of the cluster) uses sharded pub/sub (SPUBLISH/SSUBSCRIBE, Redis
7): each group's channel lives on the shard that owns its key slot, so
groups spread over the shards. redis-py's asyncio cluster client
(``redis.asyncio.RedisCluster``) finds the slots' owners; the bus keeps one
plain connection pair (publish, subscribe) per primary node and picks it by
the channel's key slot. (redis-py 8's ``ClusterPubSub`` reads the shards'
connections by polling each in turn with a timeout, which adds latency to
a real-time bus; one reader task per shard does not.) The bus maps slots
to primaries when it starts and keeps that map: a slot that moves while it
runs (resharding, a failover to a replica) is not followed; restart the
servers after changing the cluster's layout.

Metrics (into the server's registry, ``registry=``): see
fastpacket.metrics.BUS_METRICS: messages, packets and bytes published,
delivered and dropped (by reason), rejected messages, packets per publish,
the bus round trip (``bus_rtt_ns``: every ``probe_interval`` seconds a probe
is published to a channel only this server subscribes to, and timed until
it comes back), subscriptions, whether the bus is connected, outages.

Requires the ``redis`` extra: ``pip install fastpacket[redis]`` (redis-py's
asyncio client with hiredis).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import struct
import time
from typing import TYPE_CHECKING, Any, Deque, Dict, List, Optional, Set, Tuple, Union
from urllib.parse import urlsplit, urlunsplit

from fastpacket.aggregate import Aggregator
from fastpacket.aio import Bus, Group
from fastpacket.errors import BusUnavailable, ProtocolError
from fastpacket.metrics import BUS_DROP_REASONS, Registry

if TYPE_CHECKING:
    from fastpacket.aio import PacketServer

__all__ = ["RedisBus", "DEFAULT_NAMESPACE", "DEFAULT_MAX_BACKLOG_BYTES", "DEFAULT_COMPRESS_THRESHOLD",
           "DEFAULT_PROBE_INTERVAL_S", "CONNECT_TIMEOUT_S", "RECONNECT_MIN_S", "RECONNECT_MAX_S",
           "CLUSTER_SCHEMES", "mask_url", "check_reachable"]

log = logging.getLogger("fastpacket.cluster")

#: Prefix of every channel the bus uses: servers share groups only within one namespace.
DEFAULT_NAMESPACE = "fastpacket"
#: Bytes of messages waiting to be published past which new ones are
#: dropped (per Redis node): about 8 ms of a 1 GB/s link, far more than a
#: healthy loopback Redis ever holds, small enough to bound memory.
DEFAULT_MAX_BACKLOG_BYTES = 8 << 20
#: A message body of at least this many bytes is lz4-compressed when that
#: saves 10% (the Aggregator's rule).
DEFAULT_COMPRESS_THRESHOLD = 1024
#: Seconds between two round-trip probes (0: no probe).
DEFAULT_PROBE_INTERVAL_S = 1.0
#: Seconds a connection attempt may take: a bus that cannot reach Redis at
#: start fails within this, and so does each reconnect attempt.
CONNECT_TIMEOUT_S = 2.0
#: Reconnect backoff, in seconds: the first retry RECONNECT_MIN_S after an
#: outage, each next one twice as late ...
RECONNECT_MIN_S = 0.05
#: ... up to RECONNECT_MAX_S, so delivery resumes within RECONNECT_MAX_S
#: plus one connection set-up of Redis coming back.
RECONNECT_MAX_S = 0.5
#: Seconds close() waits for the queued publishes to go out ...
CLOSE_DRAIN_S = 1.0
#: ... looking this often, in seconds.
CLOSE_POLL_S = 0.005
#: Most messages one pipeline (one write, one round trip) carries.
PIPELINE_MAX_MESSAGES = 512
#: URL schemes that name a Redis Cluster (sharded pub/sub).
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
_PLAIN_SCHEMES = ("redis", "rediss", "unix")
_PROBE = struct.Struct("<QQ")  # sender id, send time (monotonic ns)
_MISSING_EXTRA = ("the bus needs redis-py with hiredis: pip install 'fastpacket[redis]' "
                  "(or pip install 'redis[hiredis]')")


def mask_url(url: str) -> str:
    """`url` with its password (if any) replaced by ``***``, for messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[-1]}"))


def _import_redis() -> Any:
    try:
        import redis.asyncio as aioredis
    except ImportError:
        return None
    return aioredis


class _Link:
    """The bus's connections to one Redis node: one client that publishes
    (one task, in order) and one pub/sub connection that receives (one
    task), the channels subscribed there, and the publish backlog."""

    def __init__(self, bus: "RedisBus", name: str, kwargs: Dict[str, Any]) -> None:
        self.bus = bus
        self.name = name                      # host:port, for messages
        self.kwargs = kwargs                  # redis.asyncio.Redis(**kwargs) connects to the node
        self.client: Any = None
        self.pubsub: Any = None
        self.wanted: Dict[bytes, Group] = {}  # channels subscribed (or to be) on this node
        self.confirmed: Set[bytes] = set()    # ... and confirmed by Redis
        self.waiters: Dict[bytes, List["asyncio.Future[bool]"]] = {}
        self.queue: Deque[Tuple[bytes, bytes, int]] = collections.deque()  # (channel, message, packets)
        self.queued_bytes = 0
        self.control: Deque[Tuple[bool, bytes]] = collections.deque()  # (subscribe?, channel), in order
        self.wake: Optional[asyncio.Event] = None
        self.connected = False
        self.lost_at: Optional[float] = None  # monotonic time of the outage, while down
        self.dropped_in_outage = 0
        self.runner: Optional["asyncio.Task[None]"] = None
        self.tasks: List["asyncio.Task[None]"] = []
        self.generation = 0                   # bumped when the connection goes: its writer stops

    # -- connection ----------------------------------------------------------------

    async def connect(self) -> None:
        """Open both connections, PING, subscribe to every wanted channel."""
        aioredis = self.bus._redis
        client = aioredis.Redis(**self.kwargs)
        try:
            await asyncio.wait_for(client.ping(), CONNECT_TIMEOUT_S)
            pubsub = client.pubsub()
            channels = list(self.wanted)
            probe = self.bus._probe_channel if self.bus._probe_link is self else None
            if probe is not None:
                channels.append(probe)
            if channels:
                await asyncio.wait_for(self._subscribe(pubsub, channels), CONNECT_TIMEOUT_S)
            else:  # a pub/sub connection that holds no subscription yet: make it now
                await asyncio.wait_for(pubsub.connect(), CONNECT_TIMEOUT_S)
        except BaseException:
            await _close_quietly(client)
            raise
        self.client = client
        self.pubsub = pubsub
        self.confirmed.clear()
        self.control.clear()  # the wanted set is subscribed as it is now
        self.connected = True

    async def _subscribe(self, pubsub: Any, channels: List[bytes]) -> None:
        if self.bus.sharded:
            # SSUBSCRIBE takes channels of one slot per call
            for ch in channels:
                await pubsub.ssubscribe(ch)
        else:
            await pubsub.subscribe(*channels)

    async def _unsubscribe(self, pubsub: Any, channel: bytes) -> None:
        if self.bus.sharded:
            await pubsub.sunsubscribe(channel)
        else:
            await pubsub.unsubscribe(channel)

    def start_tasks(self) -> None:
        loop = asyncio.get_running_loop()
        self.wake = self.wake or asyncio.Event()
        self.tasks = [loop.create_task(self._read()), loop.create_task(self._write())]
        self.runner = loop.create_task(self._supervise())

    async def _supervise(self) -> None:
        """Waits for a task to fail (the connection is lost), then
        reconnects with capped backoff until it is back, forever (until
        the bus closes)."""
        while not self.bus._closing:
            done, _ = await asyncio.wait(self.tasks, return_when=asyncio.FIRST_COMPLETED)
            if self.bus._closing:
                return
            exc = next((t.exception() for t in done if not t.cancelled() and t.exception() is not None), None)
            await self._drop_connections(exc)
            delay = RECONNECT_MIN_S
            while not self.bus._closing:
                await asyncio.sleep(delay)
                try:
                    await self.connect()
                except Exception:
                    delay = min(delay * 2, RECONNECT_MAX_S)
                    continue
                self._back()
                loop = asyncio.get_running_loop()
                self.tasks = [loop.create_task(self._read()), loop.create_task(self._write())]
                break

    async def _drop_connections(self, exc: Optional[BaseException]) -> None:
        """The connection is lost: stop both tasks, close both connections,
        drop what waits to be published (counted), log once."""
        self.generation += 1
        if self.wake is not None:
            self.wake.set()
        await _stop_tasks(self.tasks)
        self.tasks = []
        was_connected = self.connected
        self.connected = False
        self.confirmed.clear()
        self.bus._update_connected()
        pubsub, client = self.pubsub, self.client
        self.pubsub = self.client = None
        if pubsub is not None:
            await _close_quietly(pubsub)
        if client is not None:
            await _close_quietly(client)
        if was_connected:
            self.lost_at = time.monotonic()
            self.dropped_in_outage = 0
            self.bus._count_outage()
            log.warning("bus: lost Redis at %s (%s); members on other servers miss what this server sends "
                        "until it is back (dropped, counted in bus_dropped_packets_total); reconnecting",
                        self.name, exc if exc is not None else "connection closed")
        self.drop_queue("disconnected")

    def _back(self) -> None:
        down = time.monotonic() - self.lost_at if self.lost_at is not None else 0.0
        log.warning("bus: Redis at %s is back after %.1f s (%d packets to other servers dropped meanwhile); "
                    "%d groups resubscribed", self.name, down, self.dropped_in_outage, len(self.wanted))
        self.lost_at = None
        self.bus._update_connected()

    # -- receive -----------------------------------------------------------------------

    async def _read(self) -> None:
        """Reads the pub/sub connection: messages from other servers go to
        the server (natively), probes are timed, confirmations noted."""
        bus = self.bus
        pubsub = self.pubsub
        probe = bus._probe_channel
        while True:
            response = await pubsub.parse_response(block=True)
            if not response:
                continue
            kind = response[0]
            if kind == b"message" or kind == b"smessage":
                channel, data = response[1], response[2]
                group = self.wanted.get(channel)
                if group is not None:
                    bus._deliver(group, data)
                elif channel == probe:
                    bus._probe_back(data)
            elif kind == b"subscribe" or kind == b"ssubscribe":
                self._confirmed(response[1])

    def _confirmed(self, channel: bytes) -> None:
        if channel in self.wanted or channel == self.bus._probe_channel:
            self.confirmed.add(channel)
        for fut in self.waiters.pop(channel, ()):
            if not fut.done():
                fut.set_result(True)

    # -- send --------------------------------------------------------------------------

    def publish(self, channel: bytes, message: bytes, packets: int) -> None:
        if not self.connected:
            self.dropped_in_outage += packets
            self.bus._count_drop("disconnected", packets, len(message))
            return
        if self.queued_bytes + len(message) > self.bus.max_backlog_bytes:
            self.bus._count_drop("backlog", packets, len(message))
            return
        self.queue.append((channel, message, packets))
        self.queued_bytes += len(message)
        assert self.wake is not None
        self.wake.set()

    def drop_queue(self, reason: str) -> None:
        for _, message, packets in self.queue:
            self.dropped_in_outage += packets
            self.bus._count_drop(reason, packets, len(message))
        self.queue.clear()
        self.queued_bytes = 0

    def change_subscription(self, subscribe: bool, channel: bytes) -> None:
        if self.connected:
            self.control.append((subscribe, channel))
            assert self.wake is not None
            self.wake.set()
        # while down: connect() subscribes to the wanted set as it is then

    async def _write(self) -> None:
        """Publishes the queue in order, a pipeline (one write, one round
        trip) at a time, and applies subscription changes in order."""
        bus = self.bus
        client = self.client
        pubsub = self.pubsub
        command = "SPUBLISH" if bus.sharded else "PUBLISH"
        assert self.wake is not None
        wake = self.wake
        generation = self.generation
        while self.generation == generation:  # a new connection (or close) ends this writer
            if not self.queue and not self.control:
                wake.clear()
                await wake.wait()
                continue
            while self.control:
                subscribe, channel = self.control.popleft()
                if subscribe:
                    await self._subscribe(pubsub, [channel])
                else:
                    await self._unsubscribe(pubsub, channel)
            if not self.queue:
                continue
            n = min(len(self.queue), PIPELINE_MAX_MESSAGES)
            batch = [self.queue.popleft() for _ in range(n)]
            for _, message, _ in batch:
                self.queued_bytes -= len(message)
            pipe = client.pipeline(transaction=False)
            for channel, message, _ in batch:
                pipe.execute_command(command, channel, message)
            try:
                await pipe.execute()
            except BaseException:
                for _, message, packets in batch:  # in flight when the connection broke: dropped
                    self.dropped_in_outage += packets
                    bus._count_drop("disconnected", packets, len(message))
                raise
            bus._count_published(batch)

    async def close(self) -> None:
        if self.runner is not None:
            self.runner.cancel()
        deadline = time.monotonic() + CLOSE_DRAIN_S
        while self.queue and self.connected and time.monotonic() < deadline and all(not t.done() for t in self.tasks):
            await asyncio.sleep(CLOSE_POLL_S)
        self.generation += 1
        if self.wake is not None:
            self.wake.set()  # the writer sees it is done
        await _stop_tasks(self.tasks + ([self.runner] if self.runner is not None else []))
        self.tasks = []
        self.drop_queue("disconnected")
        self.connected = False
        for conn in (self.pubsub, self.client):
            if conn is not None:
                await _close_quietly(conn)
        self.pubsub = self.client = None
        for waiters in self.waiters.values():
            for fut in waiters:
                if not fut.done():
                    fut.set_result(False)
        self.waiters.clear()


#: Seconds a stopping link waits for its tasks to end after cancelling them.
STOP_TASKS_S = 1.0


async def _stop_tasks(tasks: List["asyncio.Task[None]"]) -> None:
    """Cancel `tasks` and wait for them (STOP_TASKS_S at most): redis-py
    may swallow a cancellation that lands while it awaits a socket, so the
    tasks also watch the bus's closing flag, and the wait is bounded."""
    tasks = [t for t in tasks if not t.done()]
    for t in tasks:
        t.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=STOP_TASKS_S)
    for t in tasks:
        if t.done() and not t.cancelled():
            t.exception()  # retrieved: a connection error of a link going down is expected


async def _close_quietly(conn: Any) -> None:
    try:
        await asyncio.wait_for(conn.aclose(), CLOSE_DRAIN_S)
    except BaseException:  # a connection to a Redis that is gone: nothing left to close cleanly
        pass


class RedisBus(Bus):
    """RedisBus(url, *, namespace="fastpacket", max_backlog_bytes=8 MiB, compress_threshold=1024, probe_interval=1.0)

    A bus over Redis pub/sub for ``fp.aio.serve(..., bus=...)``: the groups
    of every server sharing the bus (the same Redis and `namespace`) are one
    group (see the module docstring for the design and the guarantees).

    `url`: ``redis://[[user]:password@]host:port/db`` (``rediss://`` for
    TLS, ``unix:///path``), or ``redis+cluster://host:port`` for a Redis
    Cluster (sharded pub/sub). `namespace` prefixes every channel.
    `max_backlog_bytes` bounds the messages waiting to be published per
    Redis node (past it they are dropped and counted); message bodies of
    `compress_threshold` bytes or more are lz4-compressed when it pays;
    every `probe_interval` seconds (0: never) a probe times the round trip
    through Redis. One RedisBus serves one server. BusUnavailable at
    start when Redis cannot be reached or redis-py is missing.
    """

    def __init__(self, url: str, *, namespace: str = DEFAULT_NAMESPACE,
                 max_backlog_bytes: int = DEFAULT_MAX_BACKLOG_BYTES,
                 compress_threshold: int = DEFAULT_COMPRESS_THRESHOLD,
                 probe_interval: float = DEFAULT_PROBE_INTERVAL_S) -> None:
        if not isinstance(url, str):
            raise TypeError(f"url must be a str, not {type(url).__name__!r}")
        try:
            scheme = urlsplit(url).scheme
        except ValueError as exc:
            raise ValueError(f"url {mask_url(url)!r} is not a Redis URL: {exc}") from None
        if scheme not in _PLAIN_SCHEMES and scheme not in CLUSTER_SCHEMES:
            raise ValueError(f"url must start with redis://, rediss://, unix://, redis+cluster:// or "
                             f"rediss+cluster://, got {mask_url(url)!r}")
        if not isinstance(namespace, str) or not namespace:
            raise ValueError(f"namespace must be a non-empty str, got {namespace!r}")
        if not isinstance(max_backlog_bytes, int) or max_backlog_bytes < 1:
            raise ValueError(f"max_backlog_bytes must be an int >= 1, got {max_backlog_bytes!r}")
        if not isinstance(compress_threshold, int) or compress_threshold < 0:
            raise ValueError(f"compress_threshold must be an int >= 0 (bytes), got {compress_threshold!r}")
        if not isinstance(probe_interval, (int, float)) or not probe_interval >= 0:
            raise ValueError(f"probe_interval must be >= 0 seconds, got {probe_interval!r}")
        self.url = url
        self.namespace = namespace
        self.sharded = scheme in CLUSTER_SCHEMES
        self.max_backlog_bytes = max_backlog_bytes
        self.probe_interval = float(probe_interval)
        self.sender_id = int.from_bytes(os.urandom(8), "little")
        self.aggregator: Optional[Aggregator] = Aggregator("lz4", threshold=compress_threshold)
        self._redis: Any = None
        self._server: Optional["PacketServer"] = None
        self._cluster: Any = None                  # redis.asyncio.RedisCluster: slot owners
        self._links: Dict[str, _Link] = {}         # node name -> link
        self._link_of: Dict[bytes, _Link] = {}     # channel -> link
        self._closing = False
        self._probe_channel = f"{namespace}:probe:{self.sender_id:016x}".encode()
        self._probe_link: Optional[_Link] = None
        self._probe_task: Optional["asyncio.Task[None]"] = None
        self._m: Optional[Dict[str, Any]] = None
        self.stats: Dict[str, int] = {"publishes": 0, "published_packets": 0, "published_bytes": 0,
                                      "delivered_packets": 0, "delivered_bytes": 0, "dropped_packets": 0,
                                      "dropped_bytes": 0, "rejected": 0, "outages": 0}

    def __repr__(self) -> str:
        state = "connected" if self.connected else "disconnected"
        return f"<RedisBus {mask_url(self.url)} namespace={self.namespace!r} {state}>"

    # -- the Bus contract --------------------------------------------------------------

    def channel(self, name: Union[str, int]) -> bytes:
        """``NAMESPACE:group:s:NAME`` (str names) or ``NAMESPACE:group:i:NAME``
        (int names): the str "7" and the int 7 are different groups."""
        kind = "i" if isinstance(name, int) else "s"
        return f"{self.namespace}:group:{kind}:{name}".encode()

    @property
    def connected(self) -> bool:
        """True while every Redis connection of the bus is up."""
        return bool(self._links) and all(link.connected for link in self._links.values())

    async def start(self, server: "PacketServer") -> None:
        """Connect to Redis (every primary of a cluster) and start carrying
        `server`'s groups. BusUnavailable naming the URL when Redis cannot
        be reached within CONNECT_TIMEOUT_S, or redis-py is missing."""
        if self._server is not None:
            raise RuntimeError("a RedisBus serves one server; make one per server")
        self._redis = _import_redis()
        if self._redis is None:
            raise BusUnavailable(f"bus {mask_url(self.url)}: {_MISSING_EXTRA}", mask_url(self.url))
        self._server = server
        registry = server.options.registry
        self._m = _bus_metrics(registry) if registry is not None else None
        try:
            if self.sharded:
                await self._start_cluster()
            else:
                link = _Link(self, _node_name(self.url), _client_kwargs(self.url))
                self._links[link.name] = link
            self._probe_link = self._link_for(self._probe_channel)
            for link in self._links.values():
                await link.connect()
        except Exception as exc:
            await self._close_links()
            raise BusUnavailable(f"bus {mask_url(self.url)}: cannot reach Redis: {_describe(exc)}",
                                 mask_url(self.url)) from exc
        for link in self._links.values():
            link.start_tasks()
        self._update_connected()
        if self.probe_interval > 0:
            self._probe_task = asyncio.get_running_loop().create_task(self._probe())
        log.info("bus: %s connected (%d Redis node%s, namespace %r)", mask_url(self.url), len(self._links),
                 "" if len(self._links) == 1 else "s", self.namespace)

    async def _start_cluster(self) -> None:
        from redis.asyncio.cluster import RedisCluster

        scheme, rest = self.url.split("://", 1)
        cluster = RedisCluster.from_url(f"{CLUSTER_SCHEMES[scheme]}://{rest}",
                                        socket_connect_timeout=CONNECT_TIMEOUT_S)
        self._cluster = cluster
        await asyncio.wait_for(cluster.initialize(), CONNECT_TIMEOUT_S * 2)
        base = _client_kwargs(f"{CLUSTER_SCHEMES[scheme]}://{rest}")
        for node in cluster.get_primaries():
            kwargs = dict(base, host=node.host, port=node.port, db=0)
            kwargs.pop("path", None)
            link = _Link(self, f"{node.host}:{node.port}", kwargs)
            self._links[link.name] = link

    def _link_for(self, channel: bytes) -> _Link:
        if not self.sharded:
            return next(iter(self._links.values()))
        link = self._link_of.get(channel)
        if link is None:
            node = self._cluster.get_node_from_key(channel)
            link = self._links.get(f"{node.host}:{node.port}")
            if link is None:  # a primary the bus did not know at start: its first link
                link = next(iter(self._links.values()))
            self._link_of[channel] = link
        return link

    async def close(self) -> None:
        """Publish what is queued (CLOSE_DRAIN_S at most), then disconnect."""
        if self._closing:
            return
        self._closing = True
        if self._probe_task is not None:
            self._probe_task.cancel()
            try:
                await self._probe_task
            except BaseException:
                pass
        await self._close_links()
        self._update_connected()

    async def _close_links(self) -> None:
        for link in self._links.values():
            await link.close()
        if self._cluster is not None:
            await _close_quietly(self._cluster)
            self._cluster = None

    def subscribe(self, group: Group) -> None:
        """The group got its first member here: subscribe to its channel."""
        channel = _channel_of(group)
        link = self._link_for(channel)
        if channel in link.wanted:
            return
        link.wanted[channel] = group
        link.change_subscription(True, channel)
        if self._m is not None:
            self._m["subscriptions"].inc()

    def unsubscribe(self, group: Group) -> None:
        """The group's last member here left: unsubscribe from its channel."""
        channel = _channel_of(group)
        link = self._link_for(channel)
        if link.wanted.pop(channel, None) is None:
            return
        link.confirmed.discard(channel)
        link.change_subscription(False, channel)
        if self._m is not None:
            self._m["subscriptions"].dec()

    def publish(self, group: Group, message: bytes, packets: int) -> None:
        """Queue `message` for the group's channel (dropped and counted when
        Redis is unreachable or the backlog is full)."""
        channel = _channel_of(group)
        self._link_for(channel).publish(channel, message, packets)

    async def wait_subscribed(self, group: Group, timeout: float = CONNECT_TIMEOUT_S) -> bool:
        """Wait until Redis confirmed this server's subscription to the
        group's channel (at most `timeout` seconds): from then on, what
        other servers send to the group reaches its members here. True
        when confirmed (at once for a group with no member here, which
        needs none); False after the timeout or when the bus closes."""
        channel = _channel_of(group)
        link = self._link_for(channel)
        if channel not in link.wanted or channel in link.confirmed:
            return True
        fut: "asyncio.Future[bool]" = asyncio.get_running_loop().create_future()
        link.waiters.setdefault(channel, []).append(fut)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except asyncio.TimeoutError:
            return False

    # -- what the links report -------------------------------------------------------

    def _deliver(self, group: Group, data: bytes) -> None:
        server = self._server
        assert server is not None
        try:
            n = server.deliver(group, data)
        except ProtocolError as exc:
            self.stats["rejected"] += 1
            if self._m is not None:
                self._m["rejected"].inc()
            if self.stats["rejected"] == 1 or self.stats["rejected"] % 1000 == 0:
                log.warning("bus: rejected a message for group %r (%d so far): %s", group.name,
                            self.stats["rejected"], exc)
            return
        if n:
            self.stats["delivered_packets"] += n
            self.stats["delivered_bytes"] += len(data)
            if self._m is not None:
                self._m["delivered_packets"].inc(n)
                self._m["delivered_bytes"].inc(len(data))

    def _count_published(self, batch: List[Tuple[bytes, bytes, int]]) -> None:
        stats = self.stats
        m = self._m
        for channel, message, packets in batch:
            if channel == self._probe_channel:
                continue
            stats["publishes"] += 1
            stats["published_packets"] += packets
            stats["published_bytes"] += len(message)
            if m is not None:
                m["publishes"].inc()
                m["published_packets"].inc(packets)
                m["published_bytes"].inc(len(message))
                m["batch"].record(packets)

    def _count_drop(self, reason: str, packets: int, nbytes: int) -> None:
        self.stats["dropped_packets"] += packets
        self.stats["dropped_bytes"] += nbytes
        if self._m is not None:
            self._m["dropped_packets"][reason].inc(packets)
            self._m["dropped_bytes"][reason].inc(nbytes)

    def _count_outage(self) -> None:
        self.stats["outages"] += 1
        if self._m is not None:
            self._m["outages"].inc()

    def _update_connected(self) -> None:
        if self._m is not None:
            self._m["connected"].set(1 if self.connected and not self._closing else 0)

    # -- the round-trip probe --------------------------------------------------------

    async def _probe(self) -> None:
        while True:
            await asyncio.sleep(self.probe_interval)
            link = self._probe_link
            if link is not None and link.connected:
                # through the publish queue: the probe times what a group send goes through
                link.publish(self._probe_channel, _PROBE.pack(self.sender_id, time.monotonic_ns()), 0)

    def _probe_back(self, data: bytes) -> None:
        if len(data) != _PROBE.size:
            return
        sender, sent = _PROBE.unpack(data)
        if sender != self.sender_id:
            return
        rtt = time.monotonic_ns() - sent
        self.last_rtt_ns = rtt
        if self._m is not None and rtt >= 0:
            self._m["rtt"].record(rtt)

    last_rtt_ns: Optional[int] = None


async def check_reachable(url: str) -> None:
    """Connect to the Redis (or Redis Cluster) of bus `url` once and PING
    it: BusUnavailable naming the URL when it cannot be reached within
    CONNECT_TIMEOUT_S (or redis-py is missing). ``fastpacket serve
    --workers N --bus URL`` checks this before starting any worker."""
    bus = RedisBus(url, probe_interval=0)
    bus._redis = _import_redis()
    if bus._redis is None:
        raise BusUnavailable(f"bus {mask_url(url)}: {_MISSING_EXTRA}", mask_url(url))
    try:
        if bus.sharded:
            await bus._start_cluster()
        else:
            bus._links["node"] = _Link(bus, _node_name(url), _client_kwargs(url))
        for link in bus._links.values():
            await link.connect()
    except Exception as exc:
        raise BusUnavailable(f"bus {mask_url(url)}: cannot reach Redis: {_describe(exc)}", mask_url(url)) from exc
    finally:
        bus._closing = True
        await bus._close_links()


def _channel_of(group: Group) -> bytes:
    """The bus channel of `group`; ValueError for a group of a server without a bus."""
    channel = group.channel
    if channel is None:
        raise ValueError(f"group {group.name!r} belongs to a server without a bus")
    return channel


def _node_name(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix:{parts.path}"
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"


def _client_kwargs(url: str) -> Dict[str, Any]:
    """redis.asyncio.Redis keywords for `url`: redis-py's own URL parsing,
    no retries of its own (the bus reconnects itself, and must notice an
    outage at once), bounded connection set-up, bytes as they are."""
    from redis.asyncio.connection import parse_url

    kwargs: Dict[str, Any] = dict(parse_url(url))
    kwargs.pop("connection_class", None)
    if urlsplit(url).scheme == "unix":
        kwargs["unix_socket_path"] = kwargs.pop("path")
    if urlsplit(url).scheme == "rediss":
        kwargs["ssl"] = True
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    kwargs.update(socket_connect_timeout=CONNECT_TIMEOUT_S, retry=Retry(NoBackoff(), 0),
                  health_check_interval=0, decode_responses=False, single_connection_client=False)
    return kwargs


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return f"no answer within {CONNECT_TIMEOUT_S:g} s"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if str(exc) else text


def _bus_metrics(registry: Registry) -> Dict[str, Any]:
    """The registry metrics the bus records into, by role (every drop
    reason's series exists from the start, at 0)."""
    return {
        "publishes": registry.counter("bus_publishes_total"),
        "published_packets": registry.counter("bus_published_packets_total"),
        "published_bytes": registry.counter("bus_published_bytes_total"),
        "delivered_packets": registry.counter("bus_delivered_packets_total"),
        "delivered_bytes": registry.counter("bus_delivered_bytes_total"),
        "dropped_packets": {r: registry.counter("bus_dropped_packets_total", {"reason": r})
                            for r in sorted(BUS_DROP_REASONS)},
        "dropped_bytes": {r: registry.counter("bus_dropped_bytes_total", {"reason": r})
                          for r in sorted(BUS_DROP_REASONS)},
        "rejected": registry.counter("bus_rejected_total"),
        "batch": registry.metric("bus_publish_batch_packets"),
        "rtt": registry.metric("bus_rtt_ns"),
        "subscriptions": registry.gauge("bus_subscriptions"),
        "connected": registry.gauge("bus_connected"),
        "outages": registry.counter("bus_outages_total"),
    }
