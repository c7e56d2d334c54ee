// fastpacket's JavaScript client: an ES module with no build step and no
// dependency, for browsers and node (>= 20; node 20 needs
// --experimental-websocket for connect(), node 22 has WebSocket built in).
//
//   import { connect, encode, MOVE } from "./fastpacket.js";
//   const client = await connect("ws://127.0.0.1:8765/", (packets) => {
//     for (const p of packets) console.log(p.type, p.playerId, p.payload);
//   });
//   client.send(MOVE, encodeMove(10, 20, 0), { playerId: 7 });
//
// The wire format is docs/wire-format.md's GAME layout, little-endian:
// size u16 (whole packet, header included), type u16, seq u32,
// player_id u32, then the payload. A WebSocket binary message carries one
// or more whole packets; decode() returns every packet of a message.
// Aggregate frames (type 0xFFFF) of codec 0 (none) are unwrapped in place;
// compressed ones (lz4, zlib: a server run with --compress) are refused
// with a ProtocolError, as is any malformed packet.

/** Bytes of the GAME header. */
export const HEADER_SIZE = 12;
/** Largest packet by default, in bytes (the size field is a u16). */
export const DEFAULT_MAX_PACKET_SIZE = 65535;
/** Packet type reserved for aggregate frames. */
export const AGGREGATE_TYPE = 0xffff;
/** Bytes of an aggregate frame's own header inside its payload. */
export const AGGREGATE_HEADER_SIZE = 8;
/** Largest seq before it wraps (u32). */
const SEQ_MOD = 0x100000000;

// The relay's packet types (fastpacket.apps.relay).
/** MOVE: x, y, z (i32), sent_ns (u64): relayed to the sender's room. */
export const MOVE = 1;
/** JOIN: room (u32). */
export const JOIN = 2;
/** LEAVE: no payload. */
export const LEAVE = 3;
/** Bytes of a MOVE payload (before any padding). */
export const MOVE_SIZE = 20;

/** A stream or message that breaks the wire format. `offset`: where, in bytes. */
export class ProtocolError extends Error {
  constructor(message, offset) {
    super(offset === undefined ? message : `${message} (at byte ${offset})`);
    this.name = "ProtocolError";
    this.offset = offset;
  }
}

function asBytes(data, what) {
  if (data instanceof Uint8Array) return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  throw new TypeError(`${what} must be an ArrayBuffer or a typed array, not ${typeof data}`);
}

function checkField(name, value, max) {
  if (!Number.isInteger(value) || value < 0 || value > max) {
    throw new RangeError(`${name} must be an integer in [0, ${max}], got ${value}`);
  }
}

/**
 * One packet on the wire: a Uint8Array of HEADER_SIZE + payload bytes.
 * `payload`: a typed array or ArrayBuffer (default empty).
 */
export function encode(type, payload = new Uint8Array(0), { seq = 0, playerId = 0 } = {}) {
  const body = asBytes(payload, "payload");
  checkField("type", type, 0xffff);
  checkField("seq", seq, SEQ_MOD - 1);
  checkField("playerId", playerId, SEQ_MOD - 1);
  const size = HEADER_SIZE + body.length;
  if (size > DEFAULT_MAX_PACKET_SIZE) {
    throw new RangeError(`a packet of ${size} bytes does not fit the u16 size field (payload ${body.length} bytes)`);
  }
  const out = new Uint8Array(size);
  const view = new DataView(out.buffer);
  view.setUint16(0, size, true);
  view.setUint16(2, type, true);
  view.setUint32(4, seq, true);
  view.setUint32(8, playerId, true);
  out.set(body, HEADER_SIZE);
  return out;
}

/** Packets (Uint8Arrays from encode()) back to back in one buffer: one message. */
export function concat(packets) {
  let total = 0;
  for (const p of packets) total += p.length;
  const out = new Uint8Array(total);
  let at = 0;
  for (const p of packets) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/**
 * Every packet of one message (an ArrayBuffer or typed array holding whole
 * packets), in order: {type, seq, playerId, size, payload} where payload is
 * a Uint8Array view into the message (no copy). Throws ProtocolError for a
 * size out of range, a message that ends inside a packet, or an aggregate
 * frame that is compressed or malformed.
 */
export function decode(data, { maxPacketSize = DEFAULT_MAX_PACKET_SIZE } = {}) {
  const bytes = asBytes(data, "data");
  const packets = [];
  decodeInto(bytes, maxPacketSize, packets, false);
  return packets;
}

function decodeInto(bytes, maxPacketSize, packets, insideAggregate) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let at = 0;
  while (at < bytes.length) {
    if (bytes.length - at < HEADER_SIZE) {
      throw new ProtocolError(`the message ends inside a packet header (${bytes.length - at} bytes left)`, at);
    }
    const size = view.getUint16(at, true);
    if (size < HEADER_SIZE || size > maxPacketSize) {
      throw new ProtocolError(`packet size ${size} out of range [${HEADER_SIZE}, ${maxPacketSize}]`, at);
    }
    if (at + size > bytes.length) {
      throw new ProtocolError(`the message ends inside a packet of ${size} bytes (${bytes.length - at} present)`, at);
    }
    const type = view.getUint16(at + 2, true);
    const payload = bytes.subarray(at + HEADER_SIZE, at + size);
    if (type === AGGREGATE_TYPE) {
      if (insideAggregate) throw new ProtocolError("an aggregate frame inside an aggregate frame", at);
      unwrapAggregate(payload, maxPacketSize, packets, at);
    } else {
      packets.push({ type, seq: view.getUint32(at + 4, true), playerId: view.getUint32(at + 8, true), size, payload });
    }
    at += size;
  }
}

