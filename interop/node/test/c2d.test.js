'use strict';
// Cloud-to-device messages with the official Node SDKs: azure-iothub's
// Client.send (Amqp, 5671) reaches an azure-iot-device device (Amqp
// transport) through the hub; the device completes, rejects or abandons,
// and the service's feedback receiver (getFeedbackReceiver) reports the
// outcome per originalMessageId. Expiry, purge (the SDK's generated REST
// client, DELETE /devices/{id}/commands), the 50-message queue limit and
// unknown devices give what the SDK maps.
// Env: DEVICE_ID, DEVICE_CS, OFFLINE_ID, FULL_ID, SERVICE_CS, HOST,
// NODE_EXTRA_CA_CERTS, MAX_DELIVERY_COUNT, QUEUE_DEPTH. The Go test
// interop/c2d_test.go sets them.
const test = require('node:test');
const assert = require('node:assert/strict');
const { randomUUID } = require('node:crypto');
const { Client: DeviceClient, Message } = require('azure-iot-device');
const { Amqp } = require('azure-iot-device-amqp');
const { Client: ServiceClient, IoTHubTokenCredentials } = require('azure-iothub');
const { IotHubGatewayServiceAPIs } = require('azure-iothub/dist/pl/iotHubGatewayServiceAPIs');
const { need } = require('../tools/sdk-helpers.js');

const T = { timeout: 60000 };

// feedback collects the records of every feedback message the service's
// feedback receiver gets, and lets tests wait for one by message id.
const feedback = {
  records: [],
  batches: 0,
  waiters: [],
  add(msg) {
    const body = JSON.parse(msg.getData().toString());
    assert.ok(Array.isArray(body), 'a feedback body is a JSON array');
    this.batches++;
    for (const r of body) {
      this.records.push(r);
    }
    this.waiters = this.waiters.filter((w) => !w());
  },
  // wait resolves with the records for id once there are n of them.
  wait(id, n = 1, ms = 20000) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new Error(`no feedback for ${id} within ${ms} ms; have ${JSON.stringify(this.records)}`));
      }, ms);
      const check = () => {
        const got = this.records.filter((r) => r.originalMessageId === id);
        if (got.length < n) return false;
        clearTimeout(timer);
        resolve(got);
        return true;
      };
      if (!check()) this.waiters.push(check);
    });
  },
};

let service;

test.before(async () => {
  service = ServiceClient.fromConnectionString(need('SERVICE_CS'));
  await service.open();
  await new Promise((resolve, reject) => {
    service.getFeedbackReceiver((err, receiver) => {
      if (err) return reject(err);
      receiver.on('message', (msg) => {
        feedback.add(msg);
        // The receiver already accepted on arrival; the hub must ignore
        // this second accept.
        receiver.complete(msg, () => {});
      });
      receiver.on('error', (e) => console.error('feedback receiver error:', e));
      resolve();
    });
  });
});

test.after(async () => {
  if (service) await service.close();
});

// device opens a device client whose 'message' handler is onMessage.
async function device(onMessage) {
  const d = DeviceClient.fromConnectionString(need('DEVICE_CS'), Amqp);
  d.on('error', () => {});
  d.on('message', (msg) => onMessage(d, msg));
  await d.open();
  return d;
}

function c2d(id, ack, body = 'payload') {
  const m = new Message(body);
  m.messageId = id;
  m.ack = ack;
  return m;
}

function checkRecord(r, id, deviceId, status) {
  assert.equal(r.originalMessageId, id);
  assert.equal(r.deviceId, deviceId);
  assert.equal(r.statusCode, status);
  assert.equal(r.description, status);
  assert.match(r.deviceGenerationId, /^\d+$/);
  assert.match(r.enqueuedTimeUtc, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}Z$/);
}

test('a completed message gives Success feedback for its uuid message id', T, async () => {
  const id = randomUUID(); // the SDK sends it as an AMQP uuid
  let received;
  const got = new Promise((resolve) => { received = resolve; });
  const d = await device((client, msg) => {
    if (msg.messageId !== id) return;
    client.complete(msg, () => received(msg));
  });
  try {
    const m = c2d(id, 'full', 'turn on');
    m.correlationId = 'corr-42';
    m.properties.add('color', 'blue');
    await service.send(need('DEVICE_ID'), m);
    const msg = await got;
    assert.equal(msg.data.toString(), 'turn on');
    assert.equal(msg.correlationId, 'corr-42');
    assert.equal(msg.ack, 'full');
    assert.equal(msg.properties.getValue('color'), 'blue');
    assert.equal(msg.to, `/devices/${need('DEVICE_ID')}/messages/devicebound`);
    const [r] = await feedback.wait(id);
    checkRecord(r, id, need('DEVICE_ID'), 'Success');
  } finally {
    await d.close();
  }
});

