"""The bus on a real redis-server (tests/redis_server.py starts one per
test on a free loopback port; a 3-node Redis Cluster for the sharded
case): groups spanning servers, exactly once and in per-sender order,
subscriptions following local membership, malformed messages, a bounded
backlog, Redis unreachable at start, Redis lost and restarted mid-run.
Every test runs on asyncio's default loop and on uvloop."""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import struct
import subprocess
import time
import warnings

import pytest

import fastpacket as fp
from fastpacket import aio
from tests.loops import recv_packets, run  # noqa: F401  (the fixture)
from tests.redis_server import RedisCluster, RedisServer, free_port, require_redis



@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(str(tmp_path / "redis")).start()
    yield server
    server.stop()


async def _servers(url_or_buses, n=2, **kw):
    """`n` servers on one bus, each relaying every burst to group "room"."""
    out = []
    for i in range(n):
        holder = {}

        def handler(session, batch, holder=holder):
            holder["room"].send_batch(batch)

        def on_connect(session, holder=holder):
            holder["room"].add(session)

        bus = url_or_buses[i] if isinstance(url_or_buses, list) else url_or_buses
        srv = await aio.serve(handler, on_connect=on_connect, bus=bus, registry=fp.Registry(), **kw)
        holder["room"] = srv.group("room")
        out.append(srv)
    return out


async def _players(servers, per_server):
    clients = []
    for srv in servers:
        for _ in range(per_server):
            clients.append(await aio.connect("127.0.0.1", srv.port))
    for srv in servers:
        for _ in range(500):
            if len(srv.group("room")) == per_server:
                break
            await asyncio.sleep(0.01)
        assert len(srv.group("room")) == per_server
        assert await srv.group("room").ready(5.0)
    return clients


def _check_exactly_once_in_order(got, senders, per_sender):
    by_sender = {}
    for p in got:
        by_sender.setdefault(p.player_id, []).append(p.seq)
    assert sorted(by_sender) == sorted(senders)
    for sender, seqs in by_sender.items():
        assert seqs == list(range(per_sender)), f"sender {sender}: {seqs[:20]}..."


async def _close_all(clients, servers):
    for c in clients:
        c.close()
    for s in servers:
        await s.shutdown(5)


def test_two_servers_one_group(run, redis_server):
    """Players of one group on two servers: every packet reaches every
    member exactly once, in each sender's order; nobody gets its own
    server's publish twice."""
    async def main():
        servers = await _servers(redis_server.url)
        clients = await _players(servers, 2)
        per = 200
        for i in range(per):
            for k, c in enumerate(clients):
                c.send(1, struct.pack("<I", i), player_id=k + 1, seq=i)
            if i % 50 == 0:
                await asyncio.sleep(0.01)
        for c in clients:
            got = await recv_packets(c, per * len(clients), timeout=20)
            _check_exactly_once_in_order(got, range(1, len(clients) + 1), per)
        with pytest.raises(asyncio.TimeoutError):  # and nothing more: no duplicate came late
            await clients[0].recv(0.3)
        for srv in servers:
            st = srv.bus.stats
            assert st["delivered_packets"] == per * 2 and st["published_packets"] == per * 2
            assert st["dropped_packets"] == 0 and st["rejected"] == 0
            # batching: fewer publishes than packets published
            assert st["publishes"] <= st["published_packets"]
            text = srv.options.registry.exposition()
            assert "fastpacket_bus_published_packets_total 400.0" in text
            assert "fastpacket_bus_delivered_packets_total 400.0" in text
            assert "fastpacket_bus_subscriptions 1.0" in text and "fastpacket_bus_connected 1.0" in text
        # group.send: each member's own seq, on every server
        servers[0].group("room").send(7, b"hi", player_id=99)
        for c in clients:
            (p,) = [q for q in await recv_packets(c, 1) if q.type == 7]
            assert (p.player_id, bytes(p.payload)) == (99, b"hi")
        await _close_all(clients, servers)

    run(main())


