#!/usr/bin/env python3
"""Interoperability checks with pika (a client we did not write).

Usage: pika_interop.py [URL] [--check NAME ...] [--list]

The URL comes from the command line, else from $AMQP_URL, else
amqp://guest:guest@127.0.0.1:5672/%2f. Every check is a function named
``check_*``; each prints one PASS or FAIL line, and the exit status is non-zero
when any check fails. The checks must pass against a real RabbitMQ: that is how
we know they encode RabbitMQ's behaviour. Every name is unique per run, and
whatever a check declares is deleted afterwards, so a shared RabbitMQ is fine.
"""

import argparse
import os
import signal
import sys
import threading
import time
import traceback
import uuid

import pika
import pika.exceptions as pex

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/%2f"
RUN_ID = uuid.uuid4().hex[:12]
CHECK_TIMEOUT_SECS = 30
CLEANUP_TIMEOUT_SECS = 10
WAIT_SECS = 5.0
SENTINEL = b"__end__"


class CheckTimeout(Exception):
    """A check (or its cleanup) took longer than its budget: the broker stopped answering."""


class CheckFailed(AssertionError):
    """A check's expectation was not met."""


def expect(cond, message):
    if not cond:
        raise CheckFailed(message)


def expect_eq(actual, expected, what):
    if actual != expected:
        raise CheckFailed(f"{what}: expected {expected!r}, got {actual!r}")


class Context:
    """What one check needs: connections to the broker and names to clean up afterwards."""

    def __init__(self, url, check_name):
        self.url = url
        self.check_name = check_name
        self.connections = []
        self.queues = []
        self.exchanges = []
        self.counter = 0

    def params(self):
        params = pika.URLParameters(self.url)
        params.connection_attempts = 1
        params.socket_timeout = 5
        params.stack_timeout = 10
        params.blocked_connection_timeout = 10
        params.client_properties = {"connection_name": f"pika-interop {RUN_ID} {self.check_name}"}
        return params

    def connect(self, params=None):
        conn = pika.BlockingConnection(params or self.params())
        self.connections.append(conn)
        return conn

    def name(self, kind):
        """A name unique to this run, check and call."""
        self.counter += 1
        return f"pika-interop.{RUN_ID}.{self.check_name}.{kind}{self.counter}"

    def queue(self, ch, kind="q", **kwargs):
        """Declares a queue with a unique name, to be deleted after the check."""
        name = self.name(kind)
        ch.queue_declare(name, **kwargs)
        self.queues.append(name)
        return name

    def exchange(self, ch, exchange_type, **kwargs):
        """Declares an exchange with a unique name, to be deleted after the check."""
        name = self.name(f"x-{exchange_type}-")
        ch.exchange_declare(name, exchange_type=exchange_type, **kwargs)
        self.exchanges.append(name)
        return name

    def cleanup(self):
        """Deletes what the check declared (on a fresh connection) and closes every connection."""
        problems = []
        if self.queues or self.exchanges:
            try:
                conn = pika.BlockingConnection(self.params())
                self.connections.append(conn)
                for kind, names in (("queue", self.queues), ("exchange", self.exchanges)):
                    for name in names:
                        ch = conn.channel()
                        try:
                            if kind == "queue":
                                ch.queue_delete(name)
                            else:
                                ch.exchange_delete(name)
                            ch.close()
                        except pex.ChannelClosedByBroker:
                            pass  # Already gone (a check may delete what it declared).
            except Exception as e:  # noqa: BLE001 - cleanup must never hide the check's result
                problems.append(f"cleanup: {type(e).__name__}: {e}")
        for conn in self.connections:
            try:
                if conn.is_open:
                    conn.close()
            except Exception:  # noqa: BLE001 - the connection may already be broken
                pass
        return problems


# ----------------------------------------------------------------------------------------------
# Helpers


def closed_by_broker(fn, *args, **kwargs):
    """Runs fn, which must make the broker close the channel; returns (reply_code, reply_text)."""
    try:
        fn(*args, **kwargs)
    except pex.ChannelClosedByBroker as e:
        return e.reply_code, e.reply_text
    raise CheckFailed(f"expected the broker to close the channel, but {fn.__name__} succeeded")


