'use strict';
// A wire tap for rhea client connections. rhea hides the frames it exchanges (it checks neither
// the peer's frame sizes nor whether heartbeats arrived), so the interop tests install this tap
// as rhea's `connect` function and inspect what the server really put on the wire.

const net = require('node:net');
const { performance } = require('node:perf_hooks');
const frames = require('rhea/lib/frames.js');

const PERFORMATIVES = {
  0x10: 'open', 0x11: 'begin', 0x12: 'attach', 0x13: 'flow', 0x14: 'transfer',
  0x15: 'disposition', 0x16: 'detach', 0x17: 'end', 0x18: 'close',
  0x40: 'sasl-mechanisms', 0x41: 'sasl-init', 0x42: 'sasl-challenge',
  0x43: 'sasl-response', 0x44: 'sasl-outcome',
};

// descriptorCode reads the performative's numeric descriptor from the frame body (rhea's decoded
// performative objects no longer carry it).
function descriptorCode(raw, bodyOffset) {
  if (raw[bodyOffset] !== 0x00) return undefined;
  const ctor = raw[bodyOffset + 1];
  if (ctor === 0x53) return raw[bodyOffset + 2];
  if (ctor === 0x80) return raw.readUInt32BE(bodyOffset + 6);
  return undefined;
}

// Splits one direction of a connection's byte stream into protocol headers and frames.
// Chunk boundaries are arbitrary; a header can only start where a frame would (a frame size
// beginning with the bytes "AMQP" would be over a gigabyte), which keeps the split unambiguous.
class StreamParser {
  constructor(onRecord) {
    this.onRecord = onRecord;
    this.pending = Buffer.alloc(0);
  }

  push(chunk) {
    this.pending = this.pending.length ? Buffer.concat([this.pending, chunk]) : chunk;
    for (;;) {
      if (this.pending.length >= 4 && this.pending.toString('latin1', 0, 4) === 'AMQP') {
        if (this.pending.length < 8) return;
        this.onRecord({ name: 'header', protocolId: this.pending[4], size: 8 });
        this.pending = this.pending.subarray(8);
        continue;
      }
      if (this.pending.length < 8) return;
      const size = this.pending.readUInt32BE(0);
      if (this.pending.length < size) return;
      const raw = Buffer.from(this.pending.subarray(0, size));
      this.pending = this.pending.subarray(size);
      this.onRecord(decodeFrame(raw));
    }
  }
}

function decodeFrame(raw) {
  const size = raw.readUInt32BE(0);
  const doff = raw[4];
  const layer = raw[5] === 1 ? 'sasl' : 'amqp';
  const channel = raw.readUInt16BE(6);
  if (size === doff * 4) return { name: 'empty', layer, size, channel };
  const decoded = frames.read_frame(raw);
  const code = descriptorCode(raw, doff * 4);
  return {
    name: PERFORMATIVES[code] || `unknown-0x${Number(code).toString(16)}`,
    layer,
    size,
    channel,
    performative: decoded.performative,
    payload: decoded.payload,
  };
}

// createFrameTap() returns { connect, received, sent, socket() }. Pass `connect` in rhea's connection
// options; every frame the client receives or sends is recorded with a monotonic timestamp `at` (ms).
function createFrameTap() {
  const received = [];
  const sent = [];
  let socket;
  const inbound = new StreamParser((r) => received.push({ ...r, at: performance.now() }));
  const outbound = new StreamParser((r) => sent.push({ ...r, at: performance.now() }));

  function connect(port, host, _options, callback) {
    socket = net.connect({ port, host }, callback);
    socket.on('data', (chunk) => inbound.push(chunk));
    const write = socket.write.bind(socket);
    socket.write = (chunk, ...rest) => {
      outbound.push(Buffer.from(chunk));
      return write(chunk, ...rest);
    };
    return socket;
  }

  return { connect, received, sent, socket: () => socket };
}

// Groups transfer frames into deliveries per (channel, handle): continuation frames may omit the
// delivery-id, and a delivery ends with the first frame whose `more` flag is false.
function deliveriesOf(records) {
  const open = new Map();
  const done = [];
  for (const r of records) {
    if (r.name !== 'transfer') continue;
    const key = `${r.channel}/${r.performative.handle}`;
    let d = open.get(key);
    if (!d) {
      d = { channel: r.channel, handle: r.performative.handle, deliveryId: r.performative.delivery_id,
        settled: Boolean(r.performative.settled), frames: [], chunks: [] };
      open.set(key, d);
    }
    d.frames.push(r);
    if (r.payload) d.chunks.push(r.payload);
    if (!r.performative.more) {
      open.delete(key);
      done.push({ ...d, payload: Buffer.concat(d.chunks) });
    }
  }
  return done;
}

module.exports = { createFrameTap, deliveriesOf, StreamParser };
