'use strict';
// rhea as an independent AMQP 1.0 client: transfers, outcomes, settlement and flow control against
// the test-server contract (sink, queue/<name>, source/<n>, reject).
// Run against a server with AMQP_PORT (and optionally AMQP_HOST) set; see tools/run-reference.sh.

const test = require('node:test');
const assert = require('node:assert/strict');
const h = require('../tools/rhea-harness.js');
const { deliveriesOf } = require('../tools/frame-tap.js');
const { messageSections } = require('../tools/amqp-typed.js');

h.target(); // fail the file at once, with the reason, when AMQP_PORT is missing

const { rhea } = h;
const types = rhea.types;
const TIMEOUT = { timeout: 20000 };
const SETTLED = 1; // snd-settle-mode settled
const SECOND = 1; // rcv-settle-mode second

// A round trip on its own link: once the server has answered it, the server has also processed
// (and written whatever it was going to write for) every frame this client sent before it.
async function barrier(conn) {
  const sender = await h.openSender(conn, { target: { address: 'sink' } }, 'barrier sender attach');
  const { outcome, ctx } = await h.sendAndSettle(sender, { body: 'barrier' }, 'the barrier message outcome');
  assert.equal(outcome, 'accepted');
  return ctx.delivery;
}

// Deterministic, non-repeating filler so that a reordered or duplicated frame payload shows.
function pattern(size, seed) {
  const buf = Buffer.alloc(size);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < size; i += 1) {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    buf[i] = x & 0xff;
  }
  return buf;
}

test('1000 messages to sink are all accepted and settled', TIMEOUT, async (t) => {
  const { conn } = await h.openConnection(t);
  const sender = await h.openSender(conn, { target: { address: 'sink' } });
  const accepted = h.counter(sender, 'accepted');
  const deliveries = [];
  for (let i = 0; i < 1000; i += 1) deliveries.push(sender.send({ body: `sink ${i}` }));
  await accepted.reach(1000, { what: '1000 accepted outcomes' });
  const acceptedDeliveries = new Set(accepted.seen.map((ctx) => ctx.delivery));
  assert.equal(acceptedDeliveries.size, 1000, 'each delivery accepted exactly once');
  assert.ok(deliveries.every((d) => acceptedDeliveries.has(d) && d.remote_settled), 'every delivery settled by the server');
});

const UUID_A = Buffer.from('1b4e28ba2fa111d2883f0016d3cca427', 'hex');
const UUID_B = Buffer.from('9f3c1e0a5b7d4c2e8a6f0d1c2b3a4958', 'hex');
const CREATED = new Date(1700000000123);

function richMessages() {
  return [
    {
      message_id: 'message-id-string',
      correlation_id: 'correlation-1',
      content_type: 'text/plain',
      content_encoding: 'utf-8',
      subject: 'subject-1',
      to: 'queue/somewhere',
      reply_to: 'queue/replies',
      group_id: 'group-1',
      creation_time: CREATED,
      application_properties: {
        string: 'text with ü and 漢字',
        int: types.wrap_int(-42),
        long: types.wrap_long(1234567890123),
        uint: types.wrap_uint(4000000000),
        short: types.wrap_short(-7),
        ubyte: types.wrap_ubyte(200),
        double: types.wrap_double(3.25),
        boolean: true,
        timestamp: types.wrap_timestamp(CREATED.getTime()),
        binary: Buffer.from([0, 1, 2, 254, 255]),
        uuid: types.wrap_uuid(UUID_B),
        symbol: types.wrap_symbol('a-symbol'),
        null: null,
      },
      message_annotations: {
        'x-opt-string': 'annotation',
        'x-opt-long': types.wrap_long(7),
        'x-opt-timestamp': types.wrap_timestamp(CREATED.getTime()),
      },
      body: 'amqp-value string body',
    },
    {
      message_id: UUID_A,
      correlation_id: UUID_B,
      content_type: 'application/json',
      application_properties: { seq: types.wrap_int(2) },
      message_annotations: { 'x-opt-partition-key': 'pk' },
      body: rhea.message.data_section(Buffer.from('{"json":true}')),
    },
    {
      message_id: types.wrap_ulong(77),
      correlation_id: Buffer.from('binary-correlation'),
      body: rhea.message.sequence_section([1, 'two', true]),
    },
    { message_id: 'map-body', body: { key: 'value', n: types.wrap_long(5), list: [1, 2] } },
  ];
}

