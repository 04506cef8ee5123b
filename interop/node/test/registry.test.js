'use strict';
// The official azure-iothub Registry client against amqphub's service REST
// API: devices and modules are created, read, listed, updated and deleted
// exactly as an application would do it.
//
// Environment:
//   AMQPHUB_SERVICE_CONNSTR        service connection string with RegistryRead+RegistryWrite
//                                  (e.g. the iothubowner policy). Required.
//   AMQPHUB_REGISTRY_READ_CONNSTR  optional; a RegistryRead-only connection string, used to
//                                  check that writes are refused with UnauthorizedError.
//   NODE_EXTRA_CA_CERTS            the CA that signed the hub's TLS certificate.
//
// azure-iothub reaches the hub at https://{HostName}:443 — HostName cannot carry a port and
// TLS is mandatory — so the hub must serve REST on port 443 of that host.
// The Go test internal/rest TestNodeRegistryInterop runs this file.

const test = require('node:test');
const assert = require('node:assert/strict');
const { Registry } = require('azure-iothub');

const connStr = process.env.AMQPHUB_SERVICE_CONNSTR;
if (!connStr) {
  throw new Error('AMQPHUB_SERVICE_CONNSTR is not set: give a service connection string of the hub under test');
}
const readOnlyConnStr = process.env.AMQPHUB_REGISTRY_READ_CONNSTR;

const T = { timeout: 20000 };
const prefix = `reg-${process.pid}-${Date.now()}`;

function registry() {
  return Registry.fromConnectionString(connStr);
}

async function rejectsWith(promise, name) {
  await assert.rejects(promise, (err) => {
    assert.equal(err.name, name, `expected ${name}, got ${err.name}: ${err.message}`);
    return true;
  });
}

test('create, get, list, update and delete a device', T, async () => {
  const reg = registry();
  const deviceId = `${prefix}-dev`;

  const created = (await reg.create({ deviceId })).responseBody;
  assert.equal(created.deviceId, deviceId);
  assert.equal(created.status, 'enabled');
  assert.ok(created.etag, 'created device has an etag');
  assert.match(created.generationId, /^\d+$/);
  const keys = created.authentication.symmetricKey;
  assert.equal(Buffer.from(keys.primaryKey, 'base64').length, 32, 'primary key generated');
  assert.equal(Buffer.from(keys.secondaryKey, 'base64').length, 32, 'secondary key generated');
  assert.notEqual(keys.primaryKey, keys.secondaryKey);

  await rejectsWith(reg.create({ deviceId }), 'DeviceAlreadyExistsError');

  const got = await reg.get(deviceId);
  assert.equal(got.httpResponse.statusCode, 200);
  assert.equal(got.responseBody.deviceId, deviceId);
  assert.equal(got.responseBody.etag, created.etag);
  assert.deepEqual(got.responseBody.authentication.symmetricKey, keys);

  const listed = (await reg.list()).responseBody;
  assert.ok(listed.some((d) => d.deviceId === deviceId), 'list contains the device');

  // update() sends the Device it was given with If-Match "*".
  const device = got.responseBody;
  device.status = 'disabled';
  device.statusReason = 'maintenance';
  const updated = (await reg.update(device)).responseBody;
  assert.equal(updated.status, 'disabled');
  assert.equal(updated.statusReason, 'maintenance');
  assert.notEqual(updated.etag, created.etag, 'etag changes on update');
  assert.equal(updated.generationId, created.generationId, 'generationId survives updates');
  assert.deepEqual(updated.authentication.symmetricKey, keys, 'keys survive updates');

  const del = await reg.delete(deviceId);
  assert.equal(del.httpResponse.statusCode, 204);
  await rejectsWith(reg.get(deviceId), 'DeviceNotFoundError');
  await rejectsWith(reg.delete(deviceId), 'DeviceNotFoundError');
});

test('device with caller-supplied keys and an id that needs encoding', T, async () => {
  const reg = registry();
  const deviceId = `${prefix}-we#ird+id(1)`;
  const primaryKey = Buffer.alloc(32, 1).toString('base64');
  const secondaryKey = Buffer.alloc(32, 2).toString('base64');
  const created = (await reg.create({
    deviceId,
    status: 'disabled',
    authentication: { symmetricKey: { primaryKey, secondaryKey } },
    capabilities: { iotEdge: true },
  })).responseBody;
  assert.equal(created.deviceId, deviceId);
  assert.equal(created.status, 'disabled');
  assert.equal(created.capabilities.iotEdge, true);
  assert.deepEqual(created.authentication.symmetricKey, { primaryKey, secondaryKey });
  assert.equal((await reg.get(deviceId)).responseBody.deviceId, deviceId);
  await reg.delete(deviceId);
});

