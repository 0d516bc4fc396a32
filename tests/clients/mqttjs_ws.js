// MQTT.js over WebSocket against skein: a subscriber and a publisher exchange QoS 0, 1 and 2 messages.
// Usage: node mqttjs_ws.js URL PROTOCOL_VERSION [CA_FILE]   (URL: ws://127.0.0.1:PORT/mqtt or wss://...)
// Prints one JSON line with what was received; exits non-zero on any failure or after 15 s.
'use strict';
const fs = require('fs');
const mqtt = require('mqtt');

const [url, version, ca] = [process.argv[2], Number(process.argv[3]), process.argv[4]];
const timer = setTimeout(() => { console.error('timed out'); process.exit(3); }, 15000);
const opts = (id) => ({
  protocolVersion: version, clientId: `${id}-v${version}`, reconnectPeriod: 0, connectTimeout: 5000,
  ...(ca ? { ca: fs.readFileSync(ca), rejectUnauthorized: true } : {}),
});

(async () => {
  const sub = await mqtt.connectAsync(url, opts('ws-sub'));
  const got = [];
  const all = new Promise((resolve) => sub.on('message', (topic, payload, packet) => {
    got.push({ topic, payload: payload.toString(), qos: packet.qos });
    if (got.length === 3) resolve();
  }));
  await sub.subscribeAsync('ws/#', { qos: 2 });
  const pub = await mqtt.connectAsync(url, opts('ws-pub'));
  for (const qos of [0, 1, 2]) await pub.publishAsync(`ws/q${qos}`, `over websocket ${qos}`, { qos });
  await all;
  for (const c of [sub, pub]) await c.endAsync();
  clearTimeout(timer);
  console.log(JSON.stringify(got.sort((a, b) => a.topic.localeCompare(b.topic))));
})().catch((e) => { console.error(e); process.exit(2); });
