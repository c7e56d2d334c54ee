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
- one publishing connection per Redis node, written in order, so what one
  server sends to a group reaches every member in the order it was sent;
  one batch of PUBLISH commands is in flight at a time (one write), and
  what is published during its round trip goes in the next one;
- the publish backlog (messages waiting to be published or for Redis's
  reply) is bounded (``max_backlog_bytes``): past it, new messages are
  dropped and counted (``bus_dropped_packets_total{reason="backlog"}``),
  never queued without end; a publish Redis refuses (an ACL, a moved
  slot) is dropped and counted too (``reason="error"``, logged once per
  REFUSED_LOG_EVERY).

The Redis side is redis-py's (connection set-up: URL, TLS, AUTH, SELECT;
command packing) and hiredis's (parsing); the bus reads both connections
of a node with loop callbacks, not through Pipeline and PubSub objects,
whose per-message work (a task wake-up, timeouts, retries) cost more CPU
than the rest of a cross-server delivery (see README, "Cluster").

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
a real-time bus; one reader per shard does not.) The bus maps slots
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
#: Bytes of messages waiting to be published (or for Redis's reply) past
#: which new ones are dropped (per Redis node): about 8 ms of a 1 GB/s
#: link, far more than a healthy loopback Redis ever holds, small enough
#: to bound memory.
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
#: Seconds a publish batch may wait for its replies before the link
#: counts Redis as lost and reconnects (redis-py's default socket timeout) ...
REPLY_TIMEOUT_S = 5.0
#: ... checked this often, in seconds (the connections themselves have no
#: socket timeout: the subscribed one is idle by nature, and a timer around
#: every read costs more than the read).
WATCH_INTERVAL_S = 1.0
#: A publish Redis refuses is logged on the first refusal and then every
#: this many (a refusal is usually permanent: an ACL, a moved slot).
REFUSED_LOG_EVERY = 1000
#: URL schemes that name a Redis Cluster (sharded pub/sub).
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
_PLAIN_SCHEMES = ("redis", "rediss", "unix")
#: The Redis protocol the bus speaks: RESP2, whose pub/sub messages are
#: plain replies (redis-py 8 defaults to RESP3, whose pushes it hands to a
#: logging handler one by one).
RESP_VERSION = 2
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
        import hiredis  # noqa: F401  (the bus parses with it)
        import redis.asyncio as aioredis
    except ImportError:
        return None
    return aioredis