def test_subscription_follows_local_members(run, redis_server):
    async def main():
        import redis.asyncio as aioredis

        r = aioredis.Redis(port=redis_server.port)
        (srv,) = await _servers(redis_server.url, n=1)
        channel = srv.group("room").channel
        assert channel == b"fastpacket:group:s:room" and srv.group(3).channel == b"fastpacket:group:i:3"

        async def numsub():
            return dict(await r.pubsub_numsub(channel))[channel]

        assert await numsub() == 0
        c = await aio.connect("127.0.0.1", srv.port)
        for _ in range(500):
            if await numsub() == 1:
                break
            await asyncio.sleep(0.01)
        assert await numsub() == 1
        c.close()
        for _ in range(500):
            if await numsub() == 0:
                break
            await asyncio.sleep(0.01)
        assert await numsub() == 0  # the last member left: unsubscribed
        await srv.shutdown(5)
        await r.aclose()

    run(main())


def test_malformed_messages_are_rejected(run, redis_server):
    async def main():
        import redis.asyncio as aioredis

        r = aioredis.Redis(port=redis_server.port)
        servers = await _servers(redis_server.url, n=1)
        clients = await _players(servers, 1)
        channel = servers[0].group("room").channel
        for junk in (b"", b"x" * 10, b"\x50\x46\x01\x00" + b"\xff" * 12, b"\x50\x46\x01\x01\x01\x00\x00\x00"
                     + b"\x01" * 8 + b"\x05\x00\x00\x00" + b"\x00" * 7):
            await r.publish(channel, junk)
        for _ in range(500):
            if servers[0].bus.stats["rejected"] == 4:
                break
            await asyncio.sleep(0.01)
        assert servers[0].bus.stats["rejected"] == 4
        with pytest.raises(asyncio.TimeoutError):
            await clients[0].recv(0.2)
        clients[0].send(1, b"still fine")  # the server goes on
        assert bytes((await recv_packets(clients[0], 1))[0].payload) == b"still fine"
        await _close_all(clients, servers)
        await r.aclose()

    run(main())


def test_backlog_is_bounded(run, redis_server):
    async def main():
        from fastpacket.cluster import RedisBus

        bus = RedisBus(redis_server.url, max_backlog_bytes=200, probe_interval=0)
        servers = await _servers([bus], n=1)
        clients = await _players(servers, 1)
        room = servers[0].group("room")
        for i in range(20):  # 20 publishes of ~80 bytes in one iteration: most exceed the backlog
            room.send(1, b"p" * 40)
            servers[0]._hub.flush_dirty()
        got = await recv_packets(clients[0], 20)
        assert len(got) == 20  # local members get everything
        st = bus.stats
        assert st["dropped_packets"] > 0 and st["dropped_packets"] + st["published_packets"] <= 20
        text = servers[0].options.registry.exposition()
        assert 'fastpacket_bus_dropped_packets_total{reason="backlog"}' in text
        await _close_all(clients, servers)

    run(main())


def test_unreachable_at_start(run):
    require_redis()

    async def main():
        url = f"redis://127.0.0.1:{free_port()}/0"
        t0 = time.monotonic()
        with pytest.raises(fp.BusUnavailable, match="127.0.0.1") as info:
            await aio.serve(lambda s, b: None, bus=url)
        assert time.monotonic() - t0 < 10
        assert info.value.url == url and url in str(info.value)
        with pytest.raises(ValueError, match="redis://"):
            await aio.serve(lambda s, b: None, bus="http://example")
        with pytest.raises(TypeError, match="bus must be"):
            await aio.serve(lambda s, b: None, bus=42)

    run(main())