const CHECKED_SECTIONS = ['properties', 'application_properties', 'message_annotations', 'body'];

test('queue round trip keeps order, properties, application properties, annotations and bodies', TIMEOUT, async (t) => {
  const queue = `queue/${h.uniqueName('props')}`;
  const { conn, tap } = await h.openConnection(t);
  const sender = await h.openSender(conn, { target: { address: queue } });
  const sent = richMessages();
  for (const m of sent) assert.equal((await h.sendAndSettle(sender, m)).outcome, 'accepted');

  const { inbox } = await h.openReceiver(conn, { source: { address: queue } });
  const got = (await inbox.take(sent.length, { what: 'the queued messages' })).map((c) => c.message);

  // As rhea's application sees them.
  const [a, b, c, d] = got;
  assert.equal(a.message_id, 'message-id-string');
  assert.equal(a.correlation_id, 'correlation-1');
  assert.equal(a.content_type, 'text/plain');
  assert.equal(a.subject, 'subject-1');
  assert.equal(a.reply_to, 'queue/replies');
  assert.equal(a.creation_time.getTime(), CREATED.getTime());
  assert.equal(a.body, 'amqp-value string body');
  assert.equal(a.application_properties.string, 'text with ü and 漢字');
  assert.equal(a.application_properties.int, -42);
  assert.equal(a.application_properties.long, 1234567890123);
  assert.equal(a.application_properties.boolean, true);
  assert.equal(a.application_properties.null, null);
  assert.deepEqual(a.application_properties.binary, Buffer.from([0, 1, 2, 254, 255]));
  assert.equal(a.message_annotations['x-opt-string'], 'annotation');
  assert.ok(Buffer.isBuffer(b.message_id) && b.message_id.equals(UUID_A), 'uuid message-id comes back as the same 16 bytes');
  assert.ok(b.correlation_id.equals(UUID_B), 'uuid correlation-id');
  assert.equal(b.body.typecode, 0x75, 'data section body');
  assert.equal(b.body.content.toString(), '{"json":true}');
  assert.equal(c.message_id, 77);
  assert.deepEqual(c.body.content, [1, 'two', true]);
  assert.equal(d.body.key, 'value');

  // On the wire, with AMQP types (int stays int, uuid stays uuid, symbol keys stay symbols).
  const received = deliveriesOf(tap.received);
  assert.equal(received.length, sent.length, 'one inbound delivery per message');
  sent.forEach((m, i) => {
    const want = messageSections(rhea.message.encode(m));
    const have = messageSections(received[i].payload);
    for (const section of CHECKED_SECTIONS) {
      assert.deepEqual(have[section], want[section], `message ${i}: ${section} changed in transit`);
    }
  });
});