class _Link:
    """The bus's connections to one Redis node: one that publishes and one
    that is subscribed, the channels subscribed there, and the publish
    backlog.

    Both connections are opened, authenticated and set up by redis-py
    (``make_connection().connect()``: URL, TLS, AUTH, SELECT), then read
    by callbacks: each is handed to a protocol of the bus that feeds what
    arrives to its own hiredis Reader and handles every reply parsed out
    of one read at once, in that loop callback: no task wake-up, future or
    coroutine per message, and the sends a delivery causes share the
    server's end-of-iteration flush with what its own players sent in the
    same iteration. Commands are packed by the connection
    (``pack_command``/``pack_commands``) and written to the transport: one
    batch of publishes in flight (one write, its replies matched in order),
    what is published meanwhile sent as the next batch when the last reply
    comes back. RESP2 (``protocol=2``): pub/sub messages are plain replies."""

    def __init__(self, bus: "RedisBus", name: str, kwargs: Dict[str, Any]) -> None:
        self.bus = bus
        self.name = name                      # host:port, for messages
        self.kwargs = kwargs                  # redis.asyncio.Redis(**kwargs) connects to the node
        self.pub: Any = None                  # the redis-py Connection that publishes ...
        self.sub: Any = None                  # ... and the one that is subscribed
        self.pub_transport: Any = None        # their transports, read by _ReplyProtocol
        self.sub_transport: Any = None
        self.wanted: Dict[bytes, Group] = {}  # channels subscribed (or to be) on this node
        self.confirmed: Set[bytes] = set()    # ... and confirmed by Redis
        self.waiters: Dict[bytes, List["asyncio.Future[bool]"]] = {}
        # messages waiting to be written, then written and awaiting their
        # replies, in order: (channel, message, packets)
        self.queue: Deque[Tuple[bytes, bytes, int]] = collections.deque()
        self.queued_bytes = 0
        self.inflight: Deque[Tuple[bytes, bytes, int]] = collections.deque()
        self.inflight_bytes = 0
        self.last_reply_at = 0.0              # monotonic time of the last reply (or of a write after none)
        self.lost: Optional["asyncio.Future[None]"] = None  # done when a connection of this link is lost
        self.connected = False
        self.lost_at: Optional[float] = None  # monotonic time of the outage, while down
        self.dropped_in_outage = 0
        self.runner: Optional["asyncio.Task[None]"] = None
        self.tasks: List["asyncio.Future[None]"] = []
        self.closed = False                   # close() began: a reconnect under way keeps nothing

    # -- connection ----------------------------------------------------------------

    async def connect(self) -> None:
        """Open both connections, PING, subscribe to every wanted channel."""
        aioredis = self.bus._redis
        # the client is only redis-py's reading of the keywords (connection
        # class, TLS, unix socket): it never connects itself, so each
        # connection the bus opens is one of the two below, closed by
        # _disconnect() or on the error path here, never left to the pool
        pool = aioredis.Redis(**self.kwargs).connection_pool
        pub = pool.make_connection()
        sub = pool.make_connection()
        try:
            await asyncio.wait_for(pub.connect(), CONNECT_TIMEOUT_S)
            await asyncio.wait_for(_ping(pub), CONNECT_TIMEOUT_S)
            await asyncio.wait_for(sub.connect(), CONNECT_TIMEOUT_S)
            lost: "asyncio.Future[None]" = asyncio.get_running_loop().create_future()
            pub_transport = await _take_transport(pub, _ReplyProtocol(self, lost, self._on_publish_reply))
            sub_transport = await _take_transport(sub, _ReplyProtocol(self, lost, self._on_pubsub))
            if self.closed:  # close() ran while this (a reconnect) was under way: keep nothing
                raise ConnectionError(f"the bus closed while connecting to Redis at {self.name}")
        except BaseException:
            # also on a cancellation (close() stopping a reconnect): closing
            # does not wait, so a second cancellation cannot leave one open
            for conn in (sub, pub):
                await _disconnect_quietly(conn)
            raise
        self.pub, self.sub = pub, sub
        self.pub_transport, self.sub_transport = pub_transport, sub_transport
        self.lost = lost
        self.confirmed.clear()
        channels = list(self.wanted)
        probe = self.bus._probe_channel if self.bus._probe_link is self else None
        if probe is not None:
            channels.append(probe)
        if channels:  # confirmed as they come back
            self._subscribe(channels)
        self.connected = True

    def _subscribe(self, channels: List[bytes]) -> None:
        sub = self.sub
        if self.bus.sharded:  # SSUBSCRIBE takes channels of one slot per command
            self.sub_transport.writelines(sub.pack_commands([("SSUBSCRIBE", ch) for ch in channels]))
        else:
            self.sub_transport.writelines(sub.pack_command("SUBSCRIBE", *channels))

    def _unsubscribe(self, channel: bytes) -> None:
        self.sub_transport.writelines(self.sub.pack_command("SUNSUBSCRIBE" if self.bus.sharded else "UNSUBSCRIBE",
                                                            channel))

    def start_tasks(self) -> None:
        self._start_watch()
        self.runner = asyncio.get_running_loop().create_task(self._supervise())

    def _start_watch(self) -> None:
        assert self.lost is not None
        self.last_reply_at = time.monotonic()
        self.tasks = [self.lost, asyncio.get_running_loop().create_task(self._watch())]

    async def _supervise(self) -> None:
        """Waits for the connection to be lost (or to stop answering),
        then reconnects with capped backoff until it is back, forever
        (until the bus closes)."""
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
                self._start_watch()
                break

    async def _drop_connections(self, exc: Optional[BaseException]) -> None:
        """The connection is lost: close both connections, drop what waits
        to be published or awaits its reply (counted), log once."""
        # the outage is recorded before the first await: whoever sees the
        # bus disconnected sees it counted too
        was_connected = self.connected
        self.connected = False
        self.confirmed.clear()
        self.bus._update_connected()
        if was_connected:
            self.lost_at = time.monotonic()
            self.dropped_in_outage = 0
            self.bus._count_outage()
            log.warning("bus: lost Redis at %s (%s); members on other servers miss what this server sends "
                        "until it is back (dropped, counted in bus_dropped_packets_total); reconnecting",
                        self.name, exc if exc is not None else "connection closed")
        self.drop_queue("disconnected")
        await _stop_tasks(self.tasks)
        self.tasks = []
        await self._disconnect()

    def _back(self) -> None:
        down = time.monotonic() - self.lost_at if self.lost_at is not None else 0.0
        log.warning("bus: Redis at %s is back after %.1f s (%d packets to other servers dropped meanwhile); "
                    "%d groups resubscribed", self.name, down, self.dropped_in_outage, len(self.wanted))
        self.lost_at = None
        self.bus._update_connected()

    async def _watch(self) -> None:
        """Ends (so the link reconnects) when publishes have waited for a
        reply longer than REPLY_TIMEOUT_S: a Redis that stopped answering
        without closing the connection. One timer per WATCH_INTERVAL_S
        instead of a timeout around every read."""
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            if self.inflight and time.monotonic() - self.last_reply_at > REPLY_TIMEOUT_S:
                raise TimeoutError(f"no reply from Redis at {self.name} within {REPLY_TIMEOUT_S:g} s")

    # -- receive -----------------------------------------------------------------------

    def _on_pubsub(self, reply: Any) -> None:
        """A reply on the subscribed connection: a message from another
        server goes to the server (natively), a probe is timed, a
        confirmation noted."""
        if type(reply) is not list or len(reply) < 3:
            if isinstance(reply, Exception):  # a (un)subscribe refused (an ACL): the connection is fine
                log.warning("bus: Redis at %s refused a subscription change: %s", self.name, reply)
            return
        kind = reply[0]
        if kind == b"message" or kind == b"smessage":
            channel = reply[1]
            group = self.wanted.get(channel)
            if group is not None:
                self.bus._deliver(group, reply[2])
            elif channel == self.bus._probe_channel:
                self.bus._probe_back(reply[2])
        elif kind == b"subscribe" or kind == b"ssubscribe":
            self._confirmed(reply[1])

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
        if self.queued_bytes + self.inflight_bytes + len(message) > self.bus.max_backlog_bytes:
            self.bus._count_drop("backlog", packets, len(message))
            return
        self.queue.append((channel, message, packets))
        self.queued_bytes += len(message)
        # written by flush(), once the server published every group of this iteration

    def flush(self) -> None:
        """Writes what is queued now, unless a batch is in flight (then it
        goes when that batch's last reply comes back)."""
        if self.queue and not self.inflight and self.connected:
            self._send()

    def _send(self) -> None:
        """Writes the queued publishes, packed by the connection, in one
        write; they await their replies in order. One batch is in flight at
        a time: what is published meanwhile goes in the next batch, sent
        when the last reply comes back (batches grow with the load, by a
        Redis round trip at most, rather than one write per iteration)."""
        batch = list(self.queue)
        self.queue.clear()
        if not self.inflight:
            self.last_reply_at = time.monotonic()  # the watch times from the first write awaiting a reply
        self.inflight.extend(batch)
        self.inflight_bytes += self.queued_bytes
        self.queued_bytes = 0
        command = "SPUBLISH" if self.bus.sharded else "PUBLISH"
        self.pub_transport.writelines(self.pub.pack_commands([(command, ch, msg) for ch, msg, _ in batch]))

    def _on_publish_reply(self, reply: Any) -> None:
        """The reply to the oldest publish in flight: published (counted),
        or refused by Redis (an ACL that forbids it, a cluster slot that
        moved): dropped and counted (reason "error"), logged on the first
        and every REFUSED_LOG_EVERY-th refusal, not per message."""
        if not self.inflight:
            return  # a reply to no publish: nothing else is sent on this connection
        channel, message, packets = self.inflight.popleft()
        self.inflight_bytes -= len(message)
        self.last_reply_at = time.monotonic()
        if not self.inflight and self.queue:
            self._send()  # the next batch: what was published during this one's round trip
        bus = self.bus
        if channel == bus._probe_channel:
            return  # a probe is no group's traffic (a refused one: the next one tries again)
        if not isinstance(reply, Exception):
            bus._count_published(packets, len(message))
            return
        bus._count_drop("error", packets, len(message))
        bus._refusals += 1
        if bus._refusals == 1 or bus._refusals % REFUSED_LOG_EVERY == 0:
            log.warning("bus: Redis at %s refused a publish to %s (%d refused so far; dropped, counted in "
                        "bus_dropped_packets_total{reason=\"error\"}): %s", self.name,
                        channel.decode(errors="replace"), bus._refusals, reply)

    def drop_queue(self, reason: str) -> None:
        """Drops (and counts) what waits to be published or awaits its
        reply: in flight when the connection broke, those Redis already
        took may still reach the others (at most once)."""
        for queue in (self.inflight, self.queue):
            for _, message, packets in queue:
                self.dropped_in_outage += packets
                self.bus._count_drop(reason, packets, len(message))
            queue.clear()
        self.queued_bytes = self.inflight_bytes = 0

    def change_subscription(self, subscribe: bool, channel: bytes) -> None:
        if self.connected:
            if subscribe:
                self._subscribe([channel])
            else:
                self._unsubscribe(channel)
        # while down: connect() subscribes to the wanted set as it is then

    async def _disconnect(self) -> None:
        sub, pub = self.sub, self.pub
        self.sub = self.pub = self.sub_transport = self.pub_transport = None
        for conn in (sub, pub):
            if conn is not None:
                await _disconnect_quietly(conn)

    async def close(self) -> None:
        self.closed = True
        if self.runner is not None:
            self.runner.cancel()
        deadline = time.monotonic() + CLOSE_DRAIN_S
        while ((self.queue or self.inflight) and self.connected and time.monotonic() < deadline
               and all(not t.done() for t in self.tasks)):
            await asyncio.sleep(CLOSE_POLL_S)
        await _stop_tasks(self.tasks + ([self.runner] if self.runner is not None else []))
        self.tasks = []
        self.connected = False
        self.drop_queue("disconnected")
        await self._disconnect()
        for waiters in self.waiters.values():
            for fut in waiters:
                if not fut.done():
                    fut.set_result(False)
        self.waiters.clear()


