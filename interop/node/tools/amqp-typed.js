'use strict';
// Type-preserving view of AMQP encoded data. rhea's message decoder turns int, long, uint and
// double alike into JS numbers and symbol keys into string keys, so a server that changed a type
// would still pass a value comparison. These helpers keep the AMQP type of every value while
// ignoring encoding width (smallint vs int, str8 vs str32, list8 vs list32), which a server that
// re-encodes is free to choose.

const types = require('rhea/lib/types.js');

const FAMILY = {
  0x40: 'null', 0x41: 'boolean', 0x42: 'boolean', 0x56: 'boolean',
  0x50: 'ubyte', 0x60: 'ushort', 0x43: 'uint', 0x52: 'uint', 0x70: 'uint',
  0x44: 'ulong', 0x53: 'ulong', 0x80: 'ulong',
  0x51: 'byte', 0x61: 'short', 0x54: 'int', 0x71: 'int', 0x55: 'long', 0x81: 'long',
  0x72: 'float', 0x82: 'double', 0x74: 'decimal32', 0x84: 'decimal64', 0x94: 'decimal128',
  0x73: 'char', 0x83: 'timestamp', 0x98: 'uuid',
  0xa0: 'binary', 0xb0: 'binary', 0xa1: 'string', 0xb1: 'string', 0xa3: 'symbol', 0xb3: 'symbol',
  0x45: 'list', 0xc0: 'list', 0xd0: 'list', 0xc1: 'map', 0xd1: 'map', 0xe0: 'array', 0xf0: 'array',
};

function familyOf(typed) {
  return FAMILY[typed.type.typecode] || `0x${typed.type.typecode.toString(16)}`;
}

function scalar(value) {
  if (Buffer.isBuffer(value)) return value.toString('hex');
  return value;
}

// normalize turns a rhea Typed tree into plain data: {t: family, v: value} for scalars,
// arrays for lists, sorted [key, value] pairs for maps, and {described, value} for described types.
function normalize(typed, { trimTrailingNulls = false } = {}) {
  if (typed === null || typed === undefined) return null;
  const inner = normalizeUndescribed(typed, trimTrailingNulls);
  if (typed.descriptor) {
    return { described: scalar(typed.descriptor.value), value: inner };
  }
  return inner;
}

function normalizeUndescribed(typed, trimTrailingNulls) {
  const family = familyOf(typed);
  if (family === 'list') {
    const items = typed.value.map((x) => normalize(x));
    if (trimTrailingNulls) {
      while (items.length && items[items.length - 1].t === 'null') items.pop();
    }
    return { t: 'list', items };
  }
  if (family === 'map') {
    const pairs = [];
    for (let i = 0; i + 1 < typed.value.length; i += 2) {
      pairs.push([normalize(typed.value[i]), normalize(typed.value[i + 1])]);
    }
    pairs.sort((a, b) => (JSON.stringify(a[0]) < JSON.stringify(b[0]) ? -1 : 1));
    return { t: 'map', pairs };
  }
  if (family === 'array') return { t: 'array', items: typed.value.map((x) => normalize(x)) };
  return { t: family, v: scalar(typed.value) };
}

const SECTION_NAMES = {
  0x70: 'header', 0x71: 'delivery_annotations', 0x72: 'message_annotations', 0x73: 'properties',
  0x74: 'application_properties', 0x75: 'data', 0x76: 'amqp_sequence', 0x77: 'amqp_value', 0x78: 'footer',
};

// messageSections decodes an encoded message into {sectionName: normalized} (body sections as arrays,
// since data and amqp-sequence may repeat). Composite sections (header, properties) drop trailing
// nulls, because an encoder may omit absent trailing fields.
function messageSections(payload) {
  const reader = new types.Reader(payload);
  const out = {};
  while (reader.remaining()) {
    const section = reader.read();
    const code = section.descriptor && section.descriptor.value;
    const name = SECTION_NAMES[code] || `section-${code}`;
    const value = normalizeUndescribed(section, name === 'header' || name === 'properties');
    if (name === 'data' || name === 'amqp_sequence' || name === 'amqp_value') {
      (out.body = out.body || []).push({ section: name, value });
    } else {
      out[name] = value;
    }
  }
  return out;
}

// mapEntries turns a normalized map into {key: {t, v}} for keys of any scalar type, keeping the key's
// own family under `keyType` so that a test can check e.g. that error info keys are symbols.
function mapEntries(normalizedMap) {
  const out = {};
  for (const [k, v] of normalizedMap.pairs) out[k.v] = { keyType: k.t, ...v };
  return out;
}

module.exports = { normalize, messageSections, mapEntries };