test('1 B, 64 KiB and 1 MiB bodies round-trip byte-exact, split into frames both ways', TIMEOUT, async (t) => {
  const CLIENT_MAX_FRAME = 16384;
  const queue = `queue/${h.uniqueName('sizes')}`;
  const { conn, tap } = await h.openConnection(t, { max_frame_size: CLIENT_MAX_FRAME });
  const sizes = [1, 64 * 1024, 1024 * 1024];
  const bodies = sizes.map((n, i) => pattern(n, 0x9e3779b9 + i));

  const sender = await h.openSender(conn, { target: { address: queue } });
  for (const body of bodies) {
    const { outcome } = await h.sendAndSettle(sender, { body: rhea.message.data_section(body) }, `outcome of a ${body.length} B message`);
    assert.equal(outcome, 'accepted');
  }
  const { inbox } = await h.openReceiver(conn, { source: { address: queue } });
  const got = await inbox.take(bodies.length, { what: 'the three sized messages' });
  got.forEach((ctx, i) => {
    assert.equal(ctx.message.body.typecode, 0x75, 'data section');
    assert.ok(ctx.message.body.content.equals(bodies[i]), `body of ${sizes[i]} B differs after the round trip`);
  });

  const tooBig = tap.received.filter((r) => r.size > CLIENT_MAX_FRAME);
  assert.equal(tooBig.length, 0, `server sent frames above the client's max-frame-size: ${tooBig.map((r) => `${r.name}:${r.size}`)}`);
  const largeIn = deliveriesOf(tap.received).find((d) => d.payload.length > 1024 * 1024);
  assert.ok(largeIn && largeIn.frames.length >= 64, `1 MiB reached the client in ${largeIn && largeIn.frames.length} frames`);
  const largeOut = deliveriesOf(tap.sent).find((d) => d.payload.length > 1024 * 1024);
  assert.ok(largeOut.frames.length >= 16, 'rhea split the 1 MiB message by the server max-frame-size');
  assert.ok(tap.sent.every((r) => r.size <= 65536), 'no frame to the server above its max-frame-size');
});

test('manual credit: source/50 never sends beyond the granted credit', TIMEOUT, async (t) => {
  const { conn, tap } = await h.openConnection(t);
  const { receiver, inbox } = await h.openReceiver(conn, { source: { address: 'source/50' }, credit_window: 0 });
  let granted = 0;
  const overruns = [];
  receiver.on('message', () => { if (inbox.all.length > granted) overruns.push(inbox.all.length); });

  const grant = async (n, expect) => {
    granted += n;
    receiver.add_credit(n);
    await inbox.take(expect, { what: `${expect} messages after granting ${n} credit` });
    await barrier(conn);
    assert.deepEqual(overruns, [], `messages beyond credit ${granted}`);
    assert.equal(inbox.all.length, Math.min(granted, 50));
  };
  await grant(10, 10);
  await grant(15, 15);
  await grant(100, 25); // only 25 are left in source/50

  inbox.all.forEach((ctx, i) => {
    assert.equal(ctx.message.body, `message ${i}`);
    assert.equal(ctx.message.application_properties.index, i);
  });
  const sourceDeliveries = deliveriesOf(tap.received).filter((d) => d.handle === receiver.remote.attach.handle);
  assert.equal(sourceDeliveries.length, 50);
  assert.ok(sourceDeliveries.every((d) => !d.settled), 'source/<n> sends unsettled');
  const props = messageSections(sourceDeliveries[7].payload).application_properties.pairs;
  assert.deepEqual(props, [[{ t: 'string', v: 'index' }, { t: 'int', v: 7 }]], 'index is an AMQP int');
});

test('drain: the server answers a drain with credit 0 and the delivery-count advanced', TIMEOUT, async (t) => {
  const { conn, tap } = await h.openConnection(t);
  const { receiver, inbox } = await h.openReceiver(conn, { source: { address: 'source/3' }, credit_window: 0 });
  receiver.add_credit(10);
  await inbox.take(3, { what: 'the three messages of source/3' });
  const drained = h.waitFor(receiver, 'receiver_drained', { what: 'the drain reply' });
  receiver.drain_credit();
  await drained;
  assert.equal(receiver.credit, 0);
  const reply = tap.received
    .filter((r) => r.name === 'flow' && r.performative.handle === receiver.remote.attach.handle && r.performative.drain)
    .pop();
  assert.ok(reply, 'the server sent a flow with drain set for this link');
  assert.equal(reply.performative.link_credit, 0);
  assert.equal(reply.performative.delivery_count, 10, '3 sent + 7 unused credit');
  assert.equal(inbox.all.length, 3);
});