def expect_channel_error(code, text_prefix, fn, *args, **kwargs):
    reply_code, reply_text = closed_by_broker(fn, *args, **kwargs)
    expect(
        reply_code == code and reply_text.startswith(text_prefix),
        f"expected channel close {code} {text_prefix}..., got {reply_code} {reply_text!r}",
    )
    return reply_text


def consume_until_sentinel(conn, ch, queue, timeout=WAIT_SECS):
    """Consumes (auto-ack) until the sentinel arrives; returns the bodies before it, in order.

    The sentinel is published last on the same channel, so everything published before it to this
    queue has already been delivered when it arrives: the result is exact, no grace period needed.
    """
    got = []
    done = []

    def on_message(_ch, _method, _props, body):
        if body == SENTINEL:
            done.append(True)
        elif not done:
            got.append(body)

    tag = ch.basic_consume(queue, on_message, auto_ack=True)
    deadline = time.monotonic() + timeout
    while not done and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)
    ch.basic_cancel(tag)
    expect(done, f"queue {queue}: no sentinel within {timeout}s (got so far: {got!r})")
    return got


def publish_with_sentinels(ch, exchange, messages, queues):
    """Publishes (routing_key, body, headers) triples, then one sentinel to each queue directly."""
    for routing_key, body, headers in messages:
        props = pika.BasicProperties(headers=headers) if headers is not None else None
        ch.basic_publish(exchange, routing_key, body, properties=props)
    for q in queues:
        ch.basic_publish("", q, SENTINEL)


def message_count(ch, queue):
    """Ready messages in a queue (unacknowledged ones are not counted), by passive declare."""
    return ch.queue_declare(queue, passive=True).method.message_count


def get(ch, queue, auto_ack=False):
    method, props, body = ch.basic_get(queue, auto_ack=auto_ack)
    return method, props, body


def wait_for_count(ch, queue, expected, timeout=WAIT_SECS):
    deadline = time.monotonic() + timeout
    count = message_count(ch, queue)
    while count != expected and time.monotonic() < deadline:
        time.sleep(0.05)
        count = message_count(ch, queue)
    return count


# ----------------------------------------------------------------------------------------------
# Checks. Each takes a Context; the order here is the order they run in.


def check_connect(ctx):
    """Handshake; the capabilities pika relies on are advertised; channels open and close."""
    conn = ctx.connect()
    expect(conn.is_open, "connection is not open after the handshake")
    # pika reads these from server-properties.capabilities in connection.start; without
    # publisher_confirms *and* basic.nack, confirm_delivery() raises MethodNotImplemented.
    for capability, supported in (
        ("publisher_confirms", conn.publisher_confirms_supported),
        ("basic.nack", conn.basic_nack_supported),
        ("consumer_cancel_notify", conn.consumer_cancel_notify_supported),
        ("exchange_exchange_bindings", conn.exchange_exchange_bindings_supported),
    ):
        expect(supported, f"server-properties.capabilities lacks {capability!r}: true")
    ch = conn.channel()
    expect(ch.is_open, "channel is not open")
    ch.close()
    expect(ch.is_closed, "channel is not closed after channel.close")
    ch2 = conn.channel()
    expect(ch2.is_open, "second channel is not open")


def check_direct_exchange(ctx):
    """direct: exact routing-key match; one queue may have several keys; unmatched keys are dropped."""
    conn = ctx.connect()
    ch = conn.channel()
    x = ctx.exchange(ch, "direct")
    q1 = ctx.queue(ch)
    q2 = ctx.queue(ch)
    ch.queue_bind(q1, x, routing_key="k1")
    ch.queue_bind(q2, x, routing_key="k1")
    ch.queue_bind(q2, x, routing_key="k2")
    msgs = [("k1", b"m1", None), ("k2", b"m2", None), ("k3", b"m3", None), ("K1", b"m4", None)]
    publish_with_sentinels(ch, x, msgs, [q1, q2])
    expect_eq(consume_until_sentinel(conn, ch, q1), [b"m1"], f"direct: bodies in {q1} (bound k1)")
    expect_eq(
        consume_until_sentinel(conn, ch, q2), [b"m1", b"m2"], f"direct: bodies in {q2} (bound k1, k2)"
    )


