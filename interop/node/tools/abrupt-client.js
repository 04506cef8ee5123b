#!/usr/bin/env node
'use strict';
// A rhea client that dies badly, for the "abrupt client" interop test:
//   node tools/abrupt-client.js <queue-name>        (AMQP_HOST / AMQP_PORT as for the tests)
// It sends three messages to queue/<queue-name> and waits until they are accepted, then starts a
// 1 MiB (multi-frame) message, writes only half of that delivery's third frame and kills itself with
// SIGKILL: no Detach, no Close, a torn frame, and whatever the kernel does with the socket.
// It prints "accepted 3" and then "cut <bytes>" just before dying, so the test can tell that it got
// that far.

const net = require('node:net');
const fs = require('node:fs');
const { openSender, sendAndSettle, target, rhea } = require('./rhea-harness.js');

// rhea 3.0.5 hands each frame to socket.write separately, so a chunk that starts with a transfer
// performative (descriptor 0x00 0x53 0x14 right after the 8-byte frame header) is one transfer frame.
function isTransferFrame(chunk) {
  return Buffer.isBuffer(chunk) && chunk.length > 11 && chunk[8] === 0x00 && chunk[9] === 0x53 && chunk[10] === 0x14;
}

function say(line) {
  fs.writeSync(1, `${line}\n`);
}

async function main() {
  const queue = process.argv[2];
  if (!queue) throw new Error('usage: abrupt-client.js <queue-name>');
  const { host, port } = target();
  let armed = false;
  let transfers = 0;
  let cut = false;
  const connect = (p, h, _options, callback) => {
    const socket = net.connect({ port: p, host: h }, callback);
    const write = socket.write.bind(socket);
    socket.write = (chunk, ...rest) => {
      if (cut) return true;
      if (armed && isTransferFrame(chunk) && ++transfers === 3) {
        cut = true;
        const half = chunk.subarray(0, chunk.length >> 1);
        write(half, () => {
          say(`cut ${half.length}`);
          process.kill(process.pid, 'SIGKILL');
        });
        return true;
      }
      return write(chunk, ...rest);
    };
    return socket;
  };

  const container = rhea.create_container({ id: 'abrupt-client' });
  container.on('error', () => {});
  const conn = container.connect({ host, port, reconnect: false, connect });
  const sender = await openSender(conn, { target: { address: `queue/${queue}` } });
  for (let i = 1; i <= 3; i += 1) {
    const { outcome } = await sendAndSettle(sender, { body: `before-${i}` });
    if (outcome !== 'accepted') throw new Error(`message ${i} was ${outcome}`);
  }
  say('accepted 3');
  armed = true;
  sender.send({ body: rhea.message.data_section(Buffer.alloc(1024 * 1024, 0x5a)) });
}

main().catch((e) => {
  process.stderr.write(`abrupt-client: ${e.stack || e}\n`);
  process.exit(2);
});