test('rcv-settle-mode second: released comes back first, accepted is gone', TIMEOUT, async (t) => {
  const queue = `queue/${h.uniqueName('second')}`;
  const { conn, tap } = await h.openConnection(t);
  const sender = await h.openSender(conn, { target: { address: queue } });
  for (const body of ['one', 'two']) assert.equal((await h.sendAndSettle(sender, { body })).outcome, 'accepted');

  const { receiver, inbox } = await h.openReceiver(conn, {
    source: { address: queue }, rcv_settle_mode: SECOND, autoaccept: false, credit_window: 0,
  });
  const next = async (what) => {
    receiver.add_credit(1);
    const [ctx] = await inbox.take(1, { what });
    return ctx;
  };
  const serverSettles = (delivery, what) => h.waitFor(receiver, 'settled', { what, filter: (ctx) => ctx.delivery === delivery });

  const first = await next('the first message');
  assert.equal(first.message.body, 'one');
  let settled = serverSettles(first.delivery, 'the server to settle the released delivery');
  first.delivery.release();
  await settled;

  const again = await next('the released message again');
  assert.equal(again.message.body, 'one', 'a released message goes back to the front');
  settled = serverSettles(again.delivery, 'the server to settle the accepted delivery');
  again.delivery.accept();
  await settled;

  const second = await next('the second message');
  assert.equal(second.message.body, 'two');
  settled = serverSettles(second.delivery, 'the server to settle the second accepted delivery');
  second.delivery.accept();
  await settled;

  assert.equal((await h.sendAndSettle(sender, { body: 'three' })).outcome, 'accepted');
  const third = await next('the message sent after both were accepted');
  assert.equal(third.message.body, 'three', 'accepted messages are gone from the queue');

  const clientDispositions = tap.sent.filter((r) => r.name === 'disposition' && r.performative.role === true);
  assert.equal(clientDispositions.length, 3, 'release, accept, accept');
  assert.ok(clientDispositions.every((r) => !r.performative.settled), 'in mode second the client does not settle first');
});

test('pre-settled sends get nothing back and still arrive', TIMEOUT, async (t) => {
  const queue = `queue/${h.uniqueName('presettled')}`;
  const { conn, tap } = await h.openConnection(t);
  const toSink = await h.openSender(conn, { target: { address: 'sink' }, snd_settle_mode: SETTLED });
  const toQueue = await h.openSender(conn, { target: { address: queue }, snd_settle_mode: SETTLED });
  for (let i = 0; i < 100; i += 1) toSink.send({ body: `presettled ${i}` });
  for (let i = 0; i < 20; i += 1) toQueue.send({ body: `queued ${i}` });
  const barrierDelivery = await barrier(conn);

  const presettledOut = deliveriesOf(tap.sent).filter((d) => d.settled);
  assert.equal(presettledOut.length, 120, 'rhea sent the transfers settled');
  const dispositions = tap.received.filter((r) => r.name === 'disposition');
  assert.equal(dispositions.length, 1, 'only the barrier message gets a disposition');
  assert.equal(dispositions[0].performative.first, barrierDelivery.id);
  assert.ok([undefined, null, barrierDelivery.id].includes(dispositions[0].performative.last));

  const { inbox } = await h.openReceiver(conn, { source: { address: queue } });
  const got = await inbox.take(20, { what: 'the pre-settled queue messages' });
  assert.deepEqual(got.map((c) => c.message.body), Array.from({ length: 20 }, (_, i) => `queued ${i}`));
});

test('reject: every message is settled rejected with amqp:not-allowed', TIMEOUT, async (t) => {
  const { conn } = await h.openConnection(t);
  const sender = await h.openSender(conn, { target: { address: 'reject' } });
  for (let i = 0; i < 3; i += 1) {
    const { outcome, ctx } = await h.sendAndSettle(sender, { body: `to be rejected ${i}` });
    assert.equal(outcome, 'rejected');
    assert.equal(ctx.delivery.remote_state.error.condition, 'amqp:not-allowed');
    assert.equal(ctx.delivery.remote_settled, true);
  }
});