def check_fanout_exchange(ctx):
    """fanout: every bound queue gets every message, whatever the routing key."""
    conn = ctx.connect()
    ch = conn.channel()
    x = ctx.exchange(ch, "fanout")
    q1 = ctx.queue(ch)
    q2 = ctx.queue(ch)
    ch.queue_bind(q1, x, routing_key="ignored")
    ch.queue_bind(q2, x)
    msgs = [("a", b"m1", None), ("", b"m2", None), ("zzz", b"m3", None)]
    publish_with_sentinels(ch, x, msgs, [q1, q2])
    for q in (q1, q2):
        expect_eq(consume_until_sentinel(conn, ch, q), [b"m1", b"m2", b"m3"], f"fanout: bodies in {q}")


def check_topic_exchange(ctx):
    """topic: '*' is exactly one word, '#' is zero or more words."""
    conn = ctx.connect()
    ch = conn.channel()
    x = ctx.exchange(ch, "topic")
    patterns = ["a.*", "a.#", "#", "*.b.#", "#.c", "a.*.c", "*"]
    queues = {}
    for p in patterns:
        q = ctx.queue(ch)
        ch.queue_bind(q, x, routing_key=p)
        queues[p] = q
    keys = ["a", "a.b", "a.b.c", "x.b", "a.x.y.c", "b.a"]
    msgs = [(k, k.encode(), None) for k in keys]
    publish_with_sentinels(ch, x, msgs, list(queues.values()))
    expected = {
        "a.*": [b"a.b"],
        "a.#": [b"a", b"a.b", b"a.b.c", b"a.x.y.c"],
        "#": [k.encode() for k in keys],
        "*.b.#": [b"a.b", b"a.b.c", b"x.b"],
        "#.c": [b"a.b.c", b"a.x.y.c"],
        "a.*.c": [b"a.b.c"],
        "*": [b"a"],
    }
    for p, q in queues.items():
        expect_eq(consume_until_sentinel(conn, ch, q), expected[p], f"topic: routing keys matched by {p!r}")


def check_headers_exchange(ctx):
    """headers: x-match all needs every bound header, x-match any needs one; the key is ignored."""
    conn = ctx.connect()
    ch = conn.channel()
    x = ctx.exchange(ch, "headers")
    q_all = ctx.queue(ch)
    q_any = ctx.queue(ch)
    ch.queue_bind(q_all, x, arguments={"x-match": "all", "h1": "v1", "h2": "v2"})
    ch.queue_bind(q_any, x, arguments={"x-match": "any", "h1": "v1", "h2": "v2"})
    msgs = [
        ("k", b"both", {"h1": "v1", "h2": "v2"}),
        ("", b"both+extra", {"h1": "v1", "h2": "v2", "h3": "v3"}),
        ("k", b"h1-only", {"h1": "v1"}),
        ("k", b"h2-only", {"h2": "v2", "other": "x"}),
        ("k", b"wrong-value", {"h1": "nope", "h2": "nope"}),
        ("k", b"no-headers", None),
    ]
    publish_with_sentinels(ch, x, msgs, [q_all, q_any])
    expect_eq(consume_until_sentinel(conn, ch, q_all), [b"both", b"both+extra"], "headers x-match=all")
    expect_eq(
        consume_until_sentinel(conn, ch, q_any),
        [b"both", b"both+extra", b"h1-only", b"h2-only"],
        "headers x-match=any",
    )