def test_redis_restart(run, redis_server, caplog):
    """Redis lost mid-run: local delivery goes on, cross-server sends are
    dropped and counted, one log line per outage; after a restart on the
    same port cross-server delivery resumes within 2 s."""
    async def main():
        servers = await _servers(redis_server.url)
        clients = await _players(servers, 1)
        a, b = clients
        a.send(1, b"before", player_id=1)
        assert [bytes(p.payload) for p in await recv_packets(b, 1)] == [b"before"]
        assert [bytes(p.payload) for p in await recv_packets(a, 1)] == [b"before"]
        redis_server.stop()
        for _ in range(500):
            if not servers[0].bus.connected and not servers[1].bus.connected:
                break
            await asyncio.sleep(0.01)
        assert not servers[0].bus.connected
        for i in range(50):
            a.send(1, b"during", player_id=1)
            await asyncio.sleep(0.002)
        got = await recv_packets(a, 50)  # local delivery goes on
        assert len(got) == 50
        with pytest.raises(asyncio.TimeoutError):
            await b.recv(0.2)
        assert servers[0].bus.stats["dropped_packets"] == 50
        text = servers[0].options.registry.exposition()
        assert 'fastpacket_bus_dropped_packets_total{reason="disconnected"} 50.0' in text
        assert "fastpacket_bus_connected 0.0" in text
        redis_server.start()
        back = time.monotonic()
        while True:  # resumes within 2 s
            a.send(1, b"after", player_id=1)
            try:
                got = await b.recv(0.05)
            except asyncio.TimeoutError:
                assert time.monotonic() - back < 2.0, "cross-server delivery did not resume within 2 s"
                continue
            assert [bytes(p.payload) for p in got][0] == b"after"
            break
        lost = [r for r in caplog.records if r.name == "fastpacket.cluster" and "lost Redis" in r.getMessage()]
        assert len(lost) == 2  # one line per outage per server, not one per packet
        assert servers[0].bus.stats["outages"] == 1
        await _close_all(clients, servers)

    with caplog.at_level(logging.WARNING, logger="fastpacket.cluster"):
        run(main())


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory):
    cluster = RedisCluster(str(tmp_path_factory.mktemp("cluster"))).start()
    yield cluster
    cluster.stop()


def test_cluster_sharded(run, redis_cluster):
    """A Redis Cluster URL: groups on the shards that own their channels'
    slots (SSUBSCRIBE/SPUBLISH), delivered exactly once in order."""
    async def main():
        import redis.asyncio as aioredis

        servers = []
        for _ in range(2):
            srv = await aio.serve(lambda s, b: None, bus=redis_cluster.url)
            servers.append(srv)
        names = [f"room:{i}" for i in range(12)]
        nodes = {servers[0].bus._link_for(servers[0].group(n).channel).name for n in names}
        assert len(nodes) == 3  # the groups spread over the three shards
        clients = [await aio.connect("127.0.0.1", srv.port) for srv in servers]
        for _ in range(500):
            if all(len(srv.sessions) == 1 for srv in servers):
                break
            await asyncio.sleep(0.01)
        members = [next(iter(srv.sessions)) for srv in servers]
        for srv, m in zip(servers, members):
            for n in names:
                srv.group(n).add(m)
        for srv in servers:
            for n in names:
                assert await srv.group(n).ready(5.0)
        per = 20
        for i in range(per):
            for k, n in enumerate(names):
                servers[0].group(n).send_batch(fp.PacketBatch.build([1], [b"x"], seqs=[i], player_ids=[k]))
            await asyncio.sleep(0)
        for c in clients:
            got = await recv_packets(c, per * len(names), timeout=20)
            _check_exactly_once_in_order(got, range(len(names)), per)
        # the channels really are shard channels on their nodes
        node = servers[1].bus._link_for(servers[1].group(names[0]).channel)
        host, port = node.name.split(":")
        r = aioredis.Redis(host=host, port=int(port))
        assert servers[1].group(names[0]).channel in await r.pubsub_shardchannels()
        await r.aclose()
        await _close_all(clients, servers)

    run(main())


