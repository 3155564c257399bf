// The mq-http Node.js SDK against the endpoint: normal messages with tags, keys and
// properties, timed delivery, partitioned order, transactions (commit, rollback and a
// check-back) and the errors an application sees. Exits non-zero on the first
// difference from what the SDK's users rely on.
'use strict';
const { MQClient, MessageProperties } = require('@aliyunmq/mq-http-sdk');
const assert = require('assert');
const crypto = require('crypto');

const env = process.env;
const client = new MQClient(env.ORDERLY_HTTP, env.ORDERLY_AK, env.ORDERLY_SK);
const inst = env.ORDERLY_ID;
const group = env.GROUP;

// drain consumes until want messages arrived, acknowledging each batch.
async function drain(consumer, want, orderly) {
  const got = [];
  for (let i = 0; i < 30 && got.length < want; i++) {
    let r;
    try {
      r = orderly ? await consumer.consumeMessageOrderly(16, 2) : await consumer.consumeMessage(16, 2);
    } catch (e) {
      if (e.Code === 'MessageNotExist') continue;
      throw e;
    }
    assert.strictEqual(r.code, 200);
    got.push(...r.body);
    const ack = await consumer.ackMessage(r.body.map((m) => m.ReceiptHandle));
    assert.strictEqual(ack.code, 204, JSON.stringify(ack));
  }
  assert.strictEqual(got.length, want, 'consumed ' + JSON.stringify(got.map((m) => m.MessageBody)));
  return got;
}

const md5 = (s) => crypto.createHash('md5').update(s, 'utf8').digest('hex').toUpperCase();

async function normal() {
  const p = client.getProducer(inst, env.TOPIC);
  // The SDK wraps every text in CDATA; these need no escaping there but would in text.
  const bodies = ['hello', 'a<b>&c"\'', 'ünïcødé 中文 😄', 'x'.repeat(5000), ' spaces ', 'line\nbreak'];
  for (const b of bodies) {
    const props = new MessageProperties();
    props.putProperty('a', '1');
    props.messageKey('k-' + b.length);
    const r = await p.publishMessage(b, 'TagA', props);
    assert.strictEqual(r.code, 201, JSON.stringify(r));
    assert.ok(r.body.MessageId, JSON.stringify(r));
    assert.strictEqual(r.body.MessageBodyMD5, md5(b));
    assert.ok(r.requestId, 'no x-mq-request-id');
  }
  await p.publishMessage('another tag', 'TagB');
  const got = await drain(client.getConsumer(inst, env.TOPIC, group, 'TagA'), bodies.length);
  assert.deepStrictEqual(got.map((m) => m.MessageBody).sort(), bodies.slice().sort());
  for (const m of got) {
    assert.strictEqual(m.MessageTag, 'TagA');
    assert.strictEqual(m.Properties.a, '1', JSON.stringify(m));
    assert.strictEqual(m.MessageKey, 'k-' + m.MessageBody.length);
    assert.strictEqual(m.MessageBodyMD5, md5(m.MessageBody));
    assert.strictEqual(m.ConsumedTimes, '1');
    assert.ok(Number(m.PublishTime) > 0 && Number(m.NextConsumeTime) > Number(m.PublishTime), JSON.stringify(m));
  }
  // A filter is the group's: another group without one gets every message.
  const all = await drain(client.getConsumer(inst, env.TOPIC, env.OTHER_GROUP), bodies.length + 1);
  assert.deepStrictEqual(all.map((m) => m.MessageBody).sort(), bodies.concat(['another tag']).sort());
  console.log('normal: %d messages, filtered by tag', got.length);
}

async function timed() {
  const p = client.getProducer(inst, env.TOPIC);
  const props = new MessageProperties();
  const at = Date.now() + 2000;
  props.startDeliverTime(at);
  await p.publishMessage('timed', '', props);
  const got = await drain(client.getConsumer(inst, env.TOPIC, group), 1);
  assert.strictEqual(got[0].MessageBody, 'timed');
  assert.ok(Date.now() >= at, 'delivered ' + (at - Date.now()) + ' ms early');
  assert.strictEqual(got[0].StartDeliverTime, at);
  console.log('timed: delivered after its time');
}

