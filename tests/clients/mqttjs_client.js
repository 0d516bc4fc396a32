// MQTT.js against skein: QoS 0/1/2 round trips and a retained message, with protocolVersion 4 or 5.
// Usage: node mqttjs_client.js PORT PROTOCOL_VERSION
// Prints one JSON line with what was received; exits non-zero on any failure or after 15 s.
'use strict';
const mqtt = require('mqtt');

const [port, version] = [Number(process.argv[2]), Number(process.argv[3])];
const url = `mqtt://127.0.0.1:${port}`;
const opts = (id) => ({ protocolVersion: version, clientId: `${id}-v${version}`, reconnectPeriod: 0, connectTimeout: 5000 });
const timer = setTimeout(() => { console.error('timed out'); process.exit(3); }, 15000);

function waitFor(client, count) {
  return new Promise((resolve) => {
    const got = [];
    client.on('message', (topic, payload, packet) => {
      got.push({ topic, payload: payload.toString(), qos: packet.qos, retain: packet.retain });
      if (got.length === count) resolve(got);
    });
  });
}

(async () => {
  const prefix = `js${version}`;
  const sub = await mqtt.connectAsync(url, opts('js-sub'));
  const received = waitFor(sub, 3);
  const granted = await sub.subscribeAsync(`${prefix}/#`, { qos: 2 });
  const pub = await mqtt.connectAsync(url, opts('js-pub'));
  for (const qos of [0, 1, 2]) {
    await pub.publishAsync(`${prefix}/q${qos}`, `hello qos ${qos}`, { qos });
  }
  const live = await received;
  await pub.publishAsync(`${prefix}-retained/r`, 'kept', { qos: 1, retain: true });
  const late = await mqtt.connectAsync(url, opts('js-late'));
  const retained = waitFor(late, 1);
  await late.subscribeAsync(`${prefix}-retained/#`, { qos: 1 });
  const [r] = await retained;
  console.log(JSON.stringify({ granted: granted.map((g) => g.qos), live, retained: r }));
  await Promise.all([sub.endAsync(), pub.endAsync(), late.endAsync()]);
  clearTimeout(timer);
})().catch((e) => { console.error(e); process.exit(1); });