def check_default_exchange(ctx):
    """The default exchange routes by queue name; properties survive the trip."""
    conn = ctx.connect()
    ch = conn.channel()
    q = ctx.queue(ch)
    props = pika.BasicProperties(
        content_type="application/json",
        delivery_mode=2,
        correlation_id="corr-1",
        message_id="msg-1",
        headers={"x-int": 42, "x-str": "hello"},
    )
    ch.basic_publish("", q, b'{"hello": 1}', properties=props)
    ch.basic_publish("", q + ".missing", b"dropped")
    got = []
    tag = ch.basic_consume(q, lambda _c, m, p, b: got.append((m, p, b)), auto_ack=True)
    deadline = time.monotonic() + WAIT_SECS
    while not got and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)
    ch.basic_cancel(tag)
    expect(got, f"default exchange: nothing delivered from {q} within {WAIT_SECS}s")
    method, p, body = got[0]
    expect_eq(body, b'{"hello": 1}', "body")
    expect_eq(method.exchange, "", "delivery exchange")
    expect_eq(method.routing_key, q, "delivery routing key")
    expect_eq(method.redelivered, False, "redelivered flag of a first delivery")
    expect_eq(p.content_type, "application/json", "content_type")
    expect_eq(p.delivery_mode, 2, "delivery_mode")
    expect_eq(p.correlation_id, "corr-1", "correlation_id")
    expect_eq(p.message_id, "msg-1", "message_id")
    expect_eq(p.headers, {"x-int": 42, "x-str": "hello"}, "headers")


def check_basic_get(ctx):
    """basic.get: message_count is what remains; an empty queue answers get-empty (None)."""
    conn = ctx.connect()
    ch = conn.channel()
    ch.confirm_delivery()
    q = ctx.queue(ch)
    for body in (b"one", b"two"):
        ch.basic_publish("", q, body, properties=pika.BasicProperties(content_type="text/plain"))
    method, props, body = get(ch, q, auto_ack=True)
    expect(method is not None, "basic_get on a queue with 2 messages returned get-empty")
    expect_eq(body, b"one", "first basic_get body (FIFO)")
    expect_eq(method.message_count, 1, "message_count after the first get")
    expect_eq(method.redelivered, False, "redelivered flag")
    expect_eq(method.routing_key, q, "routing key")
    expect_eq(props.content_type, "text/plain", "content_type")
    method, _, body = get(ch, q, auto_ack=True)
    expect_eq(body, b"two", "second basic_get body")
    expect_eq(method.message_count, 0, "message_count after the second get")
    method, props, body = get(ch, q, auto_ack=True)
    expect_eq((method, props, body), (None, None, None), "basic_get on an empty queue")


def check_ack(ctx):
    """An acked message is gone: closing the channel does not bring it back."""
    conn = ctx.connect()
    ch = conn.channel()
    ch.confirm_delivery()
    q = ctx.queue(ch)
    ch.basic_publish("", q, b"a1")
    ch.basic_publish("", q, b"a2")
    ch.basic_publish("", q, b"a3")
    consumer = conn.channel()
    got = []
    consumer.basic_consume(q, lambda c, m, p, b: got.append(m), auto_ack=False)
    deadline = time.monotonic() + WAIT_SECS
    while len(got) < 3 and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)
    expect_eq(len(got), 3, "deliveries before acking")
    tags = [m.delivery_tag for m in got]
    expect_eq(tags, sorted(set(tags)), "delivery tags strictly increasing")
    consumer.basic_ack(got[0].delivery_tag)
    consumer.basic_ack(got[2].delivery_tag, multiple=True)  # Acks the second one too.
    consumer.close()
    expect_eq(wait_for_count(ch, q, 0), 0, "messages left after acking all and closing the channel")


def check_unacked_requeued_on_close(ctx):
    """Unacked deliveries go back to the queue, flagged redelivered, when the channel closes."""
    conn = ctx.connect()
    ch = conn.channel()
    ch.confirm_delivery()
    q = ctx.queue(ch)
    ch.basic_publish("", q, b"u1")
    consumer = conn.channel()
    method, _, body = get(consumer, q)
    expect_eq(body, b"u1", "body")
    consumer.close()
    expect_eq(wait_for_count(ch, q, 1), 1, "messages back in the queue after closing unacked")
    method, _, body = get(ch, q, auto_ack=True)
    expect_eq(body, b"u1", "body after requeue")
    expect_eq(method.redelivered, True, "redelivered flag after the channel closed unacked")