def test_publish_refused_by_redis(run, redis_server, caplog):
    """Redis answers a publish with an error (here an ACL that forbids
    PUBLISH to the user of server A): the message is dropped and counted
    (reason "error"), logged once, and the connection stays up: A still
    receives what B publishes, and no outage is counted."""
    async def main():
        import redis.asyncio as aioredis
        from fastpacket.cluster import RedisBus

        r = aioredis.Redis(port=redis_server.port)
        await r.execute_command("ACL", "SETUSER", "nopub", "on", "nopass", "~*", "&*", "+@all", "-publish")
        bus_a = RedisBus(f"redis://nopub:any@127.0.0.1:{redis_server.port}/0", probe_interval=0)
        servers = await _servers([bus_a, redis_server.url])
        a, b = await _players(servers, 1)
        for i in range(3):
            a.send(1, b"from a", player_id=1, seq=i)
            await asyncio.sleep(0.01)
        assert len(await recv_packets(a, 3)) == 3  # local members get everything
        for _ in range(500):
            if bus_a.stats["dropped_packets"] == 3:
                break
            await asyncio.sleep(0.01)
        assert bus_a.stats["dropped_packets"] == 3 and bus_a.stats["published_packets"] == 0
        with pytest.raises(asyncio.TimeoutError):
            await b.recv(0.2)
        b.send(1, b"from b", player_id=2)  # A's subscription is unaffected
        assert [bytes(p.payload) for p in await recv_packets(a, 1)] == [b"from b"]
        assert bus_a.connected and bus_a.stats["outages"] == 0
        text = servers[0].options.registry.exposition()
        assert 'fastpacket_bus_dropped_packets_total{reason="error"} 3.0' in text
        refused = [rec for rec in caplog.records if "refused a publish" in rec.getMessage()]
        assert len(refused) == 1 and "no permissions" in refused[0].getMessage()
        await _close_all([a, b], servers)
        await r.aclose()

    with caplog.at_level(logging.WARNING, logger="fastpacket.cluster"):
        run(main())


def test_messages_among_subscribe_confirmations(run, redis_server):
    """Messages for a subscribed group arrive on the subscribed connection
    while confirmations of other subscriptions are still coming back: each
    is delivered exactly once, and every subscription is confirmed."""
    async def main():
        import redis.asyncio as aioredis

        r = aioredis.Redis(port=redis_server.port)
        servers = await _servers(redis_server.url)
        a, b = await _players(servers, 1)
        channel = servers[0].group("room").channel
        # a real message of server B's for "room", captured off Redis
        capture = r.pubsub()
        await capture.subscribe(channel)
        assert (await capture.get_message(timeout=5))["type"] == "subscribe"
        servers[1].group("room").send(5, b"captured", player_id=7)
        msg = None
        deadline = time.monotonic() + 10
        while msg is None or msg["type"] != "message":
            assert time.monotonic() < deadline, "server B's publish never reached Redis"
            msg = await capture.get_message(timeout=1)
        await capture.aclose()
        assert [bytes(p.payload) for p in await recv_packets(a, 1)] == [b"captured"]
        (member,) = servers[0].sessions
        names = [f"extra:{i}" for i in range(20)]
        for i, name in enumerate(names):  # 20 SUBSCRIBEs, each with a message for "room" behind it
            servers[0].group(name).add(member)
            await r.publish(channel, msg["data"])
        for name in names:
            assert await servers[0].group(name).ready(5.0)
        got = await recv_packets(a, len(names))
        assert [bytes(p.payload) for p in got] == [b"captured"] * len(names)
        with pytest.raises(asyncio.TimeoutError):
            await a.recv(0.2)
        assert servers[0].bus.stats["rejected"] == 0
        await _close_all([a, b], servers)
        await r.aclose()

    run(main())


