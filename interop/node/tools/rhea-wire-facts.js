#!/usr/bin/env node
'use strict';
// Prints what a default-configured rhea client puts on the wire, for the people writing the
// server: protocol header, Open, Begin, Attach for a sender and a receiver, Flow, Transfer and
// Disposition, with every field rhea sets. Runs against any server that implements the test
// contract (AMQP_HOST / AMQP_PORT as for the tests):
//   node tools/rhea-wire-facts.js [--sasl]        (--sasl: connect with PLAIN guest/guest)

const types = require('rhea/lib/types.js');
const h = require('./rhea-harness.js');

// Described values (terminus, outcome) print as descriptor code plus their plain field list.
function show(v) {
  if (Buffer.isBuffer(v)) return `<${v.length} bytes>`;
  if (v && v.descriptor) return `0x${Number(v.descriptor.value).toString(16)}:${JSON.stringify(types.unwrap(v.value))}`;
  return v;
}

function fields(performative) {
  if (!performative) return undefined;
  const out = {};
  // rhea's performatives expose their fields as inherited accessors, hence for...in.
  for (const key in performative) {
    if (key === 'value') continue;
    const v = performative[key];
    if (typeof v === 'function') continue;
    if (v === undefined || v === null || (v && v.type && v.type.typecode === 0x40)) continue;
    out[key] = show(v);
  }
  return out;
}

async function main() {
  const sasl = process.argv.includes('--sasl');
  const cleanups = [];
  const t = { after: (fn) => cleanups.push(fn) };
  const { conn, tap } = await h.openConnection(t, sasl ? { username: 'guest', password: 'guest' } : {});
  const queue = `queue/${h.uniqueName('facts')}`;
  const sender = await h.openSender(conn, { target: { address: queue } });
  await h.sendAndSettle(sender, { body: 'facts' });
  const { inbox } = await h.openReceiver(conn, { source: { address: queue } });
  await inbox.take(1);
  for (const r of tap.sent) {
    const detail = r.name === 'header' ? { protocol_id: r.protocolId } : fields(r.performative);
    const payload = r.payload ? ` +${r.payload.length} payload bytes` : '';
    process.stdout.write(`C->S ch${r.channel ?? '-'} ${r.name} ${JSON.stringify(detail)}${payload}\n`);
  }
  for (const fn of cleanups) await fn();
}

main().catch((e) => {
  process.stderr.write(`${e.stack || e}\n`);
  process.exit(1);
});