test('bad input is refused with the SDK\'s typed errors', T, async () => {
  const reg = registry();
  await rejectsWith(reg.create({ deviceId: 'has space' }), 'ArgumentError');
  await rejectsWith(
    reg.create({ deviceId: `${prefix}-badkey`, authentication: { symmetricKey: { primaryKey: 'c2hvcnQ=', secondaryKey: '' } } }),
    'ArgumentError');
  await rejectsWith(reg.get(`${prefix}-missing`), 'DeviceNotFoundError');
});

test('modules: add, get, list, update with etag, remove', T, async () => {
  const reg = registry();
  const deviceId = `${prefix}-edge`;
  await reg.create({ deviceId, capabilities: { iotEdge: true } });

  const added = (await reg.addModule({ deviceId, moduleId: '$edgeAgent' })).responseBody;
  assert.equal(added.moduleId, '$edgeAgent');
  assert.equal(added.deviceId, deviceId);
  assert.ok(added.authentication.symmetricKey.primaryKey, 'module key generated');
  await rejectsWith(reg.addModule({ deviceId, moduleId: '$edgeAgent' }), 'DeviceAlreadyExistsError');

  const got = (await reg.getModule(deviceId, '$edgeAgent')).responseBody;
  assert.equal(got.etag, added.etag);

  await reg.addModule({ deviceId, moduleId: 'sensor' });
  const list = (await reg.getModulesOnDevice(deviceId)).responseBody;
  assert.deepEqual(list.map((m) => m.moduleId).sort(), ['$edgeAgent', 'sensor']);

  // updateModule without force sends If-Match with the module's etag.
  got.managedBy = 'someone';
  const updated = (await reg.updateModule(got)).responseBody;
  assert.equal(updated.managedBy, 'someone');
  await rejectsWith(reg.updateModule(got), 'InvalidEtagError'); // got.etag is now stale
  const forced = (await reg.updateModule(got, true)).responseBody;
  assert.equal(forced.managedBy, 'someone');

  // removeModule(module) only works with a callback: its promise form loses the callback
  // when given a Module object (azure-iothub 1.16.6).
  const removeModule = (m) => new Promise((resolve, reject) =>
    reg.removeModule(m, (err, res) => (err ? reject(err) : resolve(res))));
  await rejectsWith(removeModule(updated), 'InvalidEtagError'); // stale etag again
  await removeModule(forced);
  await reg.removeModule(deviceId, 'sensor');
  assert.deepEqual((await reg.getModulesOnDevice(deviceId)).responseBody, []);
  await reg.delete(deviceId);
});

test('bulk add, update and remove', T, async () => {
  const reg = registry();
  const ids = [1, 2, 3].map((i) => `${prefix}-bulk${i}`);
  const add = (await reg.addDevices(ids.map((deviceId) => ({ deviceId })))).responseBody;
  assert.equal(add.isSuccessful, true, JSON.stringify(add));

  const again = (await reg.addDevices([{ deviceId: ids[0] }])).responseBody;
  assert.equal(again.isSuccessful, false);
  assert.equal(again.errors.length, 1);
  assert.equal(again.errors[0].deviceId, ids[0]);

  const upd = (await reg.updateDevices(ids.map((deviceId) => ({ deviceId, status: 'disabled' })), true)).responseBody;
  assert.equal(upd.isSuccessful, true, JSON.stringify(upd));
  assert.equal((await reg.get(ids[2])).responseBody.status, 'disabled');

  const stats = (await reg.getRegistryStatistics()).responseBody;
  assert.ok(stats.totalDeviceCount >= 3 && stats.disabledDeviceCount >= 3, JSON.stringify(stats));

  const rm = (await reg.removeDevices(ids.map((deviceId) => ({ deviceId })), true)).responseBody;
  assert.equal(rm.isSuccessful, true, JSON.stringify(rm));
  await rejectsWith(reg.get(ids[1]), 'DeviceNotFoundError');
});

test('a RegistryRead policy can read but not write', { ...T, skip: !readOnlyConnStr && 'AMQPHUB_REGISTRY_READ_CONNSTR not set' }, async () => {
  const ro = Registry.fromConnectionString(readOnlyConnStr);
  await ro.list();
  await rejectsWith(ro.create({ deviceId: `${prefix}-ro` }), 'UnauthorizedError');
});

test('a wrong key is refused with UnauthorizedError', T, async () => {
  const wrong = connStr.replace(/SharedAccessKey=[^;]+/, `SharedAccessKey=${Buffer.alloc(32, 7).toString('base64')}`);
  await rejectsWith(Registry.fromConnectionString(wrong).list(), 'UnauthorizedError');
});