def test_redis_stops_answering(run, redis_server, monkeypatch):
    """A Redis that stops answering without closing the connection
    (SIGSTOP): once a publish batch has waited REPLY_TIMEOUT_S for its
    replies the link counts an outage and reconnects; after SIGCONT
    cross-server delivery resumes."""
    import signal

    from fastpacket import cluster

    monkeypatch.setattr(cluster, "REPLY_TIMEOUT_S", 0.3)
    monkeypatch.setattr(cluster, "WATCH_INTERVAL_S", 0.05)

    async def main():
        servers = await _servers(redis_server.url)
        a, b = await _players(servers, 1)
        redis_server.proc.send_signal(signal.SIGSTOP)
        try:
            a.send(1, b"stalled", player_id=1)
            assert len(await recv_packets(a, 1)) == 1
            for _ in range(500):
                if not servers[0].bus.connected:
                    break
                await asyncio.sleep(0.01)
            assert not servers[0].bus.connected and servers[0].bus.stats["outages"] == 1
        finally:
            redis_server.proc.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + 10
        while True:  # delivery resumes once Redis answers again
            a.send(1, b"after", player_id=1)
            try:
                got = await b.recv(0.05)
            except asyncio.TimeoutError:
                assert time.monotonic() < deadline, "cross-server delivery did not resume"
                continue
            if b"after" in [bytes(p.payload) for p in got]:
                break
        assert servers[0].bus.connected
        await _close_all([a, b], servers)

    run(main())


def _redis_clients(port):
    """The client connections redis-server on `port` holds, not counting
    the redis-cli that asks."""
    out = subprocess.run(["redis-cli", "-p", str(port), "client", "list"], capture_output=True, timeout=5,
                         check=True)
    return [line for line in out.stdout.decode().splitlines() if "cmd=client" not in line]


def _collected_resource_warnings():
    """ResourceWarnings raised by collecting what is unreferenced now."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
    return [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]


def test_start_failure_closes_its_connections(run, monkeypatch):
    """A Redis that accepts connections but never answers: start fails
    with BusUnavailable within CONNECT_TIMEOUT_S, and every connection the
    bus opened is closed (the listener reads EOF on each), none left for
    the garbage collector."""
    require_redis()
    from fastpacket import cluster

    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT_S", 0.3)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        url = f"redis://127.0.0.1:{listener.getsockname()[1]}/0"

        async def main():
            with pytest.raises(fp.BusUnavailable, match="no answer"):
                await aio.serve(lambda s, b: None, bus=url)

        run(main())
        listener.settimeout(0)
        accepted = []
        while True:
            try:
                accepted.append(listener.accept()[0])
            except BlockingIOError:
                break
        assert accepted, "the bus never connected"
        for conn in accepted:
            with conn:
                conn.settimeout(5)
                while conn.recv(4096):  # what the bus sent (PING), then EOF: closed by the bus
                    pass
    assert _collected_resource_warnings() == []


def test_close_during_outage_closes_its_connections(run, redis_server, monkeypatch):
    """Redis stalls (SIGSTOP) and the bus, having counted the outage, is
    reconnecting (its attempts wait for a PING reply) when the server shuts
    down: every connection it opened is closed, so once Redis runs again it
    holds no client of the bus, and nothing is left for the garbage
    collector."""
    import signal

    from fastpacket import cluster

    monkeypatch.setattr(cluster, "REPLY_TIMEOUT_S", 0.3)
    monkeypatch.setattr(cluster, "WATCH_INTERVAL_S", 0.05)

    async def main():
        servers = await _servers(redis_server.url)
        a, b = await _players(servers, 1)
        assert _redis_clients(redis_server.port)  # the buses' connections
        redis_server.proc.send_signal(signal.SIGSTOP)
        try:
            a.send(1, b"stalled", player_id=1)
            for _ in range(500):
                if servers[0].bus.stats["outages"] == 1:
                    break
                await asyncio.sleep(0.01)
            assert servers[0].bus.stats["outages"] == 1
            await asyncio.sleep(cluster.RECONNECT_MIN_S * 4)  # a reconnect under way
            await _close_all([a, b], servers)
        finally:
            redis_server.proc.send_signal(signal.SIGCONT)

    run(main())
    deadline = time.monotonic() + 10
    while _redis_clients(redis_server.port):
        assert time.monotonic() < deadline, f"connections left open: {_redis_clients(redis_server.port)}"
        time.sleep(0.05)
    assert _collected_resource_warnings() == []
