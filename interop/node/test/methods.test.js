'use strict';
// Direct methods with the official Node SDKs: azure-iothub's
// Client.invokeDeviceMethod (HTTPS) reaches an azure-iot-device device
// (Amqp transport) through the hub; the device's status and payload come
// back. Offline devices and devices that do not answer give the right
// errors without hanging.
// Env: DEVICE_ID, DEVICE_CS, OFFLINE_ID, MODULE_ID, MODULE_CS, SERVICE_CS,
// NODE_EXTRA_CA_CERTS. The Go test interop/methods_test.go sets them (with a
// 1-second minimum response timeout so the timeout case is quick).
const test = require('node:test');
const assert = require('node:assert/strict');
const { Client, ModuleClient } = require('azure-iot-device');
const { Amqp } = require('azure-iot-device-amqp');
const { Client: ServiceClient } = require('azure-iothub');
const { need } = require('../tools/sdk-helpers.js');

const T = { timeout: 60000 };

test('invokeDeviceMethod reaches onDeviceMethod and returns its status and payload', T, async () => {
  const deviceId = need('DEVICE_ID');
  const device = Client.fromConnectionString(need('DEVICE_CS'), Amqp);
  device.on('error', () => {});
  await device.open();
  const service = ServiceClient.fromConnectionString(need('SERVICE_CS'));
  try {
    const seen = [];
    device.onDeviceMethod('reboot', (request, response) => {
      seen.push(request);
      response.send(201, { accepted: true, echo: request.payload }, (err) => {
        if (err) console.error('response.send failed:', err);
      });
    });
    device.onDeviceMethod('lookup', (request, response) => {
      response.send(404, `no ${request.payload.key}`, () => {});
    });
    // connectTimeoutInSeconds covers the links still attaching after
    // onDeviceMethod returned.
    const res = await service.invokeDeviceMethod(deviceId, {
      methodName: 'reboot',
      payload: { delay: 3, mode: 'soft' },
      responseTimeoutInSeconds: 15,
      connectTimeoutInSeconds: 15,
    });
    assert.equal(res.message.statusCode, 200);
    assert.equal(res.result.status, 201);
    assert.deepEqual(res.result.payload, { accepted: true, echo: { delay: 3, mode: 'soft' } });
    assert.equal(seen.length, 1);
    assert.equal(seen[0].methodName, 'reboot');
    assert.match(seen[0].requestId, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/, 'the request id is a v4 uuid');

    const miss = await service.invokeDeviceMethod(deviceId, { methodName: 'lookup', payload: { key: 'k1' }, responseTimeoutInSeconds: 15 });
    assert.equal(miss.result.status, 404, 'the device status is relayed inside a 200 response');
    assert.equal(miss.result.payload, 'no k1');

    // Several calls in flight at once.
    const many = await Promise.all([1, 2, 3, 4, 5].map((n) => service.invokeDeviceMethod(deviceId, { methodName: 'reboot', payload: n, responseTimeoutInSeconds: 15 })));
    assert.deepEqual(many.map((r) => r.result.payload.echo), [1, 2, 3, 4, 5]);
  } finally {
    await device.close();
  }
});

test('a module method is invoked with invokeDeviceMethod(deviceId, moduleId, ...)', T, async () => {
  const module = ModuleClient.fromConnectionString(need('MODULE_CS'), Amqp);
  module.on('error', () => {});
  await module.open();
  const service = ServiceClient.fromConnectionString(need('SERVICE_CS'));
  try {
    module.onMethod('status', (request, response) => {
      response.send(200, { module: true, asked: request.payload }, () => {});
    });
    const res = await service.invokeDeviceMethod(need('DEVICE_ID'), need('MODULE_ID'), {
      methodName: 'status',
      payload: 'hi',
      responseTimeoutInSeconds: 15,
      connectTimeoutInSeconds: 15,
    });
    assert.equal(res.result.status, 200);
    assert.deepEqual(res.result.payload, { module: true, asked: 'hi' });
  } finally {
    await module.close();
  }
});

test('an offline device fails at once with 404 DeviceNotOnline', T, async () => {
  const service = ServiceClient.fromConnectionString(need('SERVICE_CS'));
  const started = Date.now();
  await assert.rejects(service.invokeDeviceMethod(need('OFFLINE_ID'), { methodName: 'reboot', responseTimeoutInSeconds: 15 }), (err) => {
    assert.equal(err.response && err.response.statusCode, 404, `${err.name}: ${err.message}`);
    assert.match(String(err.responseBody), /DeviceNotOnline/);
    return true;
  });
  assert.ok(Date.now() - started < 10000, `took ${Date.now() - started} ms`);
});

test('an unknown device fails with DeviceNotFoundError', T, async () => {
  const service = ServiceClient.fromConnectionString(need('SERVICE_CS'));
  await assert.rejects(service.invokeDeviceMethod('no-such-device', { methodName: 'reboot' }), (err) => {
    assert.equal(err.name, 'DeviceNotFoundError', `${err.name}: ${err.message}`);
    return true;
  });
});

test('a device that does not answer fails with GatewayTimeoutError after the response timeout', T, async () => {
  const device = Client.fromConnectionString(need('DEVICE_CS'), Amqp);
  device.on('error', () => {});
  await device.open();
  const service = ServiceClient.fromConnectionString(need('SERVICE_CS'));
  try {
    let called = false;
    device.onDeviceMethod('hang', () => { called = true; });
    // Make sure the links are attached before the timed call.
    device.onDeviceMethod('ready', (req, res) => res.send(200, null, () => {}));
    await service.invokeDeviceMethod(need('DEVICE_ID'), { methodName: 'ready', responseTimeoutInSeconds: 15, connectTimeoutInSeconds: 15 });
    const started = Date.now();
    await assert.rejects(service.invokeDeviceMethod(need('DEVICE_ID'), { methodName: 'hang', responseTimeoutInSeconds: 2 }), (err) => {
      assert.equal(err.name, 'GatewayTimeoutError', `${err.name}: ${err.message}`);
      return true;
    });
    const took = Date.now() - started;
    assert.ok(took >= 1900 && took < 15000, `the timeout took ${took} ms, want about 2 s`);
    assert.ok(called, 'the device received the request');
  } finally {
    await device.close();
  }
});
