"""The adapter's listening surfaces, mirroring asyncio's start_server
family: TLS (with and without client certificates), Unix sockets, TLS over
a Unix socket, an already bound socket (``sock=``). Real sockets, every
wait bounded, on asyncio's default loop and on uvloop."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl

import pytest

import fastpacket as fp
from fastpacket import aio
from tests.certs import certs  # noqa: F401  (the session's certificates)
from tests.loops import recv_packets, run  # noqa: F401  (run: the event-loop fixture)


WAIT_S = 10.0


def echo(session, batch):
    session.send_batch(batch)


async def round_trip(client, n=50):
    for i in range(n):
        client.send(i % 3, b"p%d" % i, player_id=i)
    got = await recv_packets(client, n, WAIT_S)
    assert [bytes(p.payload) for p in got] == [b"p%d" % i for i in range(n)]
    assert [p.seq for p in got] == list(range(n))


def test_tls_round_trip(run, certs):
    async def main():
        server = await aio.serve(echo, "127.0.0.1", 0, ssl=certs.server_context())
        client = await aio.connect("127.0.0.1", server.port, ssl=certs.client_context())
        assert client.transport.get_extra_info("ssl_object") is not None
        await round_trip(client)
        (session,) = server.sessions
        assert session.transport.get_extra_info("ssl_object").version().startswith("TLS")
        client.close()
        await server.shutdown(WAIT_S)

    run(main())


def test_tls_with_required_client_certificates(run, certs):
    async def main():
        server = await aio.serve(echo, "127.0.0.1", 0, ssl=certs.server_context(require_client_cert=True))
        client = await aio.connect("127.0.0.1", server.port, ssl=certs.client_context(with_cert=True),
                                   server_hostname="localhost")
        await round_trip(client)
        (session,) = server.sessions
        peer = session.transport.get_extra_info("peercert")
        assert dict(x[0] for x in peer["subject"])["commonName"] == "fastpacket test client"
        # without a certificate: the handshake fails (TLS 1.3 reports it on
        # the first read), and no session is served
        try:
            anon = await aio.connect("127.0.0.1", server.port, ssl=certs.client_context())
            anon.send(1, b"let me in")
            assert await anon.recv(WAIT_S) is None
        except (ssl.SSLError, ConnectionError):
            pass
        assert len(server.sessions) == 1
        client.close()
        await server.shutdown(WAIT_S)

    run(main())


def test_plain_client_cannot_talk_to_a_tls_server(run, certs):
    async def main():
        server = await aio.serve(echo, "127.0.0.1", 0, ssl=certs.server_context(), ssl_handshake_timeout=5)
        client = await aio.connect("127.0.0.1", server.port)
        client.send(1, b"plain")
        assert await client.recv(WAIT_S) is None  # the server drops a connection that is not TLS
        assert server.sessions == set()
        await server.shutdown(WAIT_S)

    run(main())


def test_unix_socket_round_trip_and_tls_over_it(run, certs, tmp_path):
    async def main():
        path = str(tmp_path / "fp.sock")
        server = await aio.serve_unix(echo, path)
        assert server.path == path and os.path.exists(path)
        with pytest.raises(AttributeError, match="no port"):
            server.port
        client = await aio.connect_unix(path)
        await round_trip(client)
        client.close()
        await server.shutdown(WAIT_S)

        tls_path = str(tmp_path / "fp-tls.sock")
        server = await aio.serve_unix(echo, tls_path, ssl=certs.server_context())
        client = await aio.connect_unix(tls_path, ssl=certs.client_context(), server_hostname="localhost")
        await round_trip(client)
        client.close()
        await server.shutdown(WAIT_S)

    run(main())


def test_serve_on_an_already_bound_socket(run):
    async def main():
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        server = await aio.serve(echo, sock=sock)
        assert server.port == port
        client = await aio.connect("127.0.0.1", port)
        await round_trip(client)
        client.close()
        await server.shutdown(WAIT_S)
        with socket.socket() as other, pytest.raises(ValueError, match="host/port and sock"):
            await aio.serve(echo, "127.0.0.1", 0, sock=other)
        with pytest.raises(ValueError, match="a path or a sock"):
            await aio.serve_unix(echo)

    run(main())


def test_ipv6_loopback(run):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this Python")
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")

    async def main():
        server = await aio.serve(echo, "::1", 0)
        client = await aio.connect("::1", server.port)
        await round_trip(client)
        client.close()
        await server.shutdown(WAIT_S)

    run(main())


def test_every_surface_takes_every_option_as_a_typed_keyword():
    import inspect

    for fn in (aio.serve, aio.serve_unix, aio.connect, aio.connect_unix):
        params = inspect.signature(fn).parameters
        for name in aio.OPTION_NAMES:
            assert name in params, f"{fn.__name__} lacks the option {name}"
            assert params[name].kind is inspect.Parameter.KEYWORD_ONLY
            assert params[name].annotation != "Any", f"{fn.__name__}({name}) is not typed"
            default = getattr(aio.Options(), name)
            if not (name == "max_delay" and fn in (aio.connect, aio.connect_unix)):  # clients: 0
                assert params[name].default == default, f"{fn.__name__}({name}) default"
        assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()), fn.__name__


def test_length_only_layout_round_trip_through_session_send(run):
    # Twisted's Int32StringReceiver framing: a big-endian u32 length, the body
    int32_string = fp.HeaderLayout([("len", "u32")], "len", length_includes_header=False, byteorder="big")

    def upper(session, batch):
        for p in batch:
            session.send(None, bytes(p.payload).upper())

    async def main():
        server = await aio.serve(upper, "127.0.0.1", 0, layout=int32_string)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"".join(len(s).to_bytes(4, "big") + s for s in (b"hello", b"", b"world")))
        expected = b"".join(len(s).to_bytes(4, "big") + s for s in (b"HELLO", b"", b"WORLD"))
        assert await asyncio.wait_for(reader.readexactly(len(expected)), WAIT_S) == expected
        client = await aio.connect("127.0.0.1", server.port, layout=int32_string)
        client.send(None, b"via fastpacket")
        (p,) = await recv_packets(client, 1)
        assert bytes(p.payload) == b"VIA FASTPACKET" and not hasattr(p, "type")
        with pytest.raises(ValueError, match="no type field"):
            client.send(1, b"x")
        with pytest.raises(ValueError, match="handlers by type need a layout with a type field"):
            await aio.serve(handlers={1: upper}, host="127.0.0.1", port=0, layout=int32_string)
        writer.close()
        client.close()
        await server.shutdown(WAIT_S)

    run(main())
