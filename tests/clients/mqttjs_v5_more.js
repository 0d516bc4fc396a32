// MQTT.js (protocolVersion 5) against skein, the server obligations mqttjs_v5.js does not cover: CONNACK
// properties, reason codes, session take-over, subscription options, flow control, shared subscriptions, session
// expiry, will delay, request/response, enhanced authentication and a 3.1.1 client beside a 5.0 one.
// Usage: node mqttjs_v5_more.js PORT   (the broker runs with --max-keepalive 10 --max-subscriptions 3)
// Prints one JSON line with what was observed; exits non-zero on any failure or after 30 s.
'use strict';
const mqtt = require('mqtt');

const url = `mqtt://127.0.0.1:${Number(process.argv[2])}`;
let stage = 'start';
const timer = setTimeout(() => { console.error(`timed out at: ${stage}`); process.exit(3); }, 30000);
const base = { protocolVersion: 5, reconnectPeriod: 0, connectTimeout: 5000, keepalive: 30 };

// A client that records every packet it receives, and waits on them.
function connect(opts) {
  return new Promise((resolve, reject) => {
    const c = mqtt.connect(url, { ...base, ...opts });
    c.received = [];
    c.waiters = [];
    c.on('packetreceive', (p) => {
      c.received.push(p);
      c.waiters = c.waiters.filter((w) => !w());
    });
    c.once('connect', (connack) => { c.connack = connack; resolve(c); });
    c.once('error', reject);
  });
}

// Resolves once `pred` holds over the packets received so far.
function until(c, pred) {
  return new Promise((resolve) => {
    const check = () => {
      const r = pred(c.received);
      if (r) resolve(r);
      return Boolean(r);
    };
    if (!check()) c.waiters.push(check);
  });
}

const publishes = (c, prefix) => c.received.filter((p) => p.cmd === 'publish' && p.topic.startsWith(prefix));

async function lastAck(c, cmd) {
  return until(c, (ps) => ps.filter((p) => p.cmd === cmd).slice(-1)[0]);
}

// Subscribes to one filter; the SUBACK's reason code (granted QoS or failure).
async function suback(c, topic, opts) {
  await new Promise((resolve) => c.subscribe(topic, { qos: 1, ...opts }, resolve));
  return (await lastAck(c, 'suback')).granted[0];
}

