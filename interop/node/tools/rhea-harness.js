'use strict';
// Client-side helpers for the rhea interop tests: where the server is, connections that always get
// closed, and waiting for rhea events with a deadline and a readable failure message.

const rhea = require('rhea');
const { createFrameTap } = require('./frame-tap.js');

// target reads the server address from the environment. AMQP_PORT has no default on purpose:
// silently testing whatever listens on 5672 would make a green run meaningless.
function target() {
  const port = Number(process.env.AMQP_PORT);
  if (!process.env.AMQP_PORT || !Number.isInteger(port) || port <= 0 || port > 65535) {
    throw new Error(
      `AMQP_PORT must be set to the TCP port of the AMQP server under test (got ${JSON.stringify(process.env.AMQP_PORT)}). ` +
      'Against the rhea reference server run tools/run-reference.sh.');
  }
  return { host: process.env.AMQP_HOST || '127.0.0.1', port };
}

let unique = 0;
// uniqueName gives queue names that no other test (or earlier run against a long-lived server) uses.
function uniqueName(prefix) {
  unique += 1;
  return `${prefix}-${process.pid}-${Date.now().toString(36)}-${unique}`;
}

// waitFor resolves with the first `event` whose arguments pass `filter`; it rejects when one of
// `failOn` fires on the same emitter, or at the deadline, naming what it was waiting for.
function waitFor(emitter, event, { what = event, timeoutMs = 10000, filter = () => true, failOn = [] } = {}) {
  return new Promise((resolve, reject) => {
    const listeners = [];
    const done = (fn, value) => {
      clearTimeout(timer);
      for (const [name, l] of listeners) emitter.removeListener(name, l);
      fn(value);
    };
    const on = (name, l) => { listeners.push([name, l]); emitter.on(name, l); };
    const timer = setTimeout(() => done(reject, new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)), timeoutMs);
    on(event, (...args) => { if (filter(...args)) done(resolve, args[0]); });
    for (const name of failOn) {
      on(name, (ctx) => done(reject, new Error(`${name} while waiting for ${what}: ${describeError(ctx)}`)));
    }
  });
}

function describeError(ctx) {
  if (!ctx) return 'no details';
  if (ctx instanceof Error) return ctx.message;
  const candidates = [ctx.error, ctx.sender && ctx.sender.error, ctx.receiver && ctx.receiver.error,
    ctx.session && ctx.session.error, ctx.connection && ctx.connection.error];
  const err = candidates.find((e) => e);
  if (!err) return 'no error condition from the peer';
  return `${err.condition || ''} ${err.description || err.message || ''}`.trim();
}

// Inbox records every message a receiver gets from the moment it is created. It must exist before
// the attach completes: rhea dispatches transfers that arrive in the same read as the attach
// before an awaiting test could add a listener, and such messages would be lost to the test.
class Inbox {
  constructor(receiver) {
    this.receiver = receiver;
    this.all = [];
    this.taken = 0;
    this.waiters = [];
    receiver.on('message', (ctx) => {
      this.all.push(ctx);
      this.waiters = this.waiters.filter((w) => !w());
    });
  }

  // take resolves with the next n messages not yet taken.
  take(n, { what = `${n} message(s)`, timeoutMs = 10000 } = {}) {
    return new Promise((resolve, reject) => {
      const ready = () => {
        if (this.all.length - this.taken < n) return false;
        clearTimeout(timer);
        const out = this.all.slice(this.taken, this.taken + n);
        this.taken += n;
        resolve(out);
        return true;
      };
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== ready);
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what} (have ${this.all.length - this.taken})`));
      }, timeoutMs);
      if (!ready()) this.waiters.push(ready);
    });
  }
}

// counter counts `event`s on an emitter and resolves `reach(n)` once n have been seen.
function counter(emitter, event) {
  const seen = [];
  let waiters = [];
  emitter.on(event, (ctx) => {
    seen.push(ctx);
    waiters = waiters.filter((w) => !w());
  });
  return {
    seen,
    reach(n, { what = `${n} ${event} events`, timeoutMs = 10000 } = {}) {
      return new Promise((resolve, reject) => {
        const ready = () => {
          if (seen.length < n) return false;
          clearTimeout(timer);
          resolve(seen.slice(0, n));
          return true;
        };
        const timer = setTimeout(() => {
          waiters = waiters.filter((w) => w !== ready);
          reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what} (saw ${seen.length})`));
        }, timeoutMs);
        if (!ready()) waiters.push(ready);
      });
    },
  };
}

