'use strict';
// rhea as an independent AMQP 1.0 client: link attach outcomes (refused, not found, redirected) and
// many sessions and links on one connection.
// Run against a server with AMQP_PORT (and optionally AMQP_HOST) set; see tools/run-reference.sh.

const test = require('node:test');
const assert = require('node:assert/strict');
const h = require('../tools/rhea-harness.js');
const { normalize, mapEntries } = require('../tools/amqp-typed.js');

h.target(); // fail the file at once, with the reason, when AMQP_PORT is missing

const TIMEOUT = { timeout: 20000 };

// A terminus the server left out or sent as null (rhea turns the latter into a typed null).
function isNullTerminus(terminus) {
  return terminus === undefined || terminus === null || (terminus.type && terminus.type.typecode === 0x40);
}

// The server's attach for a link (found by link name) and the detach that followed it on the same
// handle. Handles are matched only after the attach because a server may reuse a detached link's
// handle for the next link.
function serverFramesFor(tap, link) {
  const at = tap.received.findIndex((r) => r.name === 'attach' && r.performative.name === link.name);
  if (at < 0) return {};
  const attach = tap.received[at];
  const detach = tap.received.slice(at + 1).find((r) => r.name === 'detach' &&
    r.channel === attach.channel && r.performative.handle === attach.performative.handle);
  return { attach, detach };
}

async function expectRefused(conn, tap, role, address, condition) {
  const isSender = role === 'sender';
  const link = isSender ? conn.open_sender({ target: { address } }) : conn.open_receiver({ source: { address } });
  await h.waitFor(link, `${role}_error`, { what: `the ${role} attach to ${address} to be refused` });
  assert.equal(link.error.condition, condition, `${role} to ${address}: condition`);

  const { attach, detach } = serverFramesFor(tap, link);
  assert.ok(attach, `server answered the ${role} attach before detaching`);
  const terminus = isSender ? attach.performative.target : attach.performative.source;
  assert.ok(isNullTerminus(terminus), `server's attach for a refused ${role} carries a null ${isSender ? 'target' : 'source'}`);
  assert.ok(detach, `server detached the refused ${role}`);
  assert.equal(detach.performative.closed, true, 'the refusing detach closes the link');
  return link;
}

async function stillUsable(conn) {
  const sender = await h.openSender(conn, { target: { address: 'sink' } });
  assert.equal((await h.sendAndSettle(sender, { body: 'still usable' })).outcome, 'accepted');
}

test('refuse: attach answered with a null terminus, then detached with amqp:unauthorized-access', TIMEOUT, async (t) => {
  const { conn, tap } = await h.openConnection(t);
  for (const role of ['sender', 'receiver']) {
    const link = await expectRefused(conn, tap, role, 'refuse', 'amqp:unauthorized-access');
    assert.equal(link.error.description, 'refused by test server');
  }
  await stillUsable(conn);
});

test('an unknown address is refused with amqp:not-found', TIMEOUT, async (t) => {
  const { conn, tap } = await h.openConnection(t);
  await expectRefused(conn, tap, 'sender', 'no/such/node', 'amqp:not-found');
  await expectRefused(conn, tap, 'receiver', 'no/such/node', 'amqp:not-found');
  await stillUsable(conn);
});

test('redirect: link error amqp:link:redirect with hostname, network-host, port and address', TIMEOUT, async (t) => {
  const { conn, tap } = await h.openConnection(t);
  for (const role of ['receiver', 'sender']) {
    const link = role === 'receiver'
      ? conn.open_receiver({ source: { address: 'redirect' } })
      : conn.open_sender({ target: { address: 'redirect' } });
    await h.waitFor(link, `${role}_error`, { what: `the redirect of a ${role}` });
    const { condition, info } = link.error;
    assert.equal(condition, 'amqp:link:redirect');
    assert.equal(info.hostname, 'redirect.example');
    assert.equal(info['network-host'], 'redirect.example');
    assert.equal(typeof info.port, 'number');
    assert.equal(info.port, 5671);
    assert.equal(info.address, 'queue/redirected');

    // The error info is an AMQP `fields` map: symbol keys. The Event Hubs and IoT SDKs look the
    // entries up by symbol, and the contract makes the port an int.
    const { detach } = serverFramesFor(tap, link);
    const error = normalize(detach.performative.value[2]);
    const entries = mapEntries(error.value.items[2]);
    for (const key of ['hostname', 'network-host', 'port', 'address']) {
      assert.equal(entries[key] && entries[key].keyType, 'symbol', `info key ${key} is a symbol`);
    }
    assert.equal(entries.port.t, 'int', 'info port is an AMQP int');
    assert.equal(entries.hostname.t, 'string');
  }
  await stillUsable(conn);
});

test('20 sessions x 5 sender/receiver pairs on one connection, each pair through its own queue', TIMEOUT, async (t) => {
  const SESSIONS = 20;
  const PAIRS = 5;
  const PER_LINK = 3;
  const base = h.uniqueName('many');
  const { conn, tap } = await h.openConnection(t);

  const sessions = [];
  for (let s = 0; s < SESSIONS; s += 1) {
    const session = conn.create_session();
    const opened = h.waitFor(session, 'session_open', { what: `session ${s} to begin`, failOn: ['session_error'] });
    session.begin();
    sessions.push({ session, opened });
  }
  await Promise.all(sessions.map((x) => x.opened));

  const pairs = [];
  for (let s = 0; s < SESSIONS; s += 1) {
    for (let l = 0; l < PAIRS; l += 1) {
      const address = `queue/${base}-${s}-${l}`;
      const { session } = sessions[s];
      pairs.push({
        tag: `${s}/${l}`,
        sender: h.openSender(session, { target: { address } }, `sender ${s}/${l}`),
        receiver: h.openReceiver(session, { source: { address } }, `receiver ${s}/${l}`),
      });
    }
  }
  for (const p of pairs) {
    p.sender = await p.sender;
    p.receiver = await p.receiver;
  }

  for (const p of pairs) {
    p.accepted = h.counter(p.sender, 'accepted');
    for (let k = 0; k < PER_LINK; k += 1) p.sender.send({ body: `${p.tag}#${k}` });
  }
  await Promise.all(pairs.map(async (p) => {
    await p.accepted.reach(PER_LINK, { what: `accepted outcomes on ${p.tag}` });
    const got = await p.receiver.inbox.take(PER_LINK, { what: `messages on ${p.tag}` });
    assert.deepEqual(got.map((c) => c.message.body), Array.from({ length: PER_LINK }, (_, k) => `${p.tag}#${k}`));
  }));

  const beginsIn = tap.received.filter((r) => r.name === 'begin');
  assert.equal(new Set(beginsIn.map((r) => r.channel)).size, SESSIONS, 'the server answered each session on its own channel');
  assert.equal(tap.received.filter((r) => r.name === 'attach').length, SESSIONS * PAIRS * 2);
});
