'use strict';
// The official @azure/event-hubs EventHubConsumerClient against amqphub's
// built-in Event-Hub-compatible endpoint: hub and partition properties, and
// subscriptions from the start, a sequence number, an offset, an enqueued
// time and the live end of a partition.
//
// Environment (set by the Go test interop TestNodeEventHubsConsumer):
//   EH_CONNECTION_STRING  Event Hubs connection string with EntityPath (the emulator
//                         form over plain AMQP: ...;UseDevelopmentEmulator=true).
//   EH_NAME               the entity name.
//   EH_P0_COUNT           events seeded in partition 0 (sequence numbers 0..N-1; event i
//                         has body {"n":i}, application property index=i, message-id "m<i>").
//   EH_P0_LAST_OFFSET     offset of partition 0's last event.
//   EH_P0_LAST_TIME       its enqueued time (Unix ms).
//   EH_P0_OFFSET_7        offset of event 7.
//   EH_P0_TIME_9          enqueued time of event 9 (events 10.. are strictly later).
//   EH_P1_BEFORE          events in partition 1 before the test; the Go side keeps
//                         appending more every 50 ms while this file runs.

const test = require('node:test');
const assert = require('node:assert/strict');
const { EventHubConsumerClient, earliestEventPosition, latestEventPosition } = require('@azure/event-hubs');
const { need } = require('../tools/sdk-helpers.js');


const connStr = need('EH_CONNECTION_STRING');
const hubName = need('EH_NAME');
const p0Count = Number(need('EH_P0_COUNT'));
const T = { timeout: 30000 };

function client() {
  return new EventHubConsumerClient('$Default', connStr);
}

// collect subscribes to one partition and resolves with the first n events
// (and the last context), failing on any processError.
function collect(c, partitionId, startPosition, n, options = {}) {
  return new Promise((resolve, reject) => {
    const events = [];
    let sub;
    let finished = false;
    const finish = async (err, ctx) => {
      if (finished) return;
      finished = true;
      await sub.close();
      if (err) reject(err);
      else resolve({ events: events.slice(0, n), context: ctx });
    };
    sub = c.subscribe(partitionId, {
      processEvents: async (batch, ctx) => {
        events.push(...batch);
        if (events.length >= n) await finish(null, ctx);
      },
      processError: async (err) => {
        await finish(err);
      },
    }, { startPosition, maxBatchSize: 10, maxWaitTimeInSeconds: 1, ...options });
  });
}

function checkEvent(ev, i) {
  assert.equal(ev.sequenceNumber, i, `sequence number of event ${i}`);
  assert.equal(typeof ev.offset, 'string', 'offset is a string');
  assert.ok(ev.enqueuedTimeUtc instanceof Date, 'enqueuedTimeUtc is a Date');
  assert.deepEqual(ev.body, { n: i }, `body of event ${i}`);
  assert.equal(Number(ev.properties.index), i, `application property of event ${i}`);
  assert.equal(ev.messageId, `m${i}`);
  assert.equal(ev.contentType, 'application/json');
  assert.equal(ev.systemProperties['iothub-connection-device-id'], 'sensor-1');
}

test('hub and partition properties', T, async () => {
  const c = client();
  try {
    assert.deepEqual(await c.getPartitionIds(), ['0', '1', '2', '3']);
    const hp = await c.getEventHubProperties();
    assert.equal(hp.name, hubName);
    assert.ok(hp.createdOn instanceof Date && !isNaN(hp.createdOn), 'createdOn is a date');
    const pp = await c.getPartitionProperties('0');
    assert.equal(pp.partitionId, '0');
    assert.equal(pp.beginningSequenceNumber, 0);
    assert.equal(pp.lastEnqueuedSequenceNumber, p0Count - 1);
    assert.equal(pp.lastEnqueuedOffset, need('EH_P0_LAST_OFFSET'));
    assert.equal(pp.lastEnqueuedOnUtc.getTime(), Number(need('EH_P0_LAST_TIME')));
    assert.equal(pp.isEmpty, false);
    const empty = await c.getPartitionProperties('3');
    assert.equal(empty.isEmpty, true);
    assert.equal(empty.lastEnqueuedSequenceNumber, -1);
    await assert.rejects(c.getPartitionProperties('9'));
  } finally {
    await c.close();
  }
});

const starts = [
  { name: 'earliest', pos: earliestEventPosition, first: 0 },
  { name: 'sequence number', pos: { sequenceNumber: 4 }, first: 5 },
  { name: 'sequence number, inclusive', pos: { sequenceNumber: 4, isInclusive: true }, first: 4 },
  { name: 'offset', pos: { offset: need('EH_P0_OFFSET_7') }, first: 8 },
  { name: 'enqueued time', pos: { enqueuedOn: new Date(Number(need('EH_P0_TIME_9'))) }, first: 10 },
];

for (const st of starts) {
  test(`subscribe from ${st.name}`, T, async () => {
    const c = client();
    try {
      const { events } = await collect(c, '0', st.pos, p0Count - st.first);
      assert.equal(events.length, p0Count - st.first);
      events.forEach((ev, k) => checkEvent(ev, st.first + k));
    } finally {
      await c.close();
    }
  });
}

test('subscribe from the live end, with last-enqueued tracking', T, async () => {
  const c = client();
  const before = Number(need('EH_P1_BEFORE'));
  try {
    const { events, context } = await collect(c, '1', latestEventPosition, 3, { trackLastEnqueuedEventProperties: true });
    assert.equal(events.length, 3);
    assert.ok(events[0].sequenceNumber >= before, `first live event ${events[0].sequenceNumber} is one appended after the start (${before} before)`);
    for (let k = 1; k < events.length; k++) {
      assert.equal(events[k].sequenceNumber, events[k - 1].sequenceNumber + 1, 'live events arrive in order without gaps');
    }
    const le = context.lastEnqueuedEventProperties;
    assert.ok(le && le.sequenceNumber >= events[2].sequenceNumber, `lastEnqueuedEventProperties ${JSON.stringify(le)}`);
    assert.equal(typeof le.offset, 'string');
    assert.ok(le.enqueuedOn instanceof Date && le.retrievedOn instanceof Date);
  } finally {
    await c.close();
  }
});
