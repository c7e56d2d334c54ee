"""A fastpacket echo server (python -m fastpacket.examples.echo_server [port]): every packet goes back."""
import asyncio
import sys

import fastpacket as fp


async def main(port: int) -> None:
    server = await fp.aio.serve(lambda session, batch: session.send_batch(batch), "127.0.0.1", port)
    print(f"echo server on 127.0.0.1:{server.port}", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 7777))