class _ReplyProtocol(asyncio.Protocol):
    """Reads one connection of a link once redis-py has set it up: what
    arrives is fed to a hiredis Reader and every reply parsed out of it is
    handed to `on_reply` in order, in this callback (an error reply as a
    redis ResponseError instance). The connection closing, or bytes that
    are not RESP, end the link's connection (`lost`)."""

    def __init__(self, link: _Link, lost: "asyncio.Future[None]", on_reply: Any) -> None:
        import hiredis
        from redis.exceptions import InvalidResponse, ResponseError

        self.link = link
        self.lost = lost
        self.on_reply = on_reply
        self.reader = hiredis.Reader(protocolError=InvalidResponse, replyError=ResponseError)
        self.transport: Any = None

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        on_reply = self.on_reply
        reader.feed(data)
        try:
            while True:
                reply = reader.gets()
                if reply is False:  # hiredis: no complete reply left
                    return
                on_reply(reply)
        except Exception as exc:
            log.exception("bus: connection to Redis at %s failed", self.link.name)
            self._lose(exc)
            if self.transport is not None:
                self.transport.abort()

    def eof_received(self) -> bool:
        return False  # close the transport: connection_lost follows

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._lose(exc or ConnectionError(f"Redis at {self.link.name} closed the connection"))

    def _lose(self, exc: BaseException) -> None:
        if not self.lost.done():
            self.lost.set_exception(exc)
            self.lost.exception()  # retrieved here: the link's supervisor reports it


