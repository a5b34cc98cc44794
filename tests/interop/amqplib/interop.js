#!/usr/bin/env node
// Interoperability checks with amqplib (the Node.js client, which we did not write).
//
// Usage: node interop.js [URL] [--check NAME ...] [--list]
//
// The URL comes from the command line, else from $AMQP_URL, else
// amqp://guest:guest@127.0.0.1:5672/%2f. Every check is an async function in CHECKS; each prints
// one PASS or FAIL line, and the exit status is non-zero when any check fails. The checks must
// pass against a real RabbitMQ: that is how we know they encode RabbitMQ's behaviour. Every name
// is unique per run, and whatever a check declares is deleted afterwards, so a shared RabbitMQ is
// fine. run-interop.sh installs amqplib (pinned in package-lock.json) and sets NODE_PATH.
'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const amqp = require('amqplib');

const DEFAULT_URL = 'amqp://guest:guest@127.0.0.1:5672/%2f';
const RUN_ID = crypto.randomBytes(6).toString('hex');
const CHECK_TIMEOUT_MS = 30_000;
const CLEANUP_TIMEOUT_MS = 10_000;
const WAIT_MS = 5_000;
// Connecting may take longer on a loaded machine (CI shares its cores with the builds).
const CONNECT_TIMEOUT_MS = 15_000;
const REPLY_TO = 'amq.rabbitmq.reply-to';
// amqplib has no transaction API; its generic channel RPC takes the spec's method ids
// (class << 16 | method): tx.select 90/10, tx.commit 90/20, tx.rollback 90/30 and their -ok.
const TX = {
  select: [5898250, 5898251],
  commit: [5898260, 5898261],
  rollback: [5898270, 5898271],
};

class CheckFailed extends Error {}

function expect(cond, message) {
  if (!cond) throw new CheckFailed(message);
}