// startConnection connects a fresh rhea container to the server with a frame tap installed and
// reconnect off (rhea reconnects by default, which would hide failures). The connection is closed
// when the test ends, whatever its outcome. It does not wait for anything.
function startConnection(t, options = {}) {
  const { host, port } = target();
  const tap = createFrameTap();
  const container = rhea.create_container({ id: uniqueName('rhea-interop') });
  const containerErrors = [];
  container.on('error', (e) => containerErrors.push(e));
  const conn = container.create_connection({ host, port, reconnect: false, connect: tap.connect, ...options });
  conn.on('disconnected', () => {});
  t.after(() => closeConnection(conn));
  conn.connect();
  return { conn, container, tap, containerErrors };
}

// openConnection is startConnection plus waiting for the server's Open.
async function openConnection(t, options = {}) {
  const opened = startConnection(t, options);
  await waitFor(opened.conn, 'connection_open', {
    what: 'the server Open', failOn: ['connection_error', 'connection_close', 'disconnected'],
  });
  return opened;
}

// stayFor resolves after `ms` unless one of `failOn` fires first: for checks that something keeps
// working for a while (a connection surviving an idle period), not for hoping that work got done.
function stayFor(emitter, ms, failOn) {
  return new Promise((resolve, reject) => {
    const listeners = failOn.map((name) => [name, (ctx) => {
      finish();
      reject(new Error(`${name} during the ${ms} ms wait: ${describeError(ctx)}`));
    }]);
    const finish = () => { clearTimeout(timer); for (const [n, l] of listeners) emitter.removeListener(n, l); };
    const timer = setTimeout(() => { finish(); resolve(); }, ms);
    for (const [n, l] of listeners) emitter.on(n, l);
  });
}

// closeConnection closes politely and waits for the socket to go; a server that does not answer
// Close within the deadline gets its socket destroyed so that the test process can exit.
async function closeConnection(conn, timeoutMs = 3000) {
  const socket = conn.socket;
  if (!socket || socket.destroyed) {
    forgetTimers(conn);
    return;
  }
  const gone = new Promise((resolve) => socket.once('close', resolve));
  if (conn.is_open()) conn.close();
  else socket.end();
  const timer = setTimeout(() => socket.destroy(), timeoutMs);
  await gone;
  clearTimeout(timer);
  forgetTimers(conn);
}

// rhea clears its heartbeat timers only when it sees the socket end; after a destroy it never does,
// and a pending timer would keep the test process alive.
function forgetTimers(conn) {
  for (const name of ['heartbeat_out', 'heartbeat_in', 'abort_idle']) {
    if (conn[name]) clearTimeout(conn[name]);
    conn[name] = undefined;
  }
}

// openSender / openReceiver attach a link and wait for the server's attach. The receiver comes with
// an Inbox that was listening before the attach was sent.
async function openSender(parent, options, what = 'sender attach') {
  const sender = parent.open_sender(options);
  await waitFor(sender, 'sender_open', { what, failOn: ['sender_error', 'sender_close'] });
  return sender;
}

async function openReceiver(parent, options, what = 'receiver attach') {
  const receiver = parent.open_receiver(options);
  const inbox = new Inbox(receiver);
  await waitFor(receiver, 'receiver_open', { what, failOn: ['receiver_error', 'receiver_close'] });
  return { receiver, inbox };
}

// sendAndSettle sends one message and resolves with the outcome event name and its context.
function sendAndSettle(sender, message, what = 'the outcome of a sent message') {
  const delivery = sender.send(message);
  const matches = (ctx) => ctx.delivery === delivery;
  return new Promise((resolve, reject) => {
    const events = ['accepted', 'rejected', 'released', 'modified'];
    const handlers = events.map((name) => [name, (ctx) => {
      if (!matches(ctx)) return;
      cleanup();
      resolve({ outcome: name, ctx });
    }]);
    const cleanup = () => { clearTimeout(timer); for (const [n, h] of handlers) sender.removeListener(n, h); };
    const timer = setTimeout(() => { cleanup(); reject(new Error(`timed out waiting for ${what}`)); }, 10000);
    for (const [n, h] of handlers) sender.on(n, h);
  });
}

module.exports = {
  rhea, target, uniqueName, waitFor, stayFor, Inbox, counter, startConnection, openConnection, closeConnection,
  openSender, openReceiver, sendAndSettle, describeError,
};
