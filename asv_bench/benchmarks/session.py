"""The server's socket path (fastpacket.aio): one read burst of 256
packets over loopback TCP, decoded, handed to the handler and echoed, every
byte read back by the client; beside the plain asyncio.Protocol that frames
with struct (`fastpacket bench echo`'s plain row), on both loops. On
asyncio's selector loop fastpacket reads and writes natively (one recv(2)
and one send(2) per burst); on uvloop it reads through get_buffer()."""

import asyncio
import socket

import fastpacket as fp
from fastpacket.apps.echo import echo
from fastpacket.cli.bench.echo import PlainEchoProtocol
from fastpacket.system import new_event_loop

PACKETS = 256
PAYLOAD = 64


class EchoBurst:
    """A client writes 256 packets of 64 bytes at once; the server echoes
    them; the client reads all 19,456 bytes back."""

    params = [["plain-python", "fastpacket"], ["asyncio", "uvloop"]]
    param_names = ["impl", "loop"]

    def setup(self, impl, loop):
        if loop == "uvloop":
            try:
                import uvloop  # noqa: F401
            except ImportError:
                raise NotImplementedError("uvloop is not installed")
        self.loop = new_event_loop(loop)
        self.burst = b"".join(fp.encode(1, bytes([i]) * PAYLOAD) for i in range(PACKETS))

        async def start():
            if impl == "plain-python":
                return await self.loop.create_server(PlainEchoProtocol, "127.0.0.1", 0)
            return await fp.aio.serve(echo, "127.0.0.1", 0)

        self.server = self.loop.run_until_complete(start())
        port = self.server.sockets[0].getsockname()[1]
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.loop.run_until_complete(self._round())  # the connection is accepted and warm

    async def _round(self):
        loop = self.loop
        await loop.sock_sendall(self.sock, self.burst)
        left = len(self.burst)
        while left:
            chunk = await loop.sock_recv(self.sock, 1 << 16)
            if not chunk:
                raise RuntimeError("the server closed the connection")
            left -= len(chunk)

    def time_echo_burst(self, impl, loop):
        self.loop.run_until_complete(self._round())

    def teardown(self, impl, loop):
        self.sock.close()
        self.server.close()
        self.loop.run_until_complete(self.server.wait_closed())
        self.loop.close()
