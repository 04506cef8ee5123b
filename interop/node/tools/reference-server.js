#!/usr/bin/env node
'use strict';
// Reference implementation of the test-server contract that amqphub's Go engine demo server also
// implements, built on rhea's own server side. Its only job is to show that the rhea interop tests
// are right: a test that fails here is a broken test, not a broken engine.
//
//   node tools/reference-server.js --port N [--host 127.0.0.1]     (prints "listening <port>")
//
// Contract summary (see test/rhea-*.test.js for what is checked):
//   SASL PLAIN guest/guest or ANONYMOUS, or no SASL at all; Open idle-time-out 30000 ms and
//   max-frame-size 65536; links: sink, queue/<name>, source/<n>, refuse, redirect, reject; any other
//   address is refused with amqp:not-found. Every link advertises max-message-size 2 MiB.

const rhea = require('rhea');
const messageCodec = require('rhea/lib/message.js');
const types = require('rhea/lib/types.js');

const MAX_MESSAGE_SIZE = 2 * 1024 * 1024;
const RCV_SECOND = 1;

// Queues must forward messages unchanged. rhea hands the application only a decoded message, and
// re-encoding it would turn e.g. an int application property into a uint, so the raw bytes of every
// incoming message are kept on the decoded object. rhea's session calls message.decode through the
// module object at delivery time, which is what makes this wrapper take effect.
const RAW = Symbol('raw message bytes');
const decode = messageCodec.decode;
messageCodec.decode = function decodeKeepingBytes(buffer) {
  const msg = decode(buffer);
  Object.defineProperty(msg, RAW, { value: Buffer.from(buffer) });
  return msg;
};

function parseArgs(argv) {
  const args = { port: 5672, host: '127.0.0.1' };
  for (let i = 0; i < argv.length; i += 1) {
    if (argv[i] === '--port') args.port = Number(argv[++i]);
    else if (argv[i] === '--host') args.host = argv[++i];
    else throw new Error(`unknown argument ${argv[i]}`);
  }
  if (!Number.isInteger(args.port) || args.port < 0 || args.port > 65535) throw new Error('--port needs 0..65535');
  return args;
}

// ---------------------------------------------------------------- queues

// A Queue is a FIFO of encoded messages plus the consumer links attached to it. Entries carry a
// sequence number so that released and orphaned messages return to their original place.
class Queue {
  constructor() {
    this.entries = [];
    this.consumers = [];
    this.nextSeq = 0;
    this.turn = 0;
  }

  enqueue(bytes) {
    this.entries.push({ seq: this.nextSeq++, bytes });
    this.pump();
  }

  putBack(entry) {
    let i = 0;
    while (i < this.entries.length && this.entries[i].seq < entry.seq) i += 1;
    this.entries.splice(i, 0, entry);
  }

  // pump hands messages to consumers round-robin, each only within its credit.
  pump() {
    while (this.entries.length && this.consumers.length) {
      const ready = this.consumers.filter((c) => c.room() > 0);
      if (!ready.length) return;
      const consumer = ready[this.turn++ % ready.length];
      consumer.deliver(this.entries.shift());
    }
  }
}

const queues = new Map();
function queueNamed(name) {
  if (!queues.has(name)) queues.set(name, new Queue());
  return queues.get(name);
}

// ---------------------------------------------------------------- outgoing links

// room is the credit not yet claimed by messages handed to rhea. rhea only lowers link.credit when
// it writes a transfer (on the next tick), so sender.sendable() alone would let the server hand
// rhea far more messages than the client asked for.
function roomOf(sender, handed) {
  const pending = handed - sender.delivery_count;
  return Math.min(sender.credit - pending, sender.session.outgoing.available());
}

class QueueConsumer {
  constructor(sender, queue) {
    this.sender = sender;
    this.queue = queue;
    this.handed = 0;
    this.inFlight = new Map();
    this.closed = false;
  }

  room() { return this.closed ? 0 : roomOf(this.sender, this.handed); }

  deliver(entry) {
    this.handed += 1;
    const delivery = this.sender.send(entry.bytes, undefined, 0);
    this.inFlight.set(delivery, entry);
  }

