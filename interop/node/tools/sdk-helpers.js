'use strict';
// Helpers shared by the official-SDK interop tests (test/*.test.js other
// than rhea-*), which the Go tests in interop/ run with their settings in
// the environment.

// need returns the environment variable name, or throws naming it.
function need(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} must be set: run this file through its Go test in interop/`);
  return v;
}

// nextEvent resolves with the next emission of event that accept takes,
// or rejects after ms.
function nextEvent(emitter, event, ms, accept = () => true) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      emitter.removeListener(event, on);
      reject(new Error(`no ${event} within ${ms} ms`));
    }, ms);
    function on(value) {
      if (!accept(value)) return;
      clearTimeout(timer);
      emitter.removeListener(event, on);
      resolve(value);
    }
    emitter.on(event, on);
  });
}

module.exports = { need, nextEvent };