def check_nack_requeue(ctx):
    """nack with requeue: the message comes back flagged redelivered."""
    conn = ctx.connect()
    ch = conn.channel()
    ch.confirm_delivery()
    q = ctx.queue(ch)
    ch.basic_publish("", q, b"n1")
    ch.basic_publish("", q, b"n2")
    method, _, body = get(ch, q)
    expect_eq((body, method.redelivered), (b"n1", False), "first delivery (body, redelivered)")
    ch.basic_nack(method.delivery_tag, requeue=True)
    method, _, body = get(ch, q)
    expect(method is not None, "nothing to get after nack(requeue=True)")
    # RabbitMQ puts a requeued message back at its original position (the head here).
    expect_eq((body, method.redelivered), (b"n1", True), "after nack(requeue=True) (body, redelivered)")
    ch.basic_ack(method.delivery_tag)
    method, _, body = get(ch, q)
    expect_eq((body, method.redelivered), (b"n2", False), "the next message is untouched")
    ch.basic_ack(method.delivery_tag)


def check_nack_no_requeue(ctx):
    """nack without requeue: the message is dropped (no dead-letter exchange configured)."""
    conn = ctx.connect()
    ch = conn.channel()
    ch.confirm_delivery()
    q = ctx.queue(ch)
    ch.basic_publish("", q, b"gone")
    method, _, body = get(ch, q)
    expect_eq(body, b"gone", "body")
    ch.basic_nack(method.delivery_tag, requeue=False)
    expect_eq(get(ch, q), (None, None, None), "basic_get after nack(requeue=False)")
    ch.close()
    ch = conn.channel()
    expect_eq(message_count(ch, q), 0, "messages left after nack(requeue=False) and channel close")


def check_nack_multiple(ctx):
    """nack multiple=True with requeue returns every earlier unacked delivery too."""
    conn = ctx.connect()
    ch = conn.channel()
    ch.confirm_delivery()
    q = ctx.queue(ch)
    for b in (b"m1", b"m2", b"m3"):
        ch.basic_publish("", q, b)
    tags = [get(ch, q)[0].delivery_tag for _ in range(3)]
    ch.basic_nack(tags[1], multiple=True, requeue=True)  # m1, m2 back; m3 still unacked.
    expect_eq(wait_for_count(ch, q, 2), 2, "ready messages after nack(multiple, requeue)")
    ch.basic_ack(tags[2])
    bodies = []
    for _ in range(2):
        method, _, body = get(ch, q, auto_ack=True)
        expect_eq(method.redelivered, True, f"redelivered flag of {body!r}")
        bodies.append(body)
    expect_eq(bodies, [b"m1", b"m2"], "requeued messages in their original order")


def check_reject(ctx):
    """reject: requeue=True brings it back redelivered; requeue=False drops it."""
    conn = ctx.connect()
    ch = conn.channel()
    ch.confirm_delivery()
    q = ctx.queue(ch)
    ch.basic_publish("", q, b"r1")
    method, _, body = get(ch, q)
    ch.basic_reject(method.delivery_tag, requeue=True)
    method, _, body = get(ch, q)
    expect(method is not None, "nothing to get after reject(requeue=True)")
    expect_eq((body, method.redelivered), (b"r1", True), "after reject(requeue=True) (body, redelivered)")
    ch.basic_reject(method.delivery_tag, requeue=False)
    expect_eq(get(ch, q), (None, None, None), "basic_get after reject(requeue=False)")
    ch.close()
    ch = conn.channel()
    expect_eq(message_count(ch, q), 0, "messages left after reject(requeue=False) and channel close")