function expectEq(actual, expected, what) {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  if (a !== e) throw new CheckFailed(`${what}: expected ${e}, got ${a}`);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function within(ms, what, promise) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new CheckFailed(`no ${what} within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** What one check needs: connections to the broker and names to clean up afterwards. */
class Context {
  constructor(url, checkName) {
    this.url = url;
    this.checkName = checkName;
    this.connections = [];
    this.queues = [];
    this.exchanges = [];
    this.counter = 0;
  }

  async connect(url) {
    const conn = await amqp.connect(url || this.url, {
      clientProperties: { connection_name: `amqplib-interop ${RUN_ID} ${this.checkName}` },
      timeout: CONNECT_TIMEOUT_MS,
    });
    // A broker-closed connection emits 'error'; without a listener Node would crash the run.
    conn.on('error', () => {});
    this.connections.push(conn);
    return conn;
  }

  /** A channel on a fresh connection; confirm: true makes it a confirm channel. */
  async channel({ confirm = false, conn = null } = {}) {
    const c = conn || (await this.connect());
    const ch = confirm ? await c.createConfirmChannel() : await c.createChannel();
    ch.on('error', () => {}); // The failing call reports the close; the event is only noise.
    return ch;
  }

  /** A name unique to this run, check and call. */
  name(kind) {
    this.counter += 1;
    return `amqplib-interop.${RUN_ID}.${this.checkName}.${kind}${this.counter}`;
  }

  /** Declares a queue with a unique name, to be deleted after the check. */
  async queue(ch, options = {}, kind = 'q') {
    const name = this.name(kind);
    await ch.assertQueue(name, options);
    this.queues.push(name);
    return name;
  }

  /** Declares an exchange with a unique name, to be deleted after the check. */
  async exchange(ch, type, options = { durable: false }) {
    const name = this.name(`x-${type}-`);
    await ch.assertExchange(name, type, options);
    this.exchanges.push(name);
    return name;
  }

  /** Deletes what the check declared (on a fresh connection) and closes every connection. */
  async cleanup() {
    const problems = [];
    if (this.queues.length || this.exchanges.length) {
      try {
        const conn = await this.connect();
        for (const [kind, names] of [['queue', this.queues], ['exchange', this.exchanges]]) {
          for (const name of names) {
            const ch = await this.channel({ conn });
            try {
              if (kind === 'queue') await ch.deleteQueue(name);
              else await ch.deleteExchange(name);
              await ch.close();
            } catch {
              // Already gone (a check may delete what it declared).
            }
          }
        }
      } catch (e) {
        problems.push(`cleanup: ${e.message}`);
      }
    }
    for (const conn of this.connections) {
      try {
        await conn.close();
      } catch {
        // The connection may already be closed.
      }
    }
    return problems;
  }
}

// ------------------------------------------------------------------------------------------------
// Helpers

/** The next message of `queue` by basic.get, polling until one is there (false after timeout). */
async function get(ch, queue, { noAck = false, timeoutMs = WAIT_MS } = {}) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const msg = await ch.get(queue, { noAck });
    if (msg !== false || Date.now() >= deadline) return msg;
    await sleep(50);
  }
}

/** Every message ready in `queue` now, acknowledged, as body strings in order. */
async function drain(ch, queue) {
  const bodies = [];
  for (;;) {
    const msg = await ch.get(queue, { noAck: true });
    if (msg === false) return bodies;
    bodies.push(msg.content.toString());
  }
}

async function readyCount(ch, queue) {
  return (await ch.checkQueue(queue)).messageCount;
}

async function waitForCount(ch, queue, expected) {
  const deadline = Date.now() + WAIT_MS;
  let count = await readyCount(ch, queue);
  while (count !== expected && Date.now() < deadline) {
    await sleep(50);
    count = await readyCount(ch, queue);
  }
  return count;
}

/** Awaits `promise`, which must fail with the broker closing the channel with `code`. */
async function expectChannelError(code, textPrefix, promise) {
  try {
    await promise;
  } catch (e) {
    expect(e.code === code, `expected a ${code} close, got ${e.code}: ${e.message}`);
    expect(e.message.includes(`"${textPrefix}`), `expected "${textPrefix}...", got ${e.message}`);
    return e.message;
  }
  throw new CheckFailed(`expected the broker to close the channel with ${code}, but the call succeeded`);
}

/**
 * Declares an exchange of `type` and one queue per binding list, publishes [key, body, headers]
 * triples on a confirm channel, and returns each queue's bodies in order.
 */
async function route(ctx, type, bindings, publishes) {
  const ch = await ctx.channel({ confirm: true });
  const x = await ctx.exchange(ch, type);
  const queues = [];
  for (const keys of bindings) {
    const q = await ctx.queue(ch, { exclusive: true });
    for (const [key, args] of keys) await ch.bindQueue(q, x, key, args);
    queues.push(q);
  }
  for (const [key, body, headers] of publishes) ch.publish(x, key, Buffer.from(body), { headers });
  await ch.waitForConfirms(); // Confirmed means routed: the queues hold them now.
  const got = [];
  for (const q of queues) got.push(await drain(ch, q));
  return got;
}

// ------------------------------------------------------------------------------------------------
// Checks, in the order they run.

