// ali-ons, a Node.js client of RocketMQ 4.x remoting (the Aliyun ONS one, with its
// own signing and its own rebalance), against the TCP endpoint: sends with tags,
// keys and properties, a push consumer filtering by tag, a message its handler asks
// to retry and gets again, timed delivery (__STARTDELIVERTIME), and a body past
// the client's 4 KiB compression threshold, which it sends deflated. Exits
// non-zero on the first difference.
'use strict';
const { Producer, Consumer, Message } = require('ali-ons');
const assert = require('assert');

const env = process.env;
const common = {
  accessKeyId: env.ORDERLY_AK,
  accessKeySecret: env.ORDERLY_SK,
  nameSrv: env.ORDERLY_TCP,
  namespace: env.ORDERLY_ID,
  // The client asks this for the name server's address only when nameSrv is not set.
  httpclient: { request() { throw new Error('no ONS address lookup expected'); } },
};

function within(ms, what, p) {
  return Promise.race([p, new Promise((_, reject) => setTimeout(() => reject(new Error('timed out: ' + what())), ms))]);
}

(async () => {
  const producer = new Producer({ ...common, producerGroup: 'PID_node' });
  await producer.ready();
  const sent = [];
  for (let i = 0; i < 10; i++) {
    const msg = new Message(env.TOPIC, 'OnsTag', 'ons ' + i);
    msg.keys = ['key' + i];
    msg.properties.p = String(i);
    const r = await producer.send(msg);
    assert.strictEqual(r.sendStatus, 'SEND_OK', JSON.stringify(r));
    assert.ok(r.msgId, JSON.stringify(r));
    sent.push('ons ' + i);
  }
  assert.strictEqual((await producer.send(new Message(env.TOPIC, 'OtherTag', 'filtered out'))).sendStatus, 'SEND_OK');
  await producer.send(new Message(env.TOPIC, 'OnsTag', 'retry-me'));
  // ali-ons deflates a body of 4 KiB or more and marks it in sysFlag.
  const big = 'big:' + Array.from({ length: 2000 }, (_, i) => 'line ' + i + ';').join(' ').slice(0, 20000 - 4);
  assert.strictEqual((await producer.send(new Message(env.TOPIC, 'OnsTag', big))).sendStatus, 'SEND_OK');
  const timed = new Message(env.TOPIC, 'OnsTag', 'timed');
  const at = Date.now() + 2000;
  timed.setStartDeliverTime(at);
  await producer.send(timed);

  const consumer = new Consumer({ ...common, consumerGroup: env.GROUP, consumeFromWhere: 'CONSUME_FROM_FIRST_OFFSET' });
  const failures = [];
  consumer.on('error', (e) => failures.push(e));
  const got = [];
  let retried = 0;
  let timedAt = 0;
  const want = sent.length + 3;
  const done = new Promise((resolve) => {
    consumer.subscribe(env.TOPIC, 'OnsTag', async (msg) => {
      const body = msg.body.toString();
      assert.strictEqual(msg.tags, 'OnsTag', body);
      if (body === 'retry-me' && retried++ === 0) return Consumer.ACTION_RETRY;
      if (body === 'timed') timedAt = Date.now();
      if (body.startsWith('big:')) assert.strictEqual(body, big, 'the deflated body came back different');
      if (body.startsWith('ons ')) {
        assert.strictEqual(msg.properties.p, body.split(' ')[1], body);
        assert.strictEqual(msg.keys, 'key' + body.split(' ')[1], body);
      }
      got.push(body);
      if (got.length >= want) resolve();
    });
  });
  await consumer.ready();
  await within(60000, () => JSON.stringify(got), done);
  assert.deepStrictEqual(got.filter((b) => b.startsWith('ons ')).sort(), sent.slice().sort());
  assert.strictEqual(retried, 2, 'retry-me delivered ' + retried + ' times');
  assert.ok(got.includes(big), 'the deflated body did not come');
  assert.ok(timedAt >= at, 'the timed message came ' + (at - timedAt) + ' ms early');
  assert.deepStrictEqual(failures, []);
  console.log('remoting: %d sent and consumed, one retried, one timed, one deflated', got.length);
  // The client keeps timers of its own after closing: end the process here.
  await within(10000, () => 'close', Promise.all([consumer.close(), producer.close()]));
  process.exit(0);
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
