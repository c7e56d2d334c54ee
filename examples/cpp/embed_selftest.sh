#!/usr/bin/env bash
# ctest's check of fastpacket_embed: the C++ server with a Python echo
# handler (fastpacket.examples.embed_echo; embed_keep.py, which holds
# batches past its return) under the C++ load generator's pipelined echo,
# every byte checked (the load generator exits non-zero otherwise).
# Usage: embed_selftest.sh EMBED LOADGEN PYTHON (the Python fastpacket is installed in)
set -euo pipefail
embed=$1 loadgen=$2 python=$3
here=$(cd "$(dirname "$0")" && pwd)
FASTPACKET_EMBED_PATH="$("$python" -c 'import site; print(":".join(site.getsitepackages()))'):$here"
export FASTPACKET_EMBED_PATH
# the shipped echo handler, then one that keeps batches past its return (embed_keep.py)
for handler in fastpacket.examples.embed_echo:on_burst embed_keep:on_burst; do
  coproc SRV { exec "$embed" 0 "$handler"; }
  read -r -t 30 -u "${SRV[0]}" _ port
  result=$(echo go | timeout 60 "$loadgen" echo 127.0.0.1 "$port" 8 1 | tail -1)
  kill "$SRV_PID"; wait "$SRV_PID" || true
  echo "$handler: $result"
  case "$result" in *'"ok": true'*) ;; *) exit 1 ;; esac
done