(async () => {
  const out = {};

  // CONNACK: an assigned identifier, the server's keep alive, Response Information.
  stage = 'CONNACK: an assigned identifier, the ser';
  const anon = await connect({ clientId: '', properties: { requestResponseInformation: true } });
  out.connack = {
    assigned: anon.connack.properties.assignedClientIdentifier,
    serverKeepAlive: anon.connack.properties.serverKeepAlive,
    responseInformation: anon.connack.properties.responseInformation,
  };

  // Reason codes on every ack.
  stage = 'Reason codes on every ack.';
  const rc = await connect({ clientId: 'js-rc' });
  await rc.publishAsync('js-rc/nobody', 'x', { qos: 1 });
  out.reasons = { puback: (await lastAck(rc, 'puback')).reasonCode };
  out.reasons.granted = await suback(rc, 'js-rc/a', { qos: 2 });
  out.reasons.emptyGroup = await suback(rc, '$share//js-rc');
  out.reasons.second = await suback(rc, 'js-rc/b');
  out.reasons.third = await suback(rc, 'js-rc/c');
  out.reasons.quota = await suback(rc, 'js-rc/d');
  await rc.unsubscribeAsync('js-rc/never');
  out.reasons.unsuback = (await lastAck(rc, 'unsuback')).granted;
  const bad = rc.publishAsync('js-rc/a', Buffer.from([0xff, 0xfe]), { qos: 1, properties: { payloadFormatIndicator: true } });
  out.reasons.payloadFormat = await bad.then(() => 0, (e) => e.code);

  // The same client id again: the older connection hears 0x8E.
  stage = 'The same client id again: the older conn';
  const again = await connect({ clientId: 'js-rc' });
  out.takenOver = (await until(rc, (ps) => ps.find((p) => p.cmd === 'disconnect'))).reasonCode;

  // No Local, Retain As Published, Retain Handling.
  stage = 'No Local, Retain As Published, Retain Ha';
  const opts = await connect({ clientId: 'js-opts' });
  await opts.publishAsync('js-opts/kept', 'old', { qos: 1, retain: true });
  await suback(opts, 'js-opts/#', { nl: true, rap: true, rh: 0 });
  await suback(opts, 'js-opts/kept', { rh: 2 });
  await suback(opts, 'js-optsmark', {});
  const other = await connect({ clientId: 'js-opts-other' });
  await other.publishAsync('js-opts/live', 'from other', { qos: 1, retain: true });
  await opts.publishAsync('js-opts/own', 'mine', { qos: 1 });
  await opts.publishAsync('js-optsmark', 'after', { qos: 1 });
  await until(opts, (ps) => ps.find((p) => p.cmd === 'publish' && p.topic === 'js-optsmark'));
  out.options = publishes(opts, 'js-opts/').map((p) => [p.topic, p.retain]);

  // Flow control: Receive Maximum 2 and Maximum Packet Size 200. (MQTT.js handles one received packet at a time, so
  // it cannot hold acknowledgements open to watch the window; the paho test does that.)
  stage = 'flow control';
  const fc = await connect({ clientId: 'js-fc', properties: { receiveMaximum: 2, maximumPacketSize: 200 } });
  await suback(fc, 'js-fc/#', {});
  const fcPub = await connect({ clientId: 'js-fc-pub' });
  await fcPub.publishAsync('js-fc/big', 'x'.repeat(500), { qos: 1 });
  for (let i = 1; i <= 5; i++) await fcPub.publishAsync('js-fc/m', `m${i}`, { qos: 1 });
  await until(fc, () => publishes(fc, 'js-fc/m').length >= 5);
  out.flow = publishes(fc, 'js-fc/').map((p) => p.payload.toString());

  // A shared group of two MQTT.js clients takes turns.
  stage = 'A shared group of two MQTT.js clients ta';
  const members = [await connect({ clientId: 'js-sh-a' }), await connect({ clientId: 'js-sh-b' })];
  for (const m of members) await suback(m, '$share/g/js-sh/#', {});
  for (let i = 0; i < 10; i++) await fcPub.publishAsync('js-sh/t', `s${i}`, { qos: 1 });
  for (const m of members) await until(m, () => publishes(m, 'js-sh/').length >= 5);
  out.shared = members.map((m) => publishes(m, 'js-sh/').length);

  // Will Delay: a will with a 1 s delay, the connection dropped without DISCONNECT.
  stage = 'Will Delay: a will with a 1 s delay, the';
  const watcher = await connect({ clientId: 'js-watch' });
  await suback(watcher, 'js-will/#', {});
  const dying = await connect({
    clientId: 'js-dying',
    properties: { sessionExpiryInterval: 300 },
    will: { topic: 'js-will/gone', payload: Buffer.from('late'), qos: 1, properties: { willDelayInterval: 1 } },
  });
  const dropped = Date.now();
  dying.stream.destroy();
  await until(watcher, () => publishes(watcher, 'js-will/').length >= 1);
  out.will = { topic: publishes(watcher, 'js-will/')[0].topic, waitedMs: Date.now() - dropped };

  // Session Expiry: a 1 s session is gone after 2 s, a 300 s one is still there.
  stage = 'Session Expiry: a 1 s session is gone af';
  for (const [id, expiry] of [['js-sx-short', 1], ['js-sx-long', 300]]) {
    const c = await connect({ clientId: id, clean: false, properties: { sessionExpiryInterval: expiry } });
    await suback(c, `${id}/t`, {});
    await c.endAsync();
  }
  await new Promise((r) => setTimeout(r, 2200)); // the expiry interval itself is what is under test
  out.sessionPresent = {};
  for (const id of ['js-sx-short', 'js-sx-long']) {
    const c = await connect({ clientId: id, clean: false, properties: { sessionExpiryInterval: 300 } });
    out.sessionPresent[id] = c.connack.sessionPresent;
    await c.endAsync();
  }

  // Request/response with Response Topic and Correlation Data, answered by another MQTT.js client.
  stage = 'Request/response with Response Topic and';
  const responder = await connect({ clientId: 'js-responder' });
  await suback(responder, 'js-req/#', {});
  responder.on('message', (_t, payload, packet) => {
    const { responseTopic, correlationData } = packet.properties;
    responder.publish(responseTopic, `re: ${payload}`, { qos: 1, properties: { correlationData } });
  });
  const reply = `${out.connack.responseInformation}/js`;
  await suback(anon, reply, {});
  await fcPub.publishAsync('js-req/q', 'ping', {
    qos: 1, properties: { responseTopic: reply, correlationData: Buffer.from('corr-9') },
  });
  const answer = await until(anon, () => publishes(anon, reply)[0]);
  out.response = { payload: answer.payload.toString(), correlation: answer.properties.correlationData.toString() };

  // An authentication method the server does not offer.
  stage = 'An authentication method the server does';
  out.auth = await connect({ clientId: 'js-auth', properties: { authenticationMethod: 'SCRAM-SHA-1' } })
    .then(() => 0, (e) => e.code);

  // A 3.1.1 MQTT.js client beside a 5.0 one.
  stage = 'A 3.1.1 MQTT.js client beside a 5.0 one.';
  // keep alive within max_keepalive: a 3.x client over it is refused (Mosquitto's answer).
  const old = await connect({ clientId: 'js-old', protocolVersion: 4, keepalive: 10 });
  await suback(old, 'js-mx/#', { qos: 2 });
  await fcPub.publishAsync('js-mx/t', 'to old', { qos: 2, properties: { userProperties: { k: 'v' } } });
  const toOld = await until(old, () => publishes(old, 'js-mx/')[0]);
  out.mixed = { topic: toOld.topic, payload: toOld.payload.toString(), qos: toOld.qos };

  for (const c of [anon, again, opts, other, fc, fcPub, ...members, watcher, responder, old]) await c.endAsync();
  clearTimeout(timer);
  console.log(JSON.stringify(out));
})().catch((e) => { console.error(e); process.exit(2); });
