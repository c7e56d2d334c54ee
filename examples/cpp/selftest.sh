#!/usr/bin/env bash
# ctest's check of the C++ reference: each server under one second of the
# load generator's load, every byte and every delivery checked (the load
# generator exits non-zero otherwise). Usage: selftest.sh SERVER LOADGEN
set -euo pipefail
server=$1 loadgen=$2
for app in echo relay; do
  coproc SRV { exec "$server" "$app" 0; }
  read -r -t 10 -u "${SRV[0]}" _ port
  if [ "$app" = echo ]; then args=(echo 127.0.0.1 "$port" 8 1); else args=(move 127.0.0.1 "$port" 40 1 4 8); fi
  result=$(echo go | timeout 60 "$loadgen" "${args[@]}" | tail -1)
  kill "$SRV_PID"; wait "$SRV_PID" || true
  echo "$app: $result"
  case "$result" in *'"ok": true'*) ;; *) exit 1 ;; esac
done
