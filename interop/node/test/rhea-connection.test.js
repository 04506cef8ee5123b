'use strict';
// rhea as an independent AMQP 1.0 client: connection-level behaviour of the server under test
// (protocol headers, SASL, Open fields, heartbeats, surviving a client that dies mid-transfer).
// Run against a server with AMQP_PORT (and optionally AMQP_HOST) set; see tools/run-reference.sh.

const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { spawn } = require('node:child_process');
const { performance } = require('node:perf_hooks');
const h = require('../tools/rhea-harness.js');

h.target(); // fail the file at once, with the reason, when AMQP_PORT is missing

const TIMEOUT = { timeout: 20000 };

function asList(v) {
  if (v === undefined || v === null) return [];
  return Array.isArray(v) ? v : [v];
}

function headers(records) {
  return records.filter((r) => r.name === 'header').map((r) => r.protocolId);
}

function only(records, name) {
  const found = records.filter((r) => r.name === name);
  assert.equal(found.length, 1, `expected exactly one ${name} frame, saw ${found.length}`);
  return found[0].performative;
}

test('connects with a bare AMQP header (no SASL) and gets the contract Open', TIMEOUT, async (t) => {
  const { conn, tap } = await h.openConnection(t);
  assert.deepEqual(headers(tap.sent), [0], 'rhea without credentials sends the plain AMQP header');
  assert.deepEqual(headers(tap.received), [0], 'server answers with the plain AMQP header');
  assert.equal(tap.received.filter((r) => r.layer === 'sasl').length, 0, 'no SASL frames without SASL');
  const open = conn.remote.open;
  assert.equal(open.idle_time_out, 30000, 'server Open idle-time-out');
  assert.equal(open.max_frame_size, 65536, 'server Open max-frame-size');
  assert.ok(open.container_id, 'server Open carries a container-id');
});

test('SASL PLAIN guest/guest succeeds; PLAIN and ANONYMOUS are offered', TIMEOUT, async (t) => {
  const { tap } = await h.openConnection(t, { username: 'guest', password: 'guest' });
  assert.deepEqual(headers(tap.received), [3, 0], 'SASL header, then AMQP header after the outcome');
  const mechanisms = asList(only(tap.received, 'sasl-mechanisms').sasl_server_mechanisms);
  assert.ok(mechanisms.includes('PLAIN'), `PLAIN offered (got ${mechanisms})`);
  assert.ok(mechanisms.includes('ANONYMOUS'), `ANONYMOUS offered (got ${mechanisms})`);
  assert.equal(only(tap.sent, 'sasl-init').mechanism, 'PLAIN');
  assert.equal(only(tap.received, 'sasl-outcome').code, 0, 'sasl-outcome ok');
});

test('SASL PLAIN with a wrong password fails promptly with an auth outcome', TIMEOUT, async (t) => {
  const { conn, tap } = h.startConnection(t, { username: 'guest', password: 'not-guest' });
  const socketClosed = new Promise((resolve) => conn.socket.once('close', resolve));
  const failed = await h.waitFor(conn, 'connection_error', {
    what: 'the SASL failure', timeoutMs: 5000, failOn: ['connection_open'],
  });
  assert.equal(failed.connection.error, undefined, 'no AMQP Close: the failure is at the SASL layer');
  assert.equal(conn.get_error().condition, 'amqp:unauthorized-access');
  assert.equal(only(tap.received, 'sasl-outcome').code, 1, 'sasl-outcome code auth (1)');
  assert.deepEqual(headers(tap.received), [3], 'no AMQP header after a failed SASL exchange');
  await socketClosed;
});

test('SASL ANONYMOUS succeeds', TIMEOUT, async (t) => {
  const { conn, tap } = await h.openConnection(t, { username: 'interop-anonymous' });
  assert.equal(only(tap.sent, 'sasl-init').mechanism, 'ANONYMOUS');
  assert.equal(only(tap.received, 'sasl-outcome').code, 0);
  assert.ok(conn.is_open());
});

test('idle-time-out: server heartbeats keep a client with idle-time-out 2000 ms alive for 7 s of silence', TIMEOUT, async (t) => {
  const { conn, tap } = await h.openConnection(t, { idle_time_out: 2000 });
  const start = performance.now();
  await h.stayFor(conn, 7000, ['connection_error', 'connection_close', 'disconnected']);
  const end = performance.now();
  assert.ok(conn.is_open(), 'connection still open after the silence');

  const during = tap.received.filter((r) => r.at >= start && r.at <= end);
  const empties = during.filter((r) => r.name === 'empty');
  const times = [start, ...during.map((r) => r.at), end];
  let maxGap = 0;
  for (let i = 1; i < times.length; i += 1) maxGap = Math.max(maxGap, times[i] - times[i - 1]);
  // A client may drop the connection when nothing arrives within its idle-time-out; the contract
  // promises heartbeats at half of it, so 2000 ms is the hard limit and ~1000 ms the expected gap.
  assert.ok(maxGap < 2000, `longest silence from the server was ${maxGap.toFixed(0)} ms (must be < 2000)`);
  assert.ok(empties.length >= 3, `expected heartbeat (empty) frames, got ${empties.length} in 7 s`);

  const sender = await h.openSender(conn, { target: { address: 'sink' } });
  const { outcome } = await h.sendAndSettle(sender, { body: 'after the silence' });
  assert.equal(outcome, 'accepted');
});

function runAbruptClient(queue) {
  const { host, port } = h.target();
  const child = spawn(process.execPath, [path.join(__dirname, '..', 'tools', 'abrupt-client.js'), queue], {
    env: { ...process.env, AMQP_HOST: host, AMQP_PORT: String(port) },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => { stdout += d; });
  child.stderr.on('data', (d) => { stderr += d; });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`abrupt client did not finish within 10 s; stdout=${stdout} stderr=${stderr}`));
    }, 10000);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

test('a client killed mid-transfer does not break the next client', TIMEOUT, async (t) => {
  const name = h.uniqueName('abrupt');
  const dead = await runAbruptClient(name);
  assert.equal(dead.signal, 'SIGKILL', `abrupt client should die by SIGKILL (code ${dead.code}, stderr ${dead.stderr})`);
  assert.match(dead.stdout, /accepted 3\ncut \d+\n/, 'abrupt client got as far as tearing a transfer frame');

  const { conn } = await h.openConnection(t);
  const { inbox } = await h.openReceiver(conn, { source: { address: `queue/${name}` } });
  const before = await inbox.take(3, { what: 'the three accepted messages of the dead client' });
  assert.deepEqual(before.map((c) => c.message.body), ['before-1', 'before-2', 'before-3']);

  // The torn 1 MiB delivery must not surface: the next message in the queue is the marker.
  const sender = await h.openSender(conn, { target: { address: `queue/${name}` } });
  assert.equal((await h.sendAndSettle(sender, { body: 'marker' })).outcome, 'accepted');
  const [next] = await inbox.take(1, { what: 'the marker message' });
  assert.equal(next.message.body, 'marker');
});