def check_prefetch_fairness(ctx):
    """prefetch_count=1, two consumers: never more than 1 unacked each; a non-acker gets exactly 1."""
    conn = ctx.connect()
    setup = conn.channel()
    q = ctx.queue(setup)
    n = 10
    slow_ch = conn.channel()
    fast_ch = conn.channel()
    slow_ch.basic_qos(prefetch_count=1)
    fast_ch.basic_qos(prefetch_count=1)
    slow, fast_pending, fast_done = [], [], []
    slow_ch.basic_consume(q, lambda c, m, p, b: slow.append(b), auto_ack=False)
    fast_ch.basic_consume(q, lambda c, m, p, b: fast_pending.append((m.delivery_tag, b)), auto_ack=False)
    pub = conn.channel()
    pub.confirm_delivery()
    for i in range(n):
        pub.basic_publish("", q, f"p{i}".encode())
    deadline = time.monotonic() + 3 * WAIT_SECS
    held_since = None
    while len(slow) + len(fast_done) < n and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.02)
        expect(len(slow) <= 1, f"consumer that never acks got {len(slow)} messages with prefetch 1")
        expect(len(fast_pending) <= 1, f"consumer has {len(fast_pending)} unacked with prefetch 1")
        if fast_pending:
            # Hold the delivery a little so that an over-eager broker would have time to send more.
            held_since = held_since or time.monotonic()
            if time.monotonic() - held_since >= 0.05:
                tag, body = fast_pending.pop()
                fast_ch.basic_ack(tag)
                fast_done.append(body)
                held_since = None
    # A little more time for any delivery that should not happen.
    conn.process_data_events(time_limit=0.2)
    expect_eq(len(slow), 1, "deliveries to the consumer that never acks")
    expect_eq(len(fast_pending), 0, "unacked deliveries left with the acking consumer")
    expect_eq(len(fast_done), n - 1, "deliveries to the acking consumer")
    expect_eq(
        sorted(slow + fast_done), sorted(f"p{i}".encode() for i in range(n)), "every message delivered once"
    )
    fast_ch.close()
    slow_ch.close()  # Requeues the one it held.
    expect_eq(wait_for_count(setup, q, 1), 1, "ready messages once the non-acking consumer closed")
    method, _, body = get(setup, q, auto_ack=True)
    expect_eq((body, method.redelivered), (slow[0], True), "requeued message (body, redelivered)")


def check_publisher_confirms(ctx):
    """confirm_delivery: publish returns once acked; a broker nack (reject-publish) raises NackError."""
    conn = ctx.connect()
    ch = conn.channel()
    ch.confirm_delivery()
    q = ctx.queue(ch)
    for i in range(20):
        result = ch.basic_publish("", q, f"c{i}".encode(), mandatory=True)
        expect(result is None, f"basic_publish with confirms returned {result!r}, expected None")
    expect_eq(message_count(ch, q), 20, "messages in the queue once all 20 publishes are confirmed")
    # Publishing to a queue that exists but routes nowhere without mandatory is still acked.
    ch.basic_publish("", q + ".nowhere", b"dropped")
    full = ctx.queue(ch, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    ch.basic_publish("", full, b"fits")
    try:
        ch.basic_publish("", full, b"overflows")
    except pex.NackError:
        pass  # pika lists only *returned* messages in NackError.messages: empty here.
    else:
        raise CheckFailed("publish to a full reject-publish queue was acked; expected NackError")
    expect(ch.is_open, "channel closed after a nack (it must stay open)")
    expect_eq(message_count(ch, full), 1, "messages in the full queue")


def check_mandatory_unroutable(ctx):
    """mandatory + unroutable: basic.return (312 NO_ROUTE); with confirms pika raises UnroutableError."""
    conn = ctx.connect()
    ch = conn.channel()
    x = ctx.exchange(ch, "direct")
    returned = []
    ch.add_on_return_callback(lambda c, m, p, b: returned.append((m, b)))
    ch.basic_publish(x, "nobody-bound", b"ret", mandatory=True)
    deadline = time.monotonic() + WAIT_SECS
    while not returned and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)
    expect(returned, "no basic.return for a mandatory unroutable publish (no confirms)")
    method, body = returned[0]
    expect_eq((method.reply_code, method.reply_text), (312, "NO_ROUTE"), "basic.return reply")
    expect_eq((method.exchange, method.routing_key, body), (x, "nobody-bound", b"ret"), "returned message")

    cch = conn.channel()
    cch.confirm_delivery()
    try:
        cch.basic_publish(x, "nobody-bound", b"unroutable", mandatory=True)
    except pex.UnroutableError as e:
        expect_eq([m.body for m in e.messages], [b"unroutable"], "UnroutableError.messages bodies")
        expect_eq(e.messages[0].method.reply_code, 312, "returned reply_code")
    else:
        raise CheckFailed("mandatory publish of an unroutable message did not raise UnroutableError")
    expect(cch.is_open, "channel closed after an unroutable return (it must stay open)")
    # Not mandatory: silently dropped, and confirmed.
    cch.basic_publish(x, "nobody-bound", b"dropped", mandatory=False)