async def _take_transport(conn: Any, protocol: _ReplyProtocol) -> Any:
    """The transport of redis-py Connection `conn` (connected, handshake
    done, nothing left to read), from now on read by `protocol`. redis-py
    keeps the transport in its private ``_writer`` (an asyncio
    StreamWriter) in every version the bus supports (5.0 on); a version
    without it fails the bus's start with this message rather than
    misbehaving."""
    writer = getattr(conn, "_writer", None)
    transport = getattr(writer, "transport", None)
    if transport is None or not hasattr(transport, "set_protocol"):
        raise RuntimeError("this redis-py keeps no asyncio transport in Connection._writer: the bus cannot read "
                           "its connections (use redis-py 5.0 to 8)")
    # can_read (redis-py 5.3 on) was can_read_destructive before
    can_read = getattr(conn, "can_read", None) or getattr(conn, "can_read_destructive", None)
    if can_read is not None and await can_read():
        raise RuntimeError("unexpected data on a new Redis connection")
    protocol.transport = transport
    transport.set_protocol(protocol)
    return transport


#: Seconds a stopping link waits for its tasks to end after cancelling them.
STOP_TASKS_S = 1.0


async def _stop_tasks(tasks: List["asyncio.Future[None]"]) -> None:
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


async def _ping(conn: Any) -> None:
    """PING on redis-py Connection `conn`: Redis answers (not just accepts TCP)."""
    await conn.send_command("PING")
    reply = await conn.read_response()
    if reply not in (b"PONG", "PONG", True):
        raise ConnectionError(f"unexpected reply to PING: {reply!r}")


