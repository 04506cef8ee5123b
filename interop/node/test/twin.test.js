'use strict';
// Device and module twins with the official Node SDKs: a device
// (azure-iot-device + azure-iot-device-amqp, Amqp transport) gets its twin,
// reports properties and receives desired-property updates that a service
// (azure-iothub Registry, over HTTPS) makes; the service reads the reported
// values back.
// Env: DEVICE_ID, DEVICE_CS, MODULE_ID, MODULE_CS, SERVICE_CS, REGISTRY_READ_CS,
// NODE_EXTRA_CA_CERTS. The Go test interop/twin_test.go sets them.
const test = require('node:test');
const assert = require('node:assert/strict');
const { Client, ModuleClient } = require('azure-iot-device');
const { Amqp } = require('azure-iot-device-amqp');
const { Registry } = require('azure-iothub');
const { need, nextEvent } = require('../tools/sdk-helpers.js');

const T = { timeout: 60000 };

// reportAsync wraps the callback-only reported-properties update.
function reportAsync(twin, patch) {
  return new Promise((resolve, reject) => {
    twin.properties.reported.update(patch, (err) => (err ? reject(err) : resolve()));
  });
}

test('device twin: get, report, desired updates from the service, read back by the service', T, async () => {
  const deviceId = need('DEVICE_ID');
  const registry = Registry.fromConnectionString(need('SERVICE_CS'));
  const client = Client.fromConnectionString(need('DEVICE_CS'), Amqp);
  client.on('error', () => {});
  await client.open();
  try {
    const twin = await client.getTwin();
    assert.equal(twin.properties.desired.$version, 1, 'a new twin has desired $version 1');
    assert.equal(twin.properties.reported.$version, 1, 'a new twin has reported $version 1');

    await reportAsync(twin, { temperature: 21.5, firmware: { version: '1.2.3', channel: 'beta' } });
    await reportAsync(twin, { firmware: { channel: null }, battery: 87 });

    let svcTwin = (await registry.getTwin(deviceId)).responseBody;
    const reported = svcTwin.properties.reported;
    assert.equal(reported.temperature, 21.5);
    assert.equal(reported.battery, 87);
    assert.deepEqual(reported.firmware, { version: '1.2.3' }, 'null removed firmware.channel');
    assert.equal(reported.$version, 3);
    assert.ok(reported.$metadata && reported.$metadata.$lastUpdated, 'reported $metadata');
    assert.ok(svcTwin.etag, 'the service twin has an etag');

    // Listening for desired properties subscribes (PUT); the GET after it
    // on the same link is answered after the subscription is in place.
    const deltas = [];
    twin.on('properties.desired', (delta) => deltas.push(delta));
    await twin.get();

    const fanEvent = nextEvent(twin, 'properties.desired.fan', 15000, (v) => v === 'on');
    const updated = (await registry.updateTwin(deviceId, { tags: { site: 'oslo' }, properties: { desired: { fan: 'on', config: { rate: 5 } } } }, svcTwin.etag)).responseBody;
    assert.equal(updated.properties.desired.$version, 2);
    assert.equal(updated.tags.site, 'oslo');
    assert.notEqual(updated.etag, svcTwin.etag, 'the etag changes with an update');
    assert.equal(await fanEvent, 'on');
    assert.equal(twin.properties.desired.config.rate, 5);
    assert.equal(twin.properties.desired.$version, 2);
    assert.ok(deltas.some((d) => d.fan === 'on' && d.$version === 2), `deltas: ${JSON.stringify(deltas)}`);

    // A removal reaches the device as null and leaves the property out.
    const removal = nextEvent(twin, 'properties.desired', 15000, (d) => d.$version === 3);
    await registry.updateTwin(deviceId, { properties: { desired: { fan: null } } }, '*');
    const delta = await removal;
    assert.equal(delta.fan, null);
    assert.equal(twin.properties.desired.fan, undefined);

    // An out-of-date etag is refused.
    await assert.rejects(registry.updateTwin(deviceId, { tags: { x: 1 } }, svcTwin.etag), (err) => {
      assert.equal(err.name, 'InvalidEtagError', `${err.name}: ${err.message}`);
      return true;
    });

    // The service Twin object works too (get, then update with its etag).
    svcTwin = (await registry.getTwin(deviceId)).responseBody;
    const rateEvent = nextEvent(twin, 'properties.desired.config.rate', 15000, (v) => v === 10);
    await svcTwin.update({ properties: { desired: { config: { rate: 10 } } } });
    assert.equal(await rateEvent, 10);
    assert.equal(svcTwin.properties.desired.config.rate, 10);
    assert.equal(svcTwin.properties.reported.temperature, 21.5);

    // A fresh GET from the device sees everything.
    const again = await client.getTwin();
    await again.get();
    assert.equal(again.properties.desired.config.rate, 10);
    assert.equal(again.properties.reported.battery, 87);
  } finally {
    await client.close();
  }
});

test('module twin: a module reports and receives its own desired properties', T, async () => {
  const deviceId = need('DEVICE_ID');
  const moduleId = need('MODULE_ID');
  const registry = Registry.fromConnectionString(need('SERVICE_CS'));
  const client = ModuleClient.fromConnectionString(need('MODULE_CS'), Amqp);
  client.on('error', () => {});
  await client.open();
  try {
    const twin = await client.getTwin();
    await reportAsync(twin, { module: 'ready' });
    twin.on('properties.desired', () => {});
    await twin.get();
    const modEvent = nextEvent(twin, 'properties.desired.mode', 15000, (v) => v === 'fast');
    const mt = (await registry.getModuleTwin(deviceId, moduleId)).responseBody;
    assert.equal(mt.moduleId, moduleId);
    assert.equal(mt.properties.reported.module, 'ready');
    await registry.updateModuleTwin(deviceId, moduleId, { properties: { desired: { mode: 'fast' } } }, mt.etag);
    assert.equal(await modEvent, 'fast');
    const deviceTwin = (await registry.getTwin(deviceId)).responseBody;
    assert.equal(deviceTwin.properties.reported.module, undefined, 'the device twin is separate');
    assert.equal(deviceTwin.properties.desired.mode, undefined, 'the device twin is separate');
  } finally {
    await client.close();
  }
});

test('a RegistryRead policy reads twins but cannot update them', T, async () => {
  const deviceId = need('DEVICE_ID');
  const reader = Registry.fromConnectionString(need('REGISTRY_READ_CS'));
  const twin = (await reader.getTwin(deviceId)).responseBody;
  assert.equal(twin.deviceId, deviceId);
  await assert.rejects(reader.updateTwin(deviceId, { tags: { no: true } }, '*'), (err) => {
    assert.equal(err.name, 'UnauthorizedError', `${err.name}: ${err.message}`);
    return true;
  });
  await assert.rejects(reader.getTwin('no-such-device'), (err) => {
    assert.equal(err.name, 'DeviceNotFoundError', `${err.name}: ${err.message}`);
    return true;
  });
});