const CHECKS = {
  /** Handshake; the capabilities amqplib relies on are advertised; channels open and close. */
  async connect(ctx) {
    const conn = await ctx.connect();
    const caps = conn.connection.serverProperties.capabilities;
    for (const cap of ['publisher_confirms', 'basic.nack', 'consumer_cancel_notify']) {
      expect(caps[cap] === true, `server-properties.capabilities lacks '${cap}': true`);
    }
    const ch = await ctx.channel({ conn });
    await ch.close();
    await ctx.channel({ conn });
  },

  /** direct: exact routing-key match; one queue may have several keys; others are dropped. */
  async direct_exchange(ctx) {
    const got = await route(ctx, 'direct', [[['a'], ['b']], [['b']]], [['a', '1'], ['b', '2'], ['c', '3']]);
    expectEq(got, [['1', '2'], ['2']], 'direct routing');
  },

  /** fanout: every bound queue gets every message, whatever the routing key. */
  async fanout_exchange(ctx) {
    const got = await route(ctx, 'fanout', [[['']], [['x']]], [['k', '1'], ['', '2']]);
    expectEq(got, [['1', '2'], ['1', '2']], 'fanout routing');
  },

  /** topic: * matches one word, # zero or more. */
  async topic_exchange(ctx) {
    const got = await route(
      ctx,
      'topic',
      [[['log.*']], [['log.#']], [['#.error']]],
      [['log.info', '1'], ['log.db.error', '2'], ['log', '3'], ['error', '4']],
    );
    expectEq(got, [['1'], ['1', '2', '3'], ['2', '4']], 'topic routing');
  },

  /** headers: x-match all needs every header, any needs one. */
  async headers_exchange(ctx) {
    const got = await route(
      ctx,
      'headers',
      [[['', { 'x-match': 'all', a: '1', b: '2' }]], [['', { 'x-match': 'any', a: '1', b: '2' }]]],
      [['', 'both', { a: '1', b: '2' }], ['', 'one', { a: '1' }], ['', 'none', { c: '3' }]],
    );
    expectEq(got, [['both'], ['both', 'one']], 'headers routing');
  },

  /** ack removes; nack/reject with requeue put back (redelivered); without requeue drop. */
  async ack_nack_reject(ctx) {
    const ch = await ctx.channel({ confirm: true });
    const q = await ctx.queue(ch, { exclusive: true });
    for (const body of ['ack', 'nack', 'reject', 'nack-drop', 'reject-drop']) ch.sendToQueue(q, Buffer.from(body));
    await ch.waitForConfirms();
    ch.ack(await get(ch, q));
    let m = await get(ch, q);
    ch.nack(m, false, true);
    m = await get(ch, q);
    expectEq([m.content.toString(), m.fields.redelivered], ['nack', true], 'nacked message back');
    ch.ack(m);
    ch.reject(await get(ch, q), true);
    m = await get(ch, q);
    expectEq([m.content.toString(), m.fields.redelivered], ['reject', true], 'rejected message back');
    ch.ack(m);
    ch.nack(await get(ch, q), false, false);
    ch.reject(await get(ch, q), false);
    expectEq(await drain(ch, q), [], 'queue after acks and dropping nack/reject');
  },

  /** prefetch(2): a consumer holds at most 2 unacked deliveries; an ack lets one more in. */
  async prefetch(ctx) {
    const ch = await ctx.channel({ confirm: true });
    const q = await ctx.queue(ch, { exclusive: true });
    for (let i = 0; i < 5; i++) ch.sendToQueue(q, Buffer.from(String(i)));
    await ch.waitForConfirms();
    await ch.prefetch(2);
    const held = [];
    await ch.consume(q, (msg) => held.push(msg));
    const deadline = Date.now() + WAIT_MS;
    while (held.length < 2 && Date.now() < deadline) await sleep(20);
    await sleep(300);
    expectEq(held.map((m) => m.content.toString()), ['0', '1'], 'deliveries while two are unacked');
    ch.ack(held[0]);
    while (held.length < 3 && Date.now() < deadline + WAIT_MS) await sleep(20);
    await sleep(300);
    expectEq(held.map((m) => m.content.toString()), ['0', '1', '2'], 'deliveries after one ack');
  },

  /** Confirm channel: every publish's callback gets basic.ack, also for an unrouted one. */
  async publisher_confirms(ctx) {
    const ch = await ctx.channel({ confirm: true });
    const q = await ctx.queue(ch, { exclusive: true });
    const x = await ctx.exchange(ch, 'fanout');
    const acks = [];
    for (let i = 0; i < 20; i++) {
      acks.push(new Promise((resolve) => ch.sendToQueue(q, Buffer.from(String(i)), {}, (err) => resolve(err))));
    }
    acks.push(new Promise((resolve) => ch.publish(x, '', Buffer.from('nowhere'), {}, (err) => resolve(err))));
    const errors = await within(WAIT_MS, 'confirms', Promise.all(acks));
    expect(errors.every((e) => e === null), `some publishes were nacked: ${errors}`);
    expectEq(await waitForCount(ch, q, 20), 20, 'messages in the queue');
  },

  /** A mandatory unroutable publish comes back: basic.return 312 NO_ROUTE, before its confirm. */
  async mandatory_return(ctx) {
    const ch = await ctx.channel({ confirm: true });
    const returned = new Promise((resolve) => ch.on('return', resolve));
    const key = ctx.name('nowhere');
    ch.publish('', key, Buffer.from('lost'), { mandatory: true });
    await ch.waitForConfirms();
    const msg = await within(WAIT_MS, 'basic.return', returned);
    expectEq(
      [msg.fields.replyCode, msg.fields.replyText, msg.fields.routingKey, msg.content.toString()],
      [312, 'NO_ROUTE', key, 'lost'],
      'basic.return',
    );
  },

  /** tx.select; published messages appear on commit only, and vanish on rollback. */
  async transactions(ctx) {
    const ch = await ctx.channel();
    const observer = await ctx.channel();
    const q = await ctx.queue(ch);
    await ch.rpc(TX.select[0], {}, TX.select[1]);
    ch.sendToQueue(q, Buffer.from('rolled back'));
    await ch.rpc(TX.rollback[0], {}, TX.rollback[1]);
    ch.sendToQueue(q, Buffer.from('committed'));
    expectEq(await readyCount(observer, q), 0, 'messages visible before commit');
    await ch.rpc(TX.commit[0], {}, TX.commit[1]);
    expectEq(await waitForCount(observer, q, 1), 1, 'messages after commit');
    expectEq(await drain(observer, q), ['committed'], 'bodies after commit');
  },

  /** An exclusive queue is locked to its connection (405 elsewhere) and goes with it; an
   * auto-delete queue goes with its last consumer. */
  async exclusive_and_auto_delete(ctx) {
    const conn = await ctx.connect();
    const ch = await ctx.channel({ conn });
    const excl = await ctx.queue(ch, { exclusive: true });
    const auto = await ctx.queue(ch, { autoDelete: true });
    const { consumerTag } = await ch.consume(auto, () => {}, { noAck: true });
    await ch.checkQueue(excl);
    await ch.cancel(consumerTag);
    await expectChannelError(404, 'NOT_FOUND', ch.checkQueue(auto));
    const other = await ctx.channel();
    await expectChannelError(405, 'RESOURCE_LOCKED', other.checkQueue(excl));
    await conn.close();
    await expectChannelError(404, 'NOT_FOUND', (await ctx.channel()).checkQueue(excl));
  },

  /** Queue TTL and per-message expiration dead-letter with x-death reason expired; a reject
   * without requeue dead-letters with reason rejected. */
  async ttl_dead_letter(ctx) {
    const ch = await ctx.channel();
    const dlq = await ctx.queue(ch, {}, 'dlq');
    const q = await ctx.queue(ch, {
      arguments: { 'x-message-ttl': 200, 'x-dead-letter-exchange': '', 'x-dead-letter-routing-key': dlq },
    });
    ch.sendToQueue(q, Buffer.from('queue-ttl'));
    ch.sendToQueue(q, Buffer.from('message-ttl'), { expiration: '50' });
    const got = [];
    const deadline = Date.now() + WAIT_MS;
    while (got.length < 2 && Date.now() < deadline) {
      const m = await get(ch, dlq, { noAck: true, timeoutMs: 200 });
      if (m) got.push(m);
    }
    expectEq(got.map((m) => m.content.toString()).sort(), ['message-ttl', 'queue-ttl'], 'dead-lettered bodies');
    for (const m of got) {
      const death = (m.properties.headers || {})['x-death'];
      expect(death && death.length, `${m.content}: no x-death header`);
      expectEq([death[0].reason, death[0].queue], ['expired', q], `${m.content} x-death`);
    }
    ch.sendToQueue(q, Buffer.from('rejected'));
    ch.reject(await get(ch, q), false);
    const m = await get(ch, dlq, { noAck: true });
    expect(m, 'the rejected message was not dead-lettered');
    expectEq(m.properties.headers['x-death'][0].reason, 'rejected', 'x-death reason');
  },

  /** A 1 MiB body (split over many frames both ways) round-trips byte for byte. */
  async large_message(ctx) {
    const ch = await ctx.channel({ confirm: true });
    const q = await ctx.queue(ch, { exclusive: true });
    const body = Buffer.alloc(1024 * 1024);
    for (let i = 0; i < body.length; i++) body[i] = (i * 7 + 3) % 256;
    ch.sendToQueue(q, body);
    await ch.waitForConfirms();
    const m = await get(ch, q, { noAck: true });
    expect(m && body.equals(m.content), `1 MiB body did not round-trip (${m ? m.content.length : 'none'})`);
  },

  /** 100 channels on one connection, each publishing to and reading from its own queue. */
  async many_channels(ctx) {
    const conn = await ctx.connect();
    const one = async (i) => {
      const ch = await ctx.channel({ conn, confirm: true });
      const { queue } = await ch.assertQueue('', { exclusive: true });
      ch.sendToQueue(queue, Buffer.from(String(i)));
      await ch.waitForConfirms();
      const m = await get(ch, queue, { noAck: true });
      return m ? m.content.toString() : null;
    };
    const got = await Promise.all(Array.from({ length: 100 }, (_, i) => one(i)));
    expectEq(got, Array.from({ length: 100 }, (_, i) => String(i)), 'bodies per channel');
  },

  /** Deleting a queue under a consumer cancels it: amqplib calls the consumer with null. */
  async consumer_cancel_notification(ctx) {
    const ch = await ctx.channel();
    const q = await ctx.queue(ch);
    let cancelled;
    const gone = new Promise((resolve) => (cancelled = resolve));
    await ch.consume(q, (msg) => msg === null && cancelled(), { noAck: true });
    await (await ctx.channel()).deleteQueue(q);
    await within(WAIT_MS, 'basic.cancel', gone);
    await ch.assertQueue('', { exclusive: true }); // The channel is still usable.
  },

  /** RPC over amq.rabbitmq.reply-to: the reply reaches the requester without a reply queue. */
  async direct_reply_to(ctx) {
    const server = await ctx.channel();
    const requests = await ctx.queue(server, { exclusive: true });
    await server.consume(requests, (msg) => {
      server.sendToQueue(msg.properties.replyTo, Buffer.from(`re: ${msg.content}`), {
        correlationId: msg.properties.correlationId,
      });
      server.ack(msg);
    });
    const client = await ctx.channel();
    let answered;
    const reply = new Promise((resolve) => (answered = resolve));
    await client.consume(REPLY_TO, answered, { noAck: true });
    client.sendToQueue(requests, Buffer.from('ping'), { replyTo: REPLY_TO, correlationId: 'c-1' });
    const msg = await within(WAIT_MS, 'the reply', reply);
    expectEq([msg.content.toString(), msg.properties.correlationId], ['re: ping', 'c-1'], 'reply');
    expect(msg.fields.routingKey.startsWith(REPLY_TO), `reply routing key ${msg.fields.routingKey}`);
  },

  /** checkQueue of a missing queue: 404; checkExchange of a missing exchange: 404. */
  async error_not_found(ctx) {
    await expectChannelError(404, 'NOT_FOUND - no queue', (await ctx.channel()).checkQueue(ctx.name('missing')));
    const missing = ctx.name('missing-x');
    const text = await expectChannelError(404, 'NOT_FOUND - no exchange', (await ctx.channel()).checkExchange(missing));
    expect(text.includes(missing), `404 text names the exchange: ${text}`);
  },

  /** Redeclaring a queue with another durable flag: 406 PRECONDITION_FAILED. */
  async error_precondition_failed(ctx) {
    const q = await ctx.queue(await ctx.channel(), { durable: false });
    await expectChannelError(
      406,
      "PRECONDITION_FAILED - inequivalent arg 'durable'",
      (await ctx.channel()).assertQueue(q, { durable: true }),
    );
  },

  /** Another connection's exclusive queue: 405 RESOURCE_LOCKED. */
  async error_resource_locked(ctx) {
    const q = await ctx.queue(await ctx.channel(), { exclusive: true });
    await expectChannelError(405, 'RESOURCE_LOCKED', (await ctx.channel()).assertQueue(q, { exclusive: true }));
  },

  /** A wrong password fails the handshake with 403 ACCESS_REFUSED; the right one still works. */
  async error_wrong_password(ctx) {
    const url = new URL(ctx.url);
    url.password = `wrong-${RUN_ID}`;
    try {
      await ctx.connect(url.toString());
    } catch (e) {
      expect(/403/.test(e.message) && /ACCESS_REFUSED/.test(e.message), `expected 403 ACCESS_REFUSED, got ${e.message}`);
      await ctx.connect();
      return;
    }
    throw new CheckFailed('connected with a wrong password');
  },
};

