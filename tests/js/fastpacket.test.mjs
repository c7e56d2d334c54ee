// node --test for src/fastpacket/static/fastpacket.js: the codec on its own
// (against bytes Python's fastpacket.encode produced, in wire_vectors.json),
// and, when FASTPACKET_WS_URL names a running `fastpacket serve relay
// --ws-port`, two clients in one room over a real server.
// Run by tests/test_js_client.py (which starts the server), or by hand:
//   node --experimental-websocket --test tests/js/
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import {
  AGGREGATE_TYPE, HEADER_SIZE, JOIN, MOVE, ProtocolError, concat, connect, decode, decodeMove, encode,
  encodeJoin, encodeMove,
} from "../../src/fastpacket/static/fastpacket.js";

const vectors = JSON.parse(readFileSync(new URL("./wire_vectors.json", import.meta.url), "utf8"));
const hex = (s) => Uint8Array.from(s.match(/../g) ?? [], (b) => parseInt(b, 16));
const WAIT_MS = 10000;

test("encode matches Python's fastpacket.encode byte for byte", () => {
  for (const v of vectors.packets) {
    const got = encode(v.type, hex(v.payload), { seq: v.seq, playerId: v.player_id });
    assert.deepEqual(got, hex(v.wire), JSON.stringify(v));
  }
});

test("decode returns every packet of a message, payloads as views", () => {
  const message = hex(vectors.message);
  const packets = decode(message.buffer.slice(message.byteOffset, message.byteOffset + message.length));
  assert.equal(packets.length, vectors.packets.length);
  packets.forEach((p, i) => {
    const v = vectors.packets[i];
    assert.equal(p.type, v.type);
    assert.equal(p.seq, v.seq);
    assert.equal(p.playerId, v.player_id);
    assert.deepEqual(p.payload, hex(v.payload));
    assert.equal(p.size, HEADER_SIZE + p.payload.length);
  });
});

test("an uncompressed aggregate frame is unwrapped; a compressed one refused", () => {
  const agg = decode(hex(vectors.aggregate_none));
  assert.deepEqual(agg.map((p) => p.type), vectors.aggregate_types);
  assert.throws(() => decode(hex(vectors.aggregate_lz4)), ProtocolError);
  assert.ok(!decode(hex(vectors.aggregate_none)).some((p) => p.type === AGGREGATE_TYPE));
});

test("malformed messages raise ProtocolError with the offset", () => {
  const one = encode(5, new Uint8Array([1, 2, 3]));
  assert.throws(() => decode(one.subarray(0, 13)), /ends inside a packet of 15 bytes.*at byte 0/);
  assert.throws(() => decode(concat([one, one.subarray(0, 5)])), /inside a packet header.*at byte 15/);
  const bad = Uint8Array.from(one);
  bad[0] = 3;
  bad[1] = 0;
  assert.throws(() => decode(bad), /size 3 out of range/);
  assert.throws(() => decode(one, { maxPacketSize: 14 }), /size 15 out of range \[12, 14\]/);
  assert.throws(() => decode("text"), TypeError);
});

test("arguments out of range are refused", () => {
  assert.throws(() => encode(70000), /type must be an integer/);
  assert.throws(() => encode(1, new Uint8Array(0), { playerId: -1 }), /playerId/);
  assert.throws(() => encode(1, new Uint8Array(65536)), /does not fit/);
});

test("MOVE and JOIN payloads", () => {
  const move = decodeMove(encodeMove(-5, 7, 9, 123456789n));
  assert.deepEqual(move, { x: -5, y: 7, z: 9, sentNs: 123456789n });
  assert.deepEqual(encodeJoin(3), Uint8Array.from([3, 0, 0, 0]));
  assert.throws(() => decodeMove(new Uint8Array(4)), ProtocolError);
});

const url = process.env.FASTPACKET_WS_URL;

test("two clients in one room of a real relay see each other's MOVEs", { skip: !url && "FASTPACKET_WS_URL not set" }, async () => {
  const room = 5;
  const inbox = { a: [], b: [] };
  const waiters = [];
  const wake = () => waiters.splice(0).forEach((fn) => fn());
  const until = async (cond) => {
    const deadline = Date.now() + WAIT_MS;
    while (!cond()) {
      if (Date.now() > deadline) throw new Error("timed out");
      await new Promise((r) => { waiters.push(r); setTimeout(r, 50); });
    }
  };
  const a = await connect(url, (packets) => { inbox.a.push(...packets); wake(); });
  const b = await connect(url, (packets) => { inbox.b.push(...packets); wake(); });
  a.send(JOIN, encodeJoin(room), { playerId: 101 });
  b.send(JOIN, encodeJoin(room), { playerId: 102 });
  await until(() => inbox.a.some((p) => p.type === JOIN) && inbox.b.some((p) => p.type === JOIN));
  // two packets queued in one tick go out as one message; the relay relays both
  a.send(MOVE, encodeMove(10, 20, 0), { playerId: 101 });
  a.send(MOVE, encodeMove(11, 21, 0), { playerId: 101 });
  b.send(MOVE, encodeMove(-3, 4, 0), { playerId: 102 });
  const moves = (box) => box.filter((p) => p.type === MOVE).map((p) => [p.playerId, decodeMove(p.payload).x]);
  await until(() => moves(inbox.a).length >= 3 && moves(inbox.b).length >= 3);
  for (const box of [inbox.a, inbox.b]) {
    const got = moves(box);
    assert.deepEqual(got.filter(([id]) => id === 101), [[101, 10], [101, 11]]);
    assert.deepEqual(got.filter(([id]) => id === 102), [[102, -3]]);
  }
  const closed = new Promise((r) => { b.ws.addEventListener("close", r); });
  a.close();
  b.close();
  await closed;
});