  // settle applies the receiver's outcome: accepted and rejected remove the message, released and
  // modified put it back at the front. A settlement without an outcome counts as accepted.
  settle(delivery, outcome) {
    const entry = this.inFlight.get(delivery);
    if (!entry) return;
    this.inFlight.delete(delivery);
    if (outcome === 'released' || outcome === 'modified') this.queue.putBack(entry);
    this.queue.pump();
  }

  // detach returns every unsettled message to the queue so that a vanished client loses nothing.
  detach() {
    if (this.closed) return;
    this.closed = true;
    this.queue.consumers = this.queue.consumers.filter((c) => c !== this);
    for (const entry of this.inFlight.values()) this.queue.putBack(entry);
    this.inFlight.clear();
    this.queue.pump();
  }

  pump() { this.queue.pump(); }
  exhausted() { return this.queue.entries.length === 0; }
}

// SourceProducer sends `message <i>` with application property index (an AMQP int) for i < n.
class SourceProducer {
  constructor(sender, n) {
    this.sender = sender;
    this.n = n;
    this.next = 0;
    this.handed = 0;
  }

  pump() {
    while (this.next < this.n && roomOf(this.sender, this.handed) > 0) {
      const i = this.next++;
      this.handed += 1;
      this.sender.send({ body: `message ${i}`, application_properties: { index: types.wrap_int(i) } });
    }
  }

  settle() {}
  detach() {}
  exhausted() { return this.next >= this.n; }
}

// ---------------------------------------------------------------- link setup

// refuse answers the attach with a null terminus (rhea leaves it null unless set) and detaches with
// the error in the same write. rhea's receivers grant their default credit as soon as they open;
// that grant is withdrawn so a refused link never invites a transfer.
function refuse(link, condition, description) {
  withdrawCredit(link);
  link.close({ condition, description });
}

function withdrawCredit(link) {
  if (link.is_receiver()) {
    link.issue_flow = false;
    link.credit = 0;
  }
}

// The redirect error's info is an AMQP `fields` map, whose keys are symbols; rhea's error encoder
// would write string keys, so the error is built here and placed into the detach directly.
function redirect(link) {
  const info = types.wrap_symbolic_map({
    hostname: 'redirect.example',
    'network-host': 'redirect.example',
    port: types.wrap_int(5671),
    address: 'queue/redirected',
  });
  const error = types.described(types.wrap_ulong(0x1d), types.wrap_list([
    types.wrap_symbol('amqp:link:redirect'), types.wrap_string('redirected by test server'), info,
  ]));
  withdrawCredit(link);
  link.local.detach.value[2] = error;
  link.close();
}

function refuseUnknown(link, address) {
  refuse(link, 'amqp:not-found', `no node ${JSON.stringify(address)} on the test server`);
}

const producers = new WeakMap();

function onReceiverOpen(context) {
  const receiver = context.receiver;
  const target = receiver.remote.attach.target;
  const address = target ? target.address : undefined;
  if (address === 'refuse') return refuse(receiver, 'amqp:unauthorized-access', 'refused by test server');
  if (address === 'redirect') return redirect(receiver);
  if (address !== 'sink' && address !== 'reject' && !(address && address.startsWith('queue/'))) {
    return refuseUnknown(receiver, address);
  }
  receiver.set_target({ address });
  receiver.local.attach.max_message_size = MAX_MESSAGE_SIZE;
  receiver.local.attach.snd_settle_mode = receiver.remote.attach.snd_settle_mode;
  receiver.local.attach.rcv_settle_mode = 0;
  return undefined;
}

function onSenderOpen(context) {
  const sender = context.sender;
  const source = sender.remote.attach.source;
  const address = source ? source.address : undefined;
  if (address === 'refuse') return refuse(sender, 'amqp:unauthorized-access', 'refused by test server');
  if (address === 'redirect') return redirect(sender);
  let producer;
  const sourceMatch = /^source\/(\d+)$/.exec(address || '');
  if (sourceMatch) {
    producer = new SourceProducer(sender, Number(sourceMatch[1]));
  } else if (address && address.startsWith('queue/')) {
    const queue = queueNamed(address.slice('queue/'.length));
    producer = new QueueConsumer(sender, queue);
    queue.consumers.push(producer);
  } else {
    return refuseUnknown(sender, address);
  }
  sender.set_source({ address });
  sender.local.attach.max_message_size = MAX_MESSAGE_SIZE;
  sender.local.attach.snd_settle_mode = 0;
  sender.local.attach.rcv_settle_mode = sender.remote.attach.rcv_settle_mode === RCV_SECOND ? RCV_SECOND : 0;
  producers.set(sender, producer);
  return undefined;
}