// ------------------------------------------------------------------------------------------------
// Runner

async function runCheck(url, name, fn) {
  const ctx = new Context(url, name);
  let failure = null;
  try {
    await within(CHECK_TIMEOUT_MS, 'end of the check', fn(ctx));
  } catch (e) {
    failure = e instanceof CheckFailed ? e.message : `unexpected ${e.name}: ${e.message}\n${e.stack}`;
  }
  let problems;
  try {
    problems = await within(CLEANUP_TIMEOUT_MS, 'end of cleanup', ctx.cleanup());
  } catch (e) {
    problems = [e.message];
  }
  for (const p of problems) console.log(`      warning: ${p}`);
  return failure;
}

async function main(argv) {
  const checks = [];
  let url = process.env.AMQP_URL || DEFAULT_URL;
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--list') {
      for (const name of Object.keys(CHECKS)) console.log(name);
      return 0;
    }
    if (argv[i] === '--check') checks.push(argv[++i]);
    else url = argv[i];
  }
  const unknown = checks.filter((c) => !(c in CHECKS));
  if (unknown.length) {
    console.error(`unknown check(s): ${unknown.join(', ')}`);
    return 2;
  }
  const selected = Object.entries(CHECKS).filter(([n]) => !checks.length || checks.includes(n));
  const shown = new URL(url);
  // The package's exports hide package.json; it sits beside the entry point.
  const manifest = path.join(path.dirname(require.resolve('amqplib')), 'package.json');
  const { version } = JSON.parse(fs.readFileSync(manifest, 'utf8'));
  console.log(`amqplib ${version} on Node ${process.version} against ${shown.protocol}//${shown.username}:***@${shown.host} (run ${RUN_ID})`);
  const failed = [];
  for (const [i, [name, fn]] of selected.entries()) {
    const started = Date.now();
    const failure = await runCheck(url, name, fn);
    const secs = ((Date.now() - started) / 1000).toFixed(2);
    if (failure === null) {
      console.log(`PASS ${name} (${secs}s)`);
      continue;
    }
    failed.push(name);
    console.log(`FAIL ${name} (${secs}s): ${failure}`);
    if (name === 'connect') {
      for (const [rest] of selected.slice(i + 1)) {
        failed.push(rest);
        console.log(`FAIL ${rest}: not run, cannot connect`);
      }
      break;
    }
  }
  const passed = selected.length - failed.length;
  console.log(`${passed} passed, ${failed.length} failed${failed.length ? `: ${failed.join(', ')}` : ''}`);
  return failed.length ? 1 : 0;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e) => {
    console.error(e);
    process.exit(1);
  },
);
