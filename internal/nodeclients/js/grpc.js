// The RocketMQ 5.x Node.js client against the gRPC endpoint, over TLS verified
// against the test's CA (GRPC_DEFAULT_SSL_ROOTS_FILE_PATH): sends with tags, keys
// and properties, a delayed message, a simple consumer's receive and ack, a
// sharded send, a SQL92 subscription over the properties, and transactions
// committed, rolled back and resolved by the client's checker when the server
// checks back. Exits non-zero on the first difference.
'use strict';
const { Producer, SimpleConsumer, FilterExpression } = require('rocketmq-client-nodejs');
// The package's index does not export the checker's answers; they are the protocol's.
const { TransactionResolution, FilterType } = require('rocketmq-client-nodejs/proto/apache/rocketmq/v2/definition_pb');
const assert = require('assert');

const env = process.env;
// The client's own log: what it reports as an error of its background calls
// (heartbeats, telemetry, route refreshes) fails the run too.
const errors = [];
const logger = {
  info() {},
  debug() {},
  warn(...args) { console.error('client warning:', ...args); },
  error(...args) { errors.push(args); console.error('client error:', ...args); },
};
const common = {
  logger,
  endpoints: env.ORDERLY_GRPC,
  namespace: env.ORDERLY_ID,
  sessionCredentials: { accessKey: env.ORDERLY_AK, accessSecret: env.ORDERLY_SK },
  sslEnabled: true,
};

(async () => {
  const producer = new Producer({ ...common });
  await producer.startup();
  const sent = [];
  for (let i = 0; i < 10; i++) {
    const body = 'grpc ' + i;
    const r = await producer.send({ topic: env.TOPIC, tag: 'NodeTag', keys: ['k' + i], properties: new Map([['p', String(i)]]), body: Buffer.from(body) });
    assert.ok(r.messageId, JSON.stringify(r));
    sent.push(body);
  }
  await producer.send({ topic: env.TOPIC, tag: 'OtherTag', body: Buffer.from('filtered out') });
  const at = Date.now() + 2000;
  await producer.send({ topic: env.TOPIC, tag: 'NodeTag', delay: 2000, body: Buffer.from('delayed') });
  for (let i = 0; i < 6; i++) {
    const r = await producer.send({ topic: env.ORDERED_TOPIC, messageGroup: 'g' + (i % 2), body: Buffer.from(String(i)) });
    assert.ok(r.messageId);
  }
  await producer.shutdown();

  const consumer = new SimpleConsumer({ ...common, consumerGroup: env.GROUP, subscriptions: new Map().set(env.TOPIC, 'NodeTag'), awaitDuration: 2000 });
  await consumer.startup();
  const got = [];
  let delayedAt = 0;
  for (let i = 0; i < 30 && got.length < sent.length + 1; i++) {
    for (const m of await consumer.receive(16, 10000)) {
      const body = m.body.toString();
      got.push(body);
      assert.strictEqual(m.tag, 'NodeTag', body);
      if (body === 'delayed') {
        delayedAt = Date.now();
      } else {
        const i = body.split(' ')[1];
        assert.strictEqual(m.properties.get('p'), i, body);
        assert.deepStrictEqual(m.keys, ['k' + i], body);
      }
      await consumer.ack(m);
    }
  }
  assert.deepStrictEqual(got.filter((b) => b !== 'delayed').sort(), sent.slice().sort());
  assert.ok(delayedAt >= at, 'the delayed message came ' + (at - delayedAt) + ' ms early');
  console.log('grpc: %d sent and received, one delayed until its time', got.length);
  await consumer.shutdown();
  await sqlFilter();
  await transactions();
  assert.deepStrictEqual(errors, [], 'the client logged errors');
})().catch((e) => {
  console.error(e);
  process.exit(1);
});

// sqlFilter consumes the same messages in another group through a SQL92
// expression over their properties: only p 3 to 5 come.
async function sqlFilter() {
  const sql = new FilterExpression('p IS NOT NULL AND p BETWEEN 3 AND 5 AND TAGS = \'NodeTag\'', FilterType.SQL);
  const consumer = new SimpleConsumer({ ...common, consumerGroup: env.SQL_GROUP, subscriptions: new Map().set(env.TOPIC, sql), awaitDuration: 2000 });
  await consumer.startup();
  const got = [];
  for (let i = 0; i < 30 && got.length < 3; i++) {
    for (const m of await consumer.receive(16, 10000)) {
      got.push(m.body.toString());
      await consumer.ack(m);
    }
  }
  assert.deepStrictEqual(got.sort(), ['grpc 3', 'grpc 4', 'grpc 5']);
  const more = await consumer.receive(16, 10000);
  assert.deepStrictEqual(more.map((m) => m.body.toString()), [], 'messages the expression rules out came');
  console.log('grpc: a SQL92 subscription received %d', got.length);
  await consumer.shutdown();
}

// transactions sends three half messages: one committed, one rolled back, and one
// left open for the server to check back after its 10 s, which the checker commits.
async function transactions() {
  const checked = [];
  const producer = new Producer({
    ...common,
    topics: [env.TXN_TOPIC],
    checker: {
      async check(m) {
        checked.push(m.body.toString());
        return TransactionResolution.COMMIT;
      },
    },
  });
  await producer.startup();
  for (const [body, end] of [['commit-me', 'commit'], ['roll-me', 'rollback'], ['check-me', null]]) {
    const tx = producer.beginTransaction();
    await producer.send({ topic: env.TXN_TOPIC, body: Buffer.from(body) }, tx);
    if (end) await tx[end]();
  }
  const consumer = new SimpleConsumer({ ...common, consumerGroup: env.GROUP, subscriptions: new Map().set(env.TXN_TOPIC, '*'), awaitDuration: 2000 });
  await consumer.startup();
  const got = [];
  for (let i = 0; i < 30 && got.length < 2; i++) {
    for (const m of await consumer.receive(16, 10000)) {
      got.push(m.body.toString());
      await consumer.ack(m);
    }
  }
  assert.deepStrictEqual(got.sort(), ['check-me', 'commit-me']);
  assert.deepStrictEqual(checked, ['check-me']);
  console.log('grpc: transactions committed, rolled back, checked back');
  await consumer.shutdown();
  await producer.shutdown();
}

