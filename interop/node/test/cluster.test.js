'use strict';
// Issue 10's proof with the official Node SDKs: two amqphub nodes on one
// NATS JetStream cluster. The device (azure-iot-device-amqp) is connected
// to node A; the service (azure-iothub) and the Event Hubs consumers
// (@azure/event-hubs) reach node B (and A for the second read), so every
// exchange crosses nodes: telemetry, C2D with feedback, twin desired and
// reported properties, a direct method.
// Env (set by interop/cluster_test.go): DEVICE_ID, DEVICE_CS (node A),
// SERVICE_CS (node B), EH_CS_A, EH_CS_B, NODE_EXTRA_CA_CERTS. The registry on node B
// also reports the device on node A as connected.
const test = require('node:test');
const assert = require('node:assert/strict');
const { randomUUID } = require('node:crypto');
const { Client: DeviceClient, Message } = require('azure-iot-device');
const { Amqp } = require('azure-iot-device-amqp');
const { Client: ServiceClient, Registry } = require('azure-iothub');
const { EventHubConsumerClient, earliestEventPosition } = require('@azure/event-hubs');
const { need, nextEvent } = require('../tools/sdk-helpers.js');

const T = { timeout: 90000 };
const tag = randomUUID();

// readTagged reads, from every partition of the endpoint behind cs, the n
// events carrying this run's tag.
function readTagged(cs, n, ms = 45000) {
  const c = new EventHubConsumerClient('$Default', cs);
  return new Promise((resolve, reject) => {
    const events = new Map();
    let done = false;
    const finish = async (err) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      await sub.close();
      await c.close();
      if (err) reject(err); else resolve([...events.values()]);
    };
    const timer = setTimeout(() => finish(new Error(`only ${events.size} of ${n} events within ${ms} ms`)), ms);
    const sub = c.subscribe({
      processEvents: async (batch) => {
        for (const e of batch) {
          if (e.properties && e.properties.tag === tag) events.set(e.messageId, e);
        }
        if (events.size >= n) await finish();
      },
      processError: async (err) => { console.error('consumer error (retried by the SDK):', err.message); },
    }, { startPosition: earliestEventPosition, maxBatchSize: 100, maxWaitTimeInSeconds: 1 });
  });
}

let device;
let service;
let feedbackRecords = [];

test.before(async () => {
  device = DeviceClient.fromConnectionString(need('DEVICE_CS'), Amqp);
  device.on('error', (e) => console.error('device error:', e.message));
  await device.open();
  service = ServiceClient.fromConnectionString(need('SERVICE_CS'));
  await service.open();
  await new Promise((resolve, reject) => {
    service.getFeedbackReceiver((err, receiver) => {
      if (err) return reject(err);
      receiver.on('message', (msg) => {
        feedbackRecords.push(...JSON.parse(msg.getData().toString()));
        receiver.complete(msg, () => {});
      });
      receiver.on('error', (e) => console.error('feedback receiver error:', e.message));
      resolve();
    });
  });
});

test.after(async () => {
  if (device) await device.close();
  if (service) await service.close();
});

test('telemetry sent on node A is read through node B and node A', T, async () => {
  const n = 20;
  for (let i = 0; i < n; i++) {
    const m = new Message(JSON.stringify({ i }));
    m.messageId = `${tag}-${i}`;
    m.properties.add('tag', tag);
    await device.sendEvent(m);
  }
  const onB = await readTagged(need('EH_CS_B'), n);
  const onA = await readTagged(need('EH_CS_A'), n);
  const key = (e) => `${e.partitionKey}|${e.messageId}|${e.sequenceNumber}|${e.offset}|${e.enqueuedTimeUtc.getTime()}`;
  assert.equal(onB.length, n);
  for (const e of onB) {
    assert.equal(e.systemProperties['iothub-connection-device-id'], need('DEVICE_ID'));
  }
  // Both nodes answer identically: same sequence numbers, offsets, times.
  assert.deepEqual(onA.map(key).sort(), onB.map(key).sort());
});

test('C2D sent on node B reaches the device on node A; its feedback comes back on B', T, async () => {
  const id = randomUUID();
  // One listener for the whole test: removing the last 'message' listener
  // makes the SDK detach its C2D link, and a completion then fails.
  const got = new Promise((resolve, reject) => {
    device.on('message', (msg) => {
      device.complete(msg, (err) => {
        if (msg.messageId !== id) return;
        if (err) reject(err); else resolve(msg);
      });
    });
  });
  const m = new Message('across nodes');
  m.messageId = id;
  m.ack = 'full';
  await service.send(need('DEVICE_ID'), m);
  const msg = await got;
  assert.equal(msg.data.toString(), 'across nodes');
  const deadline = Date.now() + 30000;
  while (!feedbackRecords.some((r) => r.originalMessageId === id)) {
    if (Date.now() > deadline) throw new Error(`no feedback for ${id}; have ${JSON.stringify(feedbackRecords)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  const r = feedbackRecords.find((x) => x.originalMessageId === id);
  assert.equal(r.statusCode, 'Success');
  assert.equal(r.deviceId, need('DEVICE_ID'));
});

test('twin: desired set on node B is pushed to the device on node A; reported read on B', T, async () => {
  const registry = Registry.fromConnectionString(need('SERVICE_CS'));
  const twin = await device.getTwin();
  twin.on('properties.desired', () => {});
  await twin.get();
  const want = `v-${tag}`;
  const pushed = nextEvent(twin, 'properties.desired.clusterProbe', 30000, (v) => v === want);
  await registry.updateTwin(need('DEVICE_ID'), { properties: { desired: { clusterProbe: want } } }, '*');
  assert.equal(await pushed, want);
  await new Promise((resolve, reject) => twin.properties.reported.update({ seenProbe: want }, (e) => (e ? reject(e) : resolve())));
  const svcTwin = (await registry.getTwin(need('DEVICE_ID'))).responseBody;
  assert.equal(svcTwin.properties.reported.seenProbe, want);
  assert.equal(svcTwin.properties.desired.clusterProbe, want);
});

test('a direct method invoked on node B is answered by the device on node A', T, async () => {
  device.onDeviceMethod('clusterEcho', (request, response) => {
    response.send(200, { echo: request.payload, node: 'A' }, () => {});
  });
  const res = await service.invokeDeviceMethod(need('DEVICE_ID'), {
    methodName: 'clusterEcho',
    payload: { n: 7 },
    responseTimeoutInSeconds: 15,
    connectTimeoutInSeconds: 15,
  });
  assert.equal(res.result.status, 200);
  assert.deepEqual(res.result.payload, { echo: { n: 7 }, node: 'A' });
});

test('the registry on node B reports the device connected to node A', T, async () => {
  const registry = Registry.fromConnectionString(need('SERVICE_CS'));
  const deadline = Date.now() + 15000;
  let dev;
  for (;;) {
    dev = (await registry.get(need('DEVICE_ID'))).responseBody;
    if (dev.connectionState === 'Connected') break;
    if (Date.now() > deadline) throw new Error(`connectionState is ${dev.connectionState} on node B`);
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.ok(new Date(dev.connectionStateUpdatedTime).getTime() > 0, 'connectionStateUpdatedTime is set');
});
