'use strict';
// Device telemetry with the official Node SDK (azure-iot-device +
// azure-iot-device-amqp) over AMQPS (5671) and AMQP over WebSockets (443):
// messages with properties and binary bodies are acknowledged, and a
// message over the 256 KiB limit is refused with MessageTooLargeError
// without breaking the client. The Go test interop/telemetry_test.go
// then reads the hub's log and checks what was stored.
// Env: AMQP_DEVICE_CS, AMQPWS_DEVICE_CS (one device per transport),
// RUN_ID (a marker the Go side looks for), NODE_EXTRA_CA_CERTS.
const test = require('node:test');
const assert = require('node:assert');
const { Client, Message } = require('azure-iot-device');
const { Amqp, AmqpWs } = require('azure-iot-device-amqp');
const { errors, NoRetry } = require('azure-iot-common');
const { need } = require('../tools/sdk-helpers.js');

for (const [name, Transport, env] of [['Amqp', Amqp, 'AMQP_DEVICE_CS'], ['AmqpWs', AmqpWs, 'AMQPWS_DEVICE_CS']]) {
  test(`${name}: telemetry with properties is acknowledged`, { timeout: 60000 }, async () => {
    const client = Client.fromConnectionString(need(env), Transport);
    try {
      await client.open();
      const json = new Message(JSON.stringify({ temperature: 21.5, transport: name, run: need('RUN_ID') }));
      json.messageId = `${name}-msg-1`;
      json.correlationId = `${name}-corr-1`;
      json.contentType = 'application/json';
      json.contentEncoding = 'utf-8';
      json.properties.add('temperatureAlert', 'true');
      json.properties.add('transport', name);
      const res = await client.sendEvent(json);
      assert.equal(res.constructor.name, 'MessageEnqueued');

      const bin = new Message(Buffer.from([0, 1, 2, 0xfe, 0xff]));
      bin.messageId = `${name}-msg-2`;
      await client.sendEvent(bin);
    } finally {
      await client.close();
    }
  });

  test(`${name}: a message over 256 KiB is refused with MessageTooLargeError`, { timeout: 60000 }, async () => {
    const client = Client.fromConnectionString(need(env), Transport);
    client.setRetryPolicy(new NoRetry());
    try {
      await client.open();
      // The hub detaches the link; the SDK then tears its transport down
      // and fails whatever it queued meanwhile with the same error, so the
      // next send waits for that to finish.
      const disconnected = new Promise((resolve) => client.once('disconnect', resolve));
      const big = new Message(Buffer.alloc(257 * 1024, 0x61));
      big.messageId = `${name}-too-large`;
      await assert.rejects(client.sendEvent(big), (err) => {
        const e = err.transportError || err;
        assert.ok(e instanceof errors.MessageTooLargeError,
          `expected MessageTooLargeError, got ${e && e.constructor && e.constructor.name}: ${e && e.message}`);
        return true;
      });
      await disconnected;
      // The client recovers: the next message goes through.
      const after = new Message('after the refusal');
      after.messageId = `${name}-msg-3`;
      await client.sendEvent(after);
    } finally {
      await client.close();
    }
  });
}