async function ordered() {
  const p = client.getProducer(inst, env.ORDERED_TOPIC);
  const n = 30;
  for (let i = 0; i < n; i++) {
    const props = new MessageProperties();
    props.shardingKey('s' + (i % 3));
    await p.publishMessage(`${i % 3}:${i}`, '', props);
  }
  const got = await drain(client.getConsumer(inst, env.ORDERED_TOPIC, group), n, true);
  const last = {};
  for (const m of got) {
    const [k, i] = m.MessageBody.split(':').map(Number);
    assert.ok(last[k] === undefined || last[k] < i, 'out of order: ' + m.MessageBody + ' after ' + last[k]);
    last[k] = i;
    assert.strictEqual(m.ShardingKey, 's' + k);
  }
  console.log('ordered: %d messages in order per sharding key', got.length);
}

async function transactions() {
  const p = client.getTransProducer(inst, env.TXN_TOPIC, group);
  const props = (s) => {
    const m = new MessageProperties();
    m.transCheckImmunityTime(s);
    return m;
  };
  const commit = await p.publishMessage('commit-me', '', props(60));
  const rollback = await p.publishMessage('roll-me', '', props(60));
  await p.publishMessage('check-me', '', props(10));
  assert.ok(commit.body.ReceiptHandle, JSON.stringify(commit));
  assert.strictEqual((await p.commit(commit.body.ReceiptHandle)).code, 204);
  assert.strictEqual((await p.rollback(rollback.body.ReceiptHandle)).code, 204);
  // The third is left open: after its 10 s it is offered to the check-back.
  let checked = false;
  for (let i = 0; i < 15 && !checked; i++) {
    let r;
    try {
      r = await p.consumeHalfMessage(16, 2);
    } catch (e) {
      if (e.Code === 'MessageNotExist') continue;
      throw e;
    }
    for (const m of r.body) {
      assert.strictEqual(m.MessageBody, 'check-me', 'check-back of ' + m.MessageBody);
      assert.strictEqual((await p.commit(m.ReceiptHandle)).code, 204);
      checked = true;
    }
  }
  assert.ok(checked, 'no check-back within 30 s');
  const got = await drain(client.getConsumer(inst, env.TXN_TOPIC, group), 2);
  assert.deepStrictEqual(got.map((m) => m.MessageBody).sort(), ['check-me', 'commit-me']);
  console.log('transactions: committed, rolled back, checked back');
}

async function errors() {
  const refused = async (f) => {
    try {
      await f();
    } catch (e) {
      return e.Code;
    }
    assert.fail('not refused');
  };
  assert.strictEqual(await refused(() => client.getProducer(inst, 'NoSuchTopic').publishMessage('x')), 'TopicNotExist');
  const wrong = new MQClient(env.ORDERLY_HTTP, env.ORDERLY_AK, 'not-the-secret');
  assert.strictEqual(await refused(() => wrong.getProducer(inst, env.TOPIC).publishMessage('x')), 'SignatureDoesNotMatch');
  // A normal message to a transactional topic is refused, not kept as a half message
  // that nothing will resolve.
  assert.strictEqual(await refused(() => client.getProducer(inst, env.TXN_TOPIC).publishMessage('x')), 'InvalidArgument');
  // An ack of handles that are not valid answers its errors per handle.
  const bad = await client.getConsumer(inst, env.TOPIC, group).ackMessage(['bogus']);
  assert.strictEqual(bad.code, 404, JSON.stringify(bad));
  assert.strictEqual(bad.body[0].ErrorCode, 'ReceiptHandleError');
  assert.strictEqual(bad.body[0].ReceiptHandle, 'bogus');
  console.log('errors: as the SDK expects');
}

(async () => {
  await normal();
  await timed();
  await ordered();
  await transactions();
  await errors();
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
