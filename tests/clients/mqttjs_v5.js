// MQTT.js (protocolVersion 5) against skein: CONNACK properties, topic aliases, properties passed through,
// subscription identifiers, message expiry and a resumed session.
// Usage: node mqttjs_v5.js PORT
// Prints one JSON line with what was observed; exits non-zero on any failure or after 15 s.
'use strict';
const mqtt = require('mqtt');

const url = `mqtt://127.0.0.1:${Number(process.argv[2])}`;
const timer = setTimeout(() => { console.error('timed out'); process.exit(3); }, 15000);
const base = { protocolVersion: 5, reconnectPeriod: 0, connectTimeout: 5000 };

function connect(opts) {
  return new Promise((resolve, reject) => {
    const c = mqtt.connect(url, { ...base, ...opts });
    c.once('connect', (connack) => resolve({ c, connack }));
    c.once('error', reject);
  });
}

function messages(client, count) {
  return new Promise((resolve) => {
    const got = [];
    client.on('message', (topic, payload, packet) => {
      got.push({ topic, payload: payload.toString(), props: packet.properties || {} });
      if (got.length === count) resolve(got);
    });
  });
}

(async () => {
  const out = {};
  // The subscriber allows topic aliases: the broker sends repeated topics by alias, MQTT.js resolves them.
  const { c: sub, connack } = await connect({ clientId: 'jsv5-sub', properties: { topicAliasMaximum: 5 } });
  out.connack = { topicAliasMaximum: connack.properties.topicAliasMaximum, reasonCode: connack.reasonCode };
  const got = messages(sub, 3);
  await sub.subscribeAsync('jsv5/#', { qos: 1, properties: { subscriptionIdentifier: 7 } });
  const { c: pub } = await connect({ clientId: 'jsv5-pub', autoUseTopicAlias: true });
  const props = {
    userProperties: { a: '1', b: ['2', '3'] },
    contentType: 'application/json',
    responseTopic: 'jsv5/reply',
    correlationData: Buffer.from('c-42'),
    messageExpiryInterval: 300,
    payloadFormatIndicator: true,
  };
  await pub.publishAsync('jsv5/aliased/topic', '{"n":1}', { qos: 1, properties: props });
  // The second publish on this topic goes out as an empty topic and the alias.
  await pub.publishAsync('jsv5/aliased/topic', '{"n":2}', { qos: 1 });
  await pub.publishAsync('jsv5/aliased/topic', '{"n":3}', { qos: 1 });
  out.messages = (await got).map((m) => ({
    topic: m.topic,
    payload: m.payload,
    userProperties: m.props.userProperties,
    contentType: m.props.contentType,
    responseTopic: m.props.responseTopic,
    correlationData: m.props.correlationData ? m.props.correlationData.toString() : null,
    messageExpiryInterval: m.props.messageExpiryInterval,
    subscriptionIdentifier: m.props.subscriptionIdentifier,
    topicAlias: m.props.topicAlias,
  }));

  // A persistent session: away while a QoS 1 message arrives, then resumed.
  const { c: away } = await connect({ clientId: 'jsv5-away', clean: false, properties: { sessionExpiryInterval: 300 } });
  await away.subscribeAsync('jsv5-q/#', { qos: 1 });
  await away.endAsync();
  await pub.publishAsync('jsv5-q/t', 'while away', { qos: 1 });
  const back = mqtt.connect(url, { ...base, clientId: 'jsv5-away', clean: false, properties: { sessionExpiryInterval: 300 } });
  const queued = messages(back, 1);
  const backConnack = await new Promise((resolve) => back.once('connect', resolve));
  out.resumed = { sessionPresent: backConnack.sessionPresent, message: (await queued)[0].payload };

  for (const c of [sub, pub, back]) await c.endAsync();
  clearTimeout(timer);
  console.log(JSON.stringify(out));
})().catch((e) => { console.error(e); process.exit(2); });
