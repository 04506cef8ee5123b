'use strict';
// Device authentication with the official Node SDK (azure-iot-device +
// azure-iot-device-amqp): connection-string devices authenticate through
// CBS put-token (the SDK sends no SASL), over AMQPS (5671) and AMQP over
// WebSockets (443), renew their token inside the connection, and are
// refused with UnauthorizedError when they should be.
// Env: DEVICE_CS, WRONG_KEY_CS, DISABLED_CS, EXPIRED_SAS_CS, RENEW_SECONDS.
// (A token for another device cannot be expressed through this SDK: it
// takes the device identity from the token itself. The Go tests cover it.)
const test = require('node:test');
const assert = require('node:assert');
const { Client, Message, SharedAccessKeyAuthenticationProvider } = require('azure-iot-device');
const { Amqp, AmqpWs } = require('azure-iot-device-amqp');
const { errors } = require('azure-iot-common');
const { need } = require('../tools/sdk-helpers.js');

for (const [name, Transport] of [['Amqp', Amqp], ['AmqpWs', AmqpWs]]) {
  test(`${name}: a connection-string device opens (CBS) and sends`, { timeout: 30000 }, async () => {
    const client = Client.fromConnectionString(need('DEVICE_CS'), Transport);
    try {
      await client.open();
      await client.sendEvent(new Message(`hello over ${name}`));
    } finally {
      await client.close();
    }
  });

  for (const [what, env] of [['a wrong key', 'WRONG_KEY_CS'], ['a disabled device', 'DISABLED_CS'], ['an expired token', 'EXPIRED_SAS_CS']]) {
    test(`${name}: ${what} is refused with UnauthorizedError`, { timeout: 30000 }, async () => {
      const client = Client.fromConnectionString(need(env), Transport);
      // The SDK retries only retryable errors: an unauthorized open must
      // fail at once, not hang in retries.
      client.setRetryPolicy(new (require('azure-iot-common').NoRetry)());
      const started = Date.now();
      try {
        // Refused at put-token (open) or, at the latest, when a link
        // attaches (send).
        await assert.rejects(async () => {
          await client.open();
          await client.sendEvent(new Message('must not arrive'));
        }, (err) => {
          assert.ok(err instanceof errors.UnauthorizedError || err.transportError instanceof errors.UnauthorizedError,
            `expected UnauthorizedError, got ${err && err.constructor && err.constructor.name}: ${err && err.message}`);
          return true;
        });
        assert.ok(Date.now() - started < 15000, 'refusal took too long');
      } finally {
        await client.close().catch(() => {});
      }
    });
  }
}

test('short tokens are renewed inside the connection (no reconnect)', { timeout: 240000 }, async () => {
  const seconds = Number(process.env.RENEW_SECONDS || 90);
  // 30-second tokens, renewed 10 s before they expire.
  const provider = SharedAccessKeyAuthenticationProvider.fromConnectionString(need('DEVICE_CS'), 30, 10);
  const client = Client.fromAuthenticationProvider(provider, Amqp);
  let disconnects = 0;
  client.on('disconnect', () => { disconnects++; });
  client.on('error', () => {});
  await client.open();
  try {
    const end = Date.now() + seconds * 1000;
    let sent = 0;
    while (Date.now() < end) {
      await client.sendEvent(new Message(`renewal ${sent}`));
      sent++;
      await new Promise((r) => setTimeout(r, 5000));
    }
    assert.strictEqual(disconnects, 0, 'the client reconnected');
    console.log(`sent ${sent} messages over ${seconds} s on one connection`);
  } finally {
    await client.close();
  }
});