async def _disconnect_quietly(conn: Any) -> None:
    """Close redis-py Connection `conn` at once. Awaited directly, not
    through wait_for (a task of its own): with nowait the disconnect never
    suspends, so it closes the transport even when the caller is being
    cancelled; a task that a cancellation stops before its first step would
    leave the socket open ("unclosed transport" when collected)."""
    try:
        # nowait: the transport is read by a _ReplyProtocol now, and the
        # StreamWriter's wait for its old protocol's close would not end
        await conn.disconnect(nowait=True)
    except Exception:  # a connection to a Redis that is gone: nothing left to close cleanly
        pass


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
    `max_backlog_bytes` bounds the messages waiting to be published (or
    for Redis's reply) per Redis node (past it they are dropped and
    counted); message bodies of `compress_threshold` bytes or more are
    lz4-compressed when it pays;
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
        self._refusals = 0                         # publishes Redis answered with an error
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
        Redis is unreachable or the backlog is full); flush() writes it."""
        channel = _channel_of(group)
        self._link_for(channel).publish(channel, message, packets)

    def flush(self) -> None:
        """Write what publish() queued this loop iteration: one write per
        Redis node (or, while a batch is in flight there, with the next)."""
        for link in self._links.values():
            link.flush()

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

    def _count_published(self, packets: int, nbytes: int) -> None:
        stats = self.stats
        stats["publishes"] += 1
        stats["published_packets"] += packets
        stats["published_bytes"] += nbytes
        m = self._m
        if m is not None:
            m["publishes"].inc()
            m["published_packets"].inc(packets)
            m["published_bytes"].inc(nbytes)
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
                link.flush()

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
                  health_check_interval=0, decode_responses=False, single_connection_client=False,
                  protocol=RESP_VERSION, socket_timeout=None)
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