def check_error_queue_not_found(ctx):
    """Passive declare of a missing queue closes the channel: 404 NOT_FOUND; the connection lives."""
    conn = ctx.connect()
    ch = conn.channel()
    missing = ctx.name("missing")
    expect_channel_error(404, "NOT_FOUND", ch.queue_declare, missing, passive=True)
    expect(ch.is_closed, "channel still open after 404")
    expect(conn.is_open, "a channel error closed the whole connection")
    ch2 = conn.channel()
    ch2.queue_declare("", exclusive=True)  # The connection still works.


def check_error_inequivalent_durable(ctx):
    """Redeclaring a queue with a different durable flag: 406 PRECONDITION_FAILED."""
    conn = ctx.connect()
    ch = conn.channel()
    q = ctx.queue(ch, durable=False)
    ch.queue_declare(q, durable=False)  # The same declaration again is fine.
    text = expect_channel_error(406, "PRECONDITION_FAILED", ch.queue_declare, q, durable=True)
    expect("durable" in text, f"406 reply text does not mention 'durable': {text!r}")
    ch = conn.channel()
    x = ctx.exchange(ch, "direct")
    expect_channel_error(406, "PRECONDITION_FAILED", ch.exchange_declare, x, exchange_type="fanout")


def check_error_exclusive_locked(ctx):
    """An exclusive queue used from another connection: 405 RESOURCE_LOCKED."""
    owner = ctx.connect()
    och = owner.channel()
    q = ctx.name("excl")
    och.queue_declare(q, exclusive=True)
    other = ctx.connect()
    expect_channel_error(405, "RESOURCE_LOCKED", other.channel().queue_declare, q, exclusive=True)
    expect_channel_error(405, "RESOURCE_LOCKED", other.channel().basic_consume, q, lambda *a: None)
    expect_channel_error(405, "RESOURCE_LOCKED", other.channel().basic_get, q)
    # The owner can still use it, and it disappears with its owner.
    och.basic_publish("", q, b"mine")
    owner.close()
    expect_channel_error(404, "NOT_FOUND", other.channel().queue_declare, q, passive=True)


def check_error_publish_missing_exchange(ctx):
    """Publishing to a missing exchange: 404 NOT_FOUND (asynchronously without confirms)."""
    conn = ctx.connect()
    ch = conn.channel()
    missing = ctx.name("missing-x")

    def publish_then_sync():
        ch.basic_publish(missing, "k", b"x")
        # basic.publish has no reply: the close arrives later, on the next synchronous call.
        ch.queue_declare("", exclusive=True)

    text = expect_channel_error(404, "NOT_FOUND", publish_then_sync)
    expect(missing in text, f"404 reply text does not name the exchange: {text!r}")
    cch = conn.channel()
    cch.confirm_delivery()
    expect_channel_error(404, "NOT_FOUND", cch.basic_publish, missing, "k", b"x")
    expect(conn.is_open, "a channel error closed the whole connection")


def check_error_reserved_amq_prefix(ctx):
    """Declaring an exchange or queue named amq.*: 403 ACCESS_REFUSED."""
    conn = ctx.connect()
    expect_channel_error(
        403, "ACCESS_REFUSED", conn.channel().exchange_declare, f"amq.interop-{RUN_ID}", exchange_type="direct"
    )
    expect_channel_error(403, "ACCESS_REFUSED", conn.channel().queue_declare, f"amq.interop-{RUN_ID}")
    # Passive declares of the predeclared exchanges are fine.
    ch = conn.channel()
    for name in ("amq.direct", "amq.fanout", "amq.topic", "amq.headers"):
        ch.exchange_declare(name, passive=True)