// ---------------------------------------------------------------- message flow

function onMessage(context) {
  const { receiver, delivery, message } = context;
  const address = (receiver.target && receiver.target.address) || '';
  const queue = address.startsWith('queue/') ? queueNamed(address.slice('queue/'.length)) : undefined;
  if (!queue && address !== 'sink' && address !== 'reject') {
    // A transfer raced the detach of a refused link: it is neither accepted nor stored.
    if (!delivery.remote_settled) delivery.release();
    return;
  }
  if (queue) queue.enqueue(message[RAW]);
  if (delivery.remote_settled) {
    // Nothing goes back for a pre-settled transfer; settling locally frees rhea's session slot.
    delivery.update(true);
  } else if (address === 'reject') {
    delivery.reject({ condition: 'amqp:not-allowed', description: 'rejected by test server' });
  } else {
    delivery.accept();
  }
}

// onOutcome handles the client receiver's disposition. In rcv-settle-mode second the client waits
// for the server to settle, so the server settles with the same outcome; rhea keeps a delivery in
// its session buffer until both ends settled, and the client sends nothing more after that.
function onOutcome(outcome) {
  return (context) => {
    const { sender, delivery } = context;
    const producer = producers.get(sender);
    if (producer) producer.settle(delivery, outcome);
    if (!delivery.remote_settled) {
      delivery.update(true, delivery.remote_state.described());
      delivery.remote_settled = true;
    }
  };
}

function onSettledWithoutOutcome(context) {
  const producer = producers.get(context.sender);
  if (producer && !context.delivery.remote_state) producer.settle(context.delivery, 'accepted');
}

function onCredit(context) {
  const producer = producers.get(context.sender);
  if (producer) producer.pump();
}

// A drain request is answered once nothing more can be sent within the credit.
function onDraining(context) {
  const producer = producers.get(context.sender);
  if (producer && producer.exhausted()) context.sender.set_drained(true);
}

function dropProducer(sender) {
  const producer = producers.get(sender);
  if (producer) {
    producers.delete(sender);
    producer.detach();
  }
}

function dropConnection(connection) {
  connection.each_sender(dropProducer);
}

// ---------------------------------------------------------------- main

function main() {
  const args = parseArgs(process.argv.slice(2));
  const container = rhea.create_container({ id: 'amqphub-reference-server' });
  container.sasl_server_mechanisms.enable_plain((user, password) => user === 'guest' && password === 'guest');
  container.sasl_server_mechanisms.enable_anonymous();

  container.on('receiver_open', onReceiverOpen);
  container.on('sender_open', onSenderOpen);
  container.on('message', onMessage);
  container.on('accepted', onOutcome('accepted'));
  container.on('rejected', onOutcome('rejected'));
  container.on('released', onOutcome('released'));
  container.on('settled', (ctx) => { if (ctx.sender) onSettledWithoutOutcome(ctx); });
  container.on('sendable', onCredit);
  container.on('sender_flow', onCredit);
  container.on('sender_draining', onDraining);
  container.on('sender_close', (ctx) => dropProducer(ctx.sender));
  container.on('session_close', (ctx) => ctx.session.each_sender(dropProducer));
  container.on('connection_close', (ctx) => dropConnection(ctx.connection));
  container.on('disconnected', (ctx) => dropConnection(ctx.connection));
  // Link and connection errors are the client's business; the server only must not crash on them.
  container.on('error', (e) => process.stderr.write(`reference-server: ${e && e.message}\n`));
  container.on('protocol_error', (e) => process.stderr.write(`reference-server protocol error: ${e && e.message}\n`));

  const server = container.listen({
    host: args.host,
    port: args.port,
    idle_time_out: 30000,
    max_frame_size: 65536,
    autoaccept: false,
  });
  server.on('listening', () => process.stdout.write(`listening ${server.address().port}\n`));
  server.on('error', (e) => {
    process.stderr.write(`reference-server: ${e.message}\n`);
    process.exit(1);
  });
  const stop = () => server.close(() => process.exit(0));
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main();