test('a rejected message gives Rejected feedback', T, async () => {
  const id = `reject-${randomUUID().slice(0, 8)}`;
  const d = await device((client, msg) => {
    if (msg.messageId === id) client.reject(msg, () => {});
  });
  try {
    await service.send(need('DEVICE_ID'), c2d(id, 'negative'));
    const [r] = await feedback.wait(id);
    checkRecord(r, id, need('DEVICE_ID'), 'Rejected');
  } finally {
    await d.close();
  }
});

test('abandoning until the delivery count runs out gives DeliveryCountExceeded', T, async () => {
  const id = `abandon-${randomUUID().slice(0, 8)}`;
  let deliveries = 0;
  const d = await device((client, msg) => {
    if (msg.messageId !== id) return;
    deliveries++;
    client.abandon(msg, () => {});
  });
  try {
    await service.send(need('DEVICE_ID'), c2d(id, 'full'));
    const [r] = await feedback.wait(id);
    checkRecord(r, id, need('DEVICE_ID'), 'DeliveryCountExceeded');
    assert.equal(deliveries, Number(need('MAX_DELIVERY_COUNT')), 'delivered once per allowed abandon');
  } finally {
    await d.close();
  }
});

test('a message with a 1-second TTL that no device receives gives Expired', T, async () => {
  const id = `ttl-${randomUUID().slice(0, 8)}`;
  const m = c2d(id, 'negative');
  m.expiryTimeUtc = Date.now() + 1000;
  const sent = Date.now();
  await service.send(need('OFFLINE_ID'), m);
  const [r] = await feedback.wait(id);
  checkRecord(r, id, need('OFFLINE_ID'), 'Expired');
  assert.ok(Date.now() - sent >= 900, `expired after ${Date.now() - sent} ms`);
});

test('purging a queue with the SDK gives Purged feedback and the purge count', T, async () => {
  const ids = [1, 2, 3].map((n) => `purge-${n}-${randomUUID().slice(0, 8)}`);
  for (const id of ids) {
    await service.send(need('OFFLINE_ID'), c2d(id, 'full'));
  }
  const creds = new IoTHubTokenCredentials(need('SERVICE_CS'));
  const rest = new IotHubGatewayServiceAPIs(creds, { baseUri: `https://${need('HOST')}`, apiVersion: '2021-04-12' });
  const res = await rest.cloudToDeviceMessages.purgeCloudToDeviceMessageQueue(need('OFFLINE_ID'));
  assert.equal(res.totalMessagesPurged, 3);
  assert.equal(res.deviceId, need('OFFLINE_ID'));
  for (const id of ids) {
    const [r] = await feedback.wait(id);
    checkRecord(r, id, need('OFFLINE_ID'), 'Purged');
  }
  const again = await rest.cloudToDeviceMessages.purgeCloudToDeviceMessageQueue(need('OFFLINE_ID'));
  assert.equal(again.totalMessagesPurged, 0);
});

test('the message past the queue depth is refused with DeviceMaximumQueueDepthExceededError', T, async () => {
  const depth = Number(need('QUEUE_DEPTH'));
  for (let i = 0; i < depth; i++) {
    await service.send(need('FULL_ID'), c2d(`fill-${i}`, 'none'));
  }
  await assert.rejects(service.send(need('FULL_ID'), c2d('one-too-many', 'full')), (err) => {
    assert.equal(err.name, 'DeviceMaximumQueueDepthExceededError', `${err.name}: ${err.message}`);
    return true;
  });
});

test('a message to an unknown device is refused with DeviceNotFoundError', T, async () => {
  await assert.rejects(service.send('no-such-device', c2d('lost', 'full')), (err) => {
    assert.equal(err.name, 'DeviceNotFoundError', `${err.name}: ${err.message}`);
    return true;
  });
});

test('the file notification receiver attaches', T, async () => {
  await new Promise((resolve, reject) => {
    service.getFileNotificationReceiver((err, receiver) => {
      if (err) return reject(err);
      assert.ok(receiver);
      resolve();
    });
  });
});
