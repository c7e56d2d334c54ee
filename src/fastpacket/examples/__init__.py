"""Runnable examples, shipped in the wheel (no clone needed):

    python -m fastpacket.examples.echo_server [port]         # a 15-line echo server
    python -m fastpacket.examples.relay [port] [metrics_port] # the demo's relay, with /metrics
    python -m fastpacket.examples.client [port] [player_id] [room]

and embed_echo, the Python handler that examples/cpp/embed.cpp (a C++
server with the Python interpreter inside) calls per read burst.

Each is a script to read and copy; the library never imports them.
"""
