'use strict';
// Issue 4's end-to-end proof, Node half: an azure-iot-device-amqp device
// sends telemetry; @azure/event-hubs' EventHubConsumerClient reads it back
// from the earliest event, from a sequence number, from an enqueued time,
// and live. Body, properties and the device id must arrive intact.
// Env (set by interop/e2e_test.go): DEVICE_CS, DEVICE_ID, EH_CONNECTION_STRING,
// PARTITION (the device's partition), NODE_EXTRA_CA_CERTS.
const test = require('node:test');
const assert = require('node:assert/strict');
const { Client, Message } = require('azure-iot-device');
const { Amqp } = require('azure-iot-device-amqp');
const { EventHubConsumerClient, earliestEventPosition, latestEventPosition } = require('@azure/event-hubs');
const { need } = require('../tools/sdk-helpers.js');

const deviceId = need('DEVICE_ID');
const partition = need('PARTITION');

function message(i, tag) {
  const m = new Message(JSON.stringify({ i, tag }));
  m.messageId = `${tag}-${i}`;
  m.correlationId = `corr-${i}`;
  m.contentType = 'application/json';
  m.contentEncoding = 'utf-8';
  m.properties.add('index', String(i));
  m.properties.add('tag', tag);
  return m;
}

async function sendAll(tag, n) {
  const client = Client.fromConnectionString(need('DEVICE_CS'), Amqp);
  await client.open();
  try {
    for (let i = 0; i < n; i++) {
      await client.sendEvent(message(i, tag));
      // Distinct enqueued times (ms resolution) for the enqueued-time test.
      await new Promise((r) => setTimeout(r, 3));
    }
  } finally {
    await client.close();
  }
}

function collect(c, startPosition, n, pred = () => true) {
  return new Promise((resolve, reject) => {
    const events = [];
    let done = false;
    const sub = c.subscribe(partition, {
      processEvents: async (batch) => {
        events.push(...batch.filter(pred));
        if (!done && events.length >= n) {
          done = true;
          await sub.close();
          resolve(events.slice(0, n));
        }
      },
      processError: async (err) => { if (!done) { done = true; await sub.close(); reject(err); } },
    }, { startPosition, maxBatchSize: 50, maxWaitTimeInSeconds: 1 });
  });
}

function checkEvent(e, i, tag) {
  assert.deepEqual(e.body, { i, tag }, 'body');
  assert.equal(e.messageId, `${tag}-${i}`);
  assert.equal(e.correlationId, `corr-${i}`);
  assert.equal(e.contentType, 'application/json');
  assert.equal(e.properties.index, String(i));
  assert.equal(e.properties.tag, tag);
  assert.equal(e.systemProperties['iothub-connection-device-id'], deviceId);
  assert.equal(typeof e.sequenceNumber, 'number');
}

test('device telemetry read by EventHubConsumerClient: earliest, sequence number, enqueued time, live', { timeout: 60000 }, async () => {
  const n = 10;
  await sendAll('first', n);
  const c = new EventHubConsumerClient('$Default', need('EH_CONNECTION_STRING'));
  try {
    const props = await c.getPartitionProperties(partition);
    assert.ok(props.lastEnqueuedSequenceNumber >= n - 1, 'partition properties count the events');
    assert.equal(props.isEmpty, false);

    const all = await collect(c, earliestEventPosition, n, (e) => e.body && e.body.tag === 'first');
    all.forEach((e, i) => checkEvent(e, i, 'first'));

    const fromSeq = await collect(c, { sequenceNumber: all[4].sequenceNumber, isInclusive: false }, n - 5);
    fromSeq.forEach((e, k) => checkEvent(e, k + 5, 'first'));

    // The SDK asks for events enqueued strictly after the time.
    const t0 = all[2].enqueuedTimeUtc.getTime();
    const firstAfter = all.find((e) => e.enqueuedTimeUtc.getTime() > t0);
    assert.ok(firstAfter, 'events have distinct enqueued times');
    const fromTime = await collect(c, { enqueuedOn: all[2].enqueuedTimeUtc }, 1);
    assert.equal(fromTime[0].sequenceNumber, firstAfter.sequenceNumber, 'enqueued-time start is the first event after the time');

    // Live: subscribe at the end, then send.
    const live = collect(c, latestEventPosition, 3, (e) => e.body && e.body.tag === 'live');
    await new Promise((r) => setTimeout(r, 500)); // let the receiver attach before sending
    await sendAll('live', 3);
    (await live).forEach((e, i) => checkEvent(e, i, 'live'));
  } finally {
    await c.close();
  }
});