def check_error_wrong_password(ctx):
    """A wrong password fails the handshake: ProbableAuthenticationError or AuthenticationError."""
    params = ctx.params()
    user = params.credentials.username
    params.credentials = pika.PlainCredentials(user, f"wrong-{RUN_ID}")
    try:
        ctx.connect(params)
    except (pex.ProbableAuthenticationError, pex.AuthenticationError) as e:
        # pika raises ProbableAuthenticationError for *any* close while in connection.start/start-ok
        # (AuthenticationError only when no offered mechanism fits). pika announces the
        # authentication_failure_close capability, so RabbitMQ sends connection.close 403 first
        # instead of just dropping the socket; the reason travels inside the exception's text.
        expect(
            "403" in str(e) and "ACCESS_REFUSED" in str(e),
            f"wrong password: expected connection.close 403 ACCESS_REFUSED, got {type(e).__name__}: {e}",
        )
    except pex.AMQPConnectionError as e:
        raise CheckFailed(f"wrong password: expected an authentication error, got {type(e).__name__}: {e!r}")
    else:
        raise CheckFailed("connected with a wrong password")
    # And the right one still works afterwards.
    ctx.connect()


CHECKS = [(name[len("check_") :], fn) for name, fn in list(globals().items()) if name.startswith("check_")]


# ----------------------------------------------------------------------------------------------
# Runner


def _on_alarm(_signum, _frame):
    raise CheckTimeout("timed out")


def run_check(url, name, fn):
    """Runs one check with a time limit; returns None on success or the failure message."""
    ctx = Context(url, name)
    failure = None
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(CHECK_TIMEOUT_SECS)
    try:
        fn(ctx)
    except CheckFailed as e:
        failure = str(e)
    except CheckTimeout:
        failure = f"no answer from the broker within {CHECK_TIMEOUT_SECS}s"
    except Exception as e:  # noqa: BLE001 - any error is this check's failure, not the run's
        failure = f"unexpected {type(e).__name__}: {e!r}"
        if not type(e).__module__.startswith("pika."):
            failure += "\n" + traceback.format_exc()  # A bug in the check itself, most likely.
    finally:
        signal.alarm(0)
    signal.alarm(CLEANUP_TIMEOUT_SECS)
    try:
        problems = ctx.cleanup()
    except CheckTimeout:
        problems = [f"cleanup: no answer within {CLEANUP_TIMEOUT_SECS}s"]
    finally:
        signal.alarm(0)
    for p in problems:
        print(f"      warning: {p}")
    return failure


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", nargs="?", default=os.environ.get("AMQP_URL") or DEFAULT_URL)
    parser.add_argument("--check", action="append", default=[], help="run only this check (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the checks and exit")
    args = parser.parse_args()
    if args.list:
        for name, fn in CHECKS:
            print(f"{name}: {fn.__doc__}")
        return 0
    unknown = set(args.check) - {name for name, _ in CHECKS}
    if unknown:
        parser.error(f"unknown check(s): {', '.join(sorted(unknown))}")
    selected = [(n, f) for n, f in CHECKS if not args.check or n in args.check]

    shown = pika.URLParameters(args.url)
    print(
        f"pika {pika.__version__} against amqp://{shown.credentials.username}:***@{shown.host}:{shown.port}"
        f" vhost={shown.virtual_host!r} (run {RUN_ID})",
        flush=True,
    )
    failed = []
    for i, (name, fn) in enumerate(selected):
        started = time.monotonic()
        failure = run_check(args.url, name, fn)
        elapsed = time.monotonic() - started
        if failure is None:
            print(f"PASS {name} ({elapsed:.2f}s)", flush=True)
            continue
        failed.append(name)
        print(f"FAIL {name} ({elapsed:.2f}s): {failure}", flush=True)
        if name == "connect":
            for rest, _ in selected[i + 1 :]:
                failed.append(rest)
                print(f"FAIL {rest}: not run, cannot connect", flush=True)
            break
    passed = len(selected) - len(failed)
    print(f"{passed} passed, {len(failed)} failed" + (f": {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    # Threads are not used; the alarm-based time limit relies on running in the main thread.
    assert threading.current_thread() is threading.main_thread()
    sys.exit(main())