function unwrapAggregate(payload, maxPacketSize, packets, offset) {
  if (payload.length < AGGREGATE_HEADER_SIZE) {
    throw new ProtocolError(`aggregate frame of ${payload.length} payload bytes, under its header`, offset);
  }
  const view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  const codec = view.getUint8(0);
  const count = view.getUint16(2, true);
  const rawSize = view.getUint32(4, true);
  if (codec !== 0) {
    throw new ProtocolError(`compressed aggregate frame (codec ${codec}): serve without --compress for this client`, offset);
  }
  const body = payload.subarray(AGGREGATE_HEADER_SIZE);
  if (body.length !== rawSize) {
    throw new ProtocolError(`aggregate body of ${body.length} bytes, raw_size says ${rawSize}`, offset);
  }
  const inner = [];
  decodeInto(body, maxPacketSize, inner, true);
  if (inner.length !== count) {
    throw new ProtocolError(`aggregate frame holds ${inner.length} packets, count says ${count}`, offset);
  }
  packets.push(...inner);
}

/** A MOVE payload: x, y, z (i32) and sent_ns (u64, default: now in ns of performance.now()). */
export function encodeMove(x, y, z = 0, sentNs = nowNs()) {
  const out = new Uint8Array(MOVE_SIZE);
  const view = new DataView(out.buffer);
  view.setInt32(0, x, true);
  view.setInt32(4, y, true);
  view.setInt32(8, z, true);
  view.setBigUint64(12, BigInt(sentNs), true);
  return out;
}

/** {x, y, z, sentNs (BigInt)} of a MOVE payload; ProtocolError if it is short. */
export function decodeMove(payload) {
  if (payload.length < MOVE_SIZE) throw new ProtocolError(`MOVE payload of ${payload.length} bytes, expected ${MOVE_SIZE}`);
  const view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  return {
    x: view.getInt32(0, true),
    y: view.getInt32(4, true),
    z: view.getInt32(8, true),
    sentNs: view.getBigUint64(12, true),
  };
}

/** A JOIN payload for `room` (u32). */
export function encodeJoin(room) {
  checkField("room", room, SEQ_MOD - 1);
  const out = new Uint8Array(4);
  new DataView(out.buffer).setUint32(0, room, true);
  return out;
}

/** Monotonic nanoseconds (BigInt) from performance.now(). */
export function nowNs() {
  return BigInt(Math.round(performance.now() * 1e6));
}

/**
 * Open a WebSocket to a fastpacket server; resolves to a Client once open.
 * `onBatch(packets, client)` gets every packet of each message (decode()).
 * Options: onClose({code, reason}), maxPacketSize, WebSocket (a constructor,
 * default the global one).
 */
export function connect(url, onBatch, { onClose = null, maxPacketSize = DEFAULT_MAX_PACKET_SIZE, WebSocket: WS = globalThis.WebSocket } = {}) {
  if (typeof WS !== "function") {
    return Promise.reject(new TypeError("no WebSocket constructor: pass { WebSocket } (node 20: --experimental-websocket)"));
  }
  return new Promise((resolve, reject) => {
    const ws = new WS(url);
    ws.binaryType = "arraybuffer";
    const client = new Client(ws);
    let opened = false;
    ws.onopen = () => {
      opened = true;
      resolve(client);
    };
    ws.onmessage = (event) => {
      if (typeof event.data === "string") {
        client.close(1003, "text message");
        return;
      }
      let packets;
      try {
        packets = decode(event.data, { maxPacketSize });
      } catch (err) {
        client.close(1002, String(err.message).slice(0, 120));
        return;
      }
      onBatch(packets, client);
    };
    ws.onclose = (event) => {
      const info = { code: event.code, reason: event.reason };
      client.closed = info;
      if (!opened) reject(new Error(`connection to ${url} failed (close code ${event.code})`));
      else if (onClose) onClose(info);
    };
  });
}

/** An open connection: send() queues packets, sent as one binary message per microtask. */
export class Client {
  constructor(ws) {
    this.ws = ws;
    this.closed = null;
    this._queue = [];
    this._seq = 0;
  }

  /** Queue one packet (seq: this client's next, unless given); returns the seq used. */
  send(type, payload = new Uint8Array(0), { playerId = 0, seq = undefined } = {}) {
    const used = seq === undefined ? this._seq : seq;
    this._queue.push(encode(type, payload, { seq: used, playerId }));
    if (seq === undefined) this._seq = (this._seq + 1) % SEQ_MOD;
    if (this._queue.length === 1) queueMicrotask(() => this.flush());
    return used;
  }

  /** Send what is queued now, as one message (normally automatic). */
  flush() {
    if (!this._queue.length || this.ws.readyState !== 1) return;
    const message = this._queue.length === 1 ? this._queue[0] : concat(this._queue);
    this._queue = [];
    this.ws.send(message);
  }

  /** Close (after what is queued). */
  close(code = 1000, reason = "") {
    this.flush();
    this.ws.close(code, reason);
  }
}
