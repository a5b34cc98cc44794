#!/usr/bin/env python3
"""Interoperability checks with aio-pika (an asyncio client we did not write, built on aiormq).

Usage: aio_pika_interop.py [URL] [--check NAME ...] [--list]

The URL comes from the command line, else from $AMQP_URL, else
amqp://guest:guest@127.0.0.1:5672/%2f. Every check is a coroutine named
``check_*``; each prints one PASS or FAIL line, and the exit status is non-zero
when any check fails. The checks must pass against a real RabbitMQ: that is how
we know they encode RabbitMQ's behaviour. Every name is unique per run, and
whatever a check declares is deleted afterwards, so a shared RabbitMQ is fine.
"""

import argparse
import asyncio
import os
import sys
import time
import traceback
import uuid
from importlib.metadata import version

import aio_pika
import aiormq
import aiormq.exceptions as aex
from aio_pika import ExchangeType, Message
from yarl import URL

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/%2f"
RUN_ID = uuid.uuid4().hex[:12]
CHECK_TIMEOUT_SECS = 30
CLEANUP_TIMEOUT_SECS = 10
WAIT_SECS = 5.0
# Connecting may take longer on a loaded machine (CI shares its cores with the builds).
CONNECT_TIMEOUT_SECS = 15.0
REPLY_TO = "amq.rabbitmq.reply-to"


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

    async def connect(self, url=None):
        conn = await aio_pika.connect(
            url or self.url,
            timeout=CONNECT_TIMEOUT_SECS,
            client_properties={"connection_name": f"aio-pika-interop {RUN_ID} {self.check_name}"},
        )
        self.connections.append(conn)
        return conn

    async def channel(self, **kwargs):
        """A channel on a fresh connection (publisher confirms on, as aio-pika's default)."""
        conn = await self.connect()
        return await conn.channel(**kwargs)

    def name(self, kind):
        """A name unique to this run, check and call."""
        self.counter += 1
        return f"aio-pika-interop.{RUN_ID}.{self.check_name}.{kind}{self.counter}"

    async def queue(self, ch, kind="q", **kwargs):
        """Declares a queue with a unique name, to be deleted after the check."""
        name = self.name(kind)
        q = await ch.declare_queue(name, **kwargs)
        self.queues.append(name)
        return q

    async def exchange(self, ch, exchange_type, **kwargs):
        """Declares an exchange with a unique name, to be deleted after the check."""
        name = self.name(f"x-{exchange_type.value}-")
        x = await ch.declare_exchange(name, exchange_type, **kwargs)
        self.exchanges.append(name)
        return x

    async def cleanup(self):
        """Deletes what the check declared (on a fresh connection) and closes every connection."""
        problems = []
        if self.queues or self.exchanges:
            try:
                conn = await self.connect()
                for name in self.queues:
                    ch = await conn.channel()
                    try:
                        await ch.queue_delete(name)
                        await ch.close()
                    except aex.ChannelClosed:
                        pass  # Already gone (a check may delete what it declared).
                for name in self.exchanges:
                    ch = await conn.channel()
                    try:
                        await ch.exchange_delete(name)
                        await ch.close()
                    except aex.ChannelClosed:
                        pass
            except Exception as e:  # noqa: BLE001 - cleanup must never hide the check's result
                problems.append(f"cleanup: {type(e).__name__}: {e}")
        for conn in self.connections:
            try:
                await conn.close()
            except Exception:  # noqa: BLE001 - the connection may already be broken
                pass
        return problems


# ----------------------------------------------------------------------------------------------
# Helpers


async def get(queue, no_ack=False, timeout=WAIT_SECS):
    """The next message of `queue` by basic.get, polling until one is there (None after timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        msg = await queue.get(no_ack=no_ack, fail=False)
        if msg is not None or time.monotonic() >= deadline:
            return msg
        await asyncio.sleep(0.05)


async def drain(queue):
    """Every message ready in `queue` now, acknowledged, as bodies in order."""
    bodies = []
    while (msg := await queue.get(no_ack=True, fail=False)) is not None:
        bodies.append(msg.body)
    return bodies


async def ready_count(ch, name):
    """Ready messages in a queue (unacknowledged ones are not counted), by passive declare."""
    q = await ch.declare_queue(name, passive=True)
    return q.declaration_result.message_count


async def wait_for_count(ch, name, expected, timeout=WAIT_SECS):
    deadline = time.monotonic() + timeout
    count = await ready_count(ch, name)
    while count != expected and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        count = await ready_count(ch, name)
    return count


async def expect_channel_error(exc_class, text_prefix, coro):
    """Awaits coro, which must make the broker close the channel with exc_class's reply code."""
    try:
        await coro
    except exc_class as e:
        text = str(e.args[0]) if e.args else ""
        expect(text.startswith(text_prefix), f"expected {text_prefix}..., got {text!r}")
        return text
    raise CheckFailed(f"expected {exc_class.__name__} ({text_prefix}), but the call succeeded")


async def route(ctx, exchange_type, bindings, publishes, **declare):
    """Declares an exchange of exchange_type and one queue per binding list; publishes
    (routing_key, body, headers) triples; returns each queue's bodies in order."""
    ch = await ctx.channel()
    x = await ctx.exchange(ch, exchange_type, **declare)
    queues = []
    for keys in bindings:
        q = await ctx.queue(ch, exclusive=True)
        for key, args in keys:
            await q.bind(x, routing_key=key, arguments=args)
        queues.append(q)
    for key, body, headers in publishes:
        await x.publish(Message(body, headers=headers), routing_key=key)  # Confirmed: routed now.
    return [await drain(q) for q in queues]


# ----------------------------------------------------------------------------------------------
# Checks. Each takes a Context; the order here is the order they run in.


async def check_connect(ctx):
    """Handshake; server properties name the capabilities aiormq relies on; channels open and close."""
    conn = await ctx.connect()
    caps = conn.transport.connection.server_capabilities
    for capability in ("publisher_confirms", "basic.nack", "consumer_cancel_notify"):
        expect(caps.get(capability) is True, f"server-properties.capabilities lacks {capability!r}: true")
    ch = await conn.channel()
    await ch.close()
    expect(ch.is_closed, "channel is not closed after channel.close")
    ch2 = await conn.channel()
    expect(not ch2.is_closed, "second channel is not open")


async def check_direct_exchange(ctx):
    """direct: exact routing-key match; one queue may have several keys; unmatched keys are dropped."""
    got = await route(
        ctx,
        ExchangeType.DIRECT,
        [[("a", None), ("b", None)], [("b", None)]],
        [("a", b"1", None), ("b", b"2", None), ("c", b"3", None)],
    )
    expect_eq(got, [[b"1", b"2"], [b"2"]], "direct routing")


async def check_fanout_exchange(ctx):
    """fanout: every bound queue gets every message, whatever the routing key."""
    got = await route(ctx, ExchangeType.FANOUT, [[("", None)], [("x", None)]], [("k", b"1", None), ("", b"2", None)])
    expect_eq(got, [[b"1", b"2"], [b"1", b"2"]], "fanout routing")


async def check_topic_exchange(ctx):
    """topic: * matches one word, # zero or more."""
    got = await route(
        ctx,
        ExchangeType.TOPIC,
        [[("log.*", None)], [("log.#", None)], [("#.error", None)]],
        [("log.info", b"1", None), ("log.db.error", b"2", None), ("log", b"3", None), ("error", b"4", None)],
    )
    expect_eq(got, [[b"1"], [b"1", b"2", b"3"], [b"2", b"4"]], "topic routing")


async def check_headers_exchange(ctx):
    """headers: x-match all needs every header, any needs one; x-* keys are not compared."""
    got = await route(
        ctx,
        ExchangeType.HEADERS,
        [[("", {"x-match": "all", "a": "1", "b": "2"})], [("", {"x-match": "any", "a": "1", "b": "2"})]],
        [("", b"both", {"a": "1", "b": "2"}), ("", b"one", {"a": "1"}), ("", b"none", {"c": "3"})],
    )
    expect_eq(got, [[b"both"], [b"both", b"one"]], "headers routing")


async def check_ack_nack_reject(ctx):
    """ack removes; nack/reject with requeue put back (redelivered); without requeue drop."""
    ch = await ctx.channel()
    q = await ctx.queue(ch, exclusive=True)
    for body in (b"ack", b"nack", b"reject", b"nack-drop", b"reject-drop"):
        await ch.default_exchange.publish(Message(body), routing_key=q.name)
    await (await get(q)).ack()
    m = await get(q)
    expect_eq(m.body, b"nack", "second message")
    await m.nack(requeue=True)
    m = await get(q)
    expect_eq((m.body, m.redelivered), (b"nack", True), "nacked message back, redelivered")
    await m.ack()
    m = await get(q)
    await m.reject(requeue=True)
    m = await get(q)
    expect_eq((m.body, m.redelivered), (b"reject", True), "rejected message back, redelivered")
    await m.ack()
    await (await get(q)).nack(requeue=False)
    await (await get(q)).reject(requeue=False)
    expect_eq(await drain(q), [], "queue after acks and dropping nack/reject")


async def check_prefetch(ctx):
    """basic.qos prefetch_count=2: a consumer holds at most 2 unacked deliveries."""
    ch = await ctx.channel()
    q = await ctx.queue(ch, exclusive=True)
    for i in range(5):
        await ch.default_exchange.publish(Message(str(i).encode()), routing_key=q.name)
    await ch.set_qos(prefetch_count=2)
    held = []
    first_two = asyncio.Event()

    async def on_message(message):
        held.append(message)
        if len(held) == 2:
            first_two.set()

    await q.consume(on_message)
    await asyncio.wait_for(first_two.wait(), WAIT_SECS)
    await asyncio.sleep(0.3)
    expect_eq([m.body for m in held], [b"0", b"1"], "deliveries while two are unacked")
    await held[0].ack()
    deadline = time.monotonic() + WAIT_SECS
    while len(held) < 3 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    expect_eq([m.body for m in held], [b"0", b"1", b"2"], "deliveries after one ack")


async def check_publisher_confirms(ctx):
    """With confirms, every publish resolves to basic.ack, including to an exchange with no queue."""
    ch = await ctx.channel(publisher_confirms=True)
    q = await ctx.queue(ch, exclusive=True)
    x = await ctx.exchange(ch, ExchangeType.FANOUT)
    for i in range(20):
        confirmation = await ch.default_exchange.publish(Message(str(i).encode()), routing_key=q.name)
        expect(isinstance(confirmation, aiormq.spec.Basic.Ack), f"publish {i}: expected basic.ack, got {confirmation!r}")
    # aio-pika publishes with mandatory=True unless told otherwise (which would return it).
    confirmation = await x.publish(Message(b"nowhere"), routing_key="", mandatory=False)
    expect(isinstance(confirmation, aiormq.spec.Basic.Ack), f"unrouted publish: expected basic.ack, got {confirmation!r}")
    expect_eq(await wait_for_count(ch, q.name, 20), 20, "messages in the queue")


async def check_mandatory_return(ctx):
    """A mandatory unroutable publish comes back: basic.return 312 NO_ROUTE, then the confirm."""
    conn = await ctx.connect()
    ch = await conn.channel(publisher_confirms=True, on_return_raises=True)
    key = ctx.name("nowhere")
    try:
        await ch.default_exchange.publish(Message(b"lost"), routing_key=key, mandatory=True)
    except aex.PublishError as e:
        expect_eq((e.frame.reply_code, e.frame.reply_text), (312, "NO_ROUTE"), "basic.return")
        expect_eq(e.message.body, b"lost", "returned body")
    else:
        raise CheckFailed("mandatory unroutable publish was not returned")
    # Without on_return_raises the returned message reaches the return callbacks.
    ch2 = await conn.channel(publisher_confirms=True)
    returned = asyncio.get_running_loop().create_future()
    ch2.return_callbacks.add(lambda _ch, message: returned.done() or returned.set_result(message))
    await ch2.default_exchange.publish(Message(b"back"), routing_key=key, mandatory=True)
    message = await asyncio.wait_for(returned, WAIT_SECS)
    expect_eq(message.body, b"back", "returned body")


async def check_transactions(ctx):
    """tx.select; published messages appear on commit only, and vanish on rollback."""
    ch = await ctx.channel(publisher_confirms=False)
    q = await ctx.queue(ch)
    observer = await ctx.channel()
    tx = ch.transaction()
    await tx.select()
    await ch.default_exchange.publish(Message(b"rolled back"), routing_key=q.name)
    await tx.rollback()
    await ch.default_exchange.publish(Message(b"committed"), routing_key=q.name)
    expect_eq(await ready_count(observer, q.name), 0, "messages visible before commit")
    await tx.commit()
    expect_eq(await wait_for_count(observer, q.name, 1), 1, "messages after commit")
    expect_eq(await drain(q), [b"committed"], "bodies after commit")


async def check_exclusive_and_auto_delete(ctx):
    """An exclusive queue is locked to its connection (405 elsewhere) and goes with it; an
    auto-delete queue goes with its last consumer."""
    conn = await ctx.connect()
    ch = await conn.channel()
    excl = await ctx.queue(ch, exclusive=True)
    auto = await ctx.queue(ch, auto_delete=True)
    tag = await auto.consume(lambda m: None, no_ack=True)
    same_conn = await conn.channel()
    await same_conn.declare_queue(excl.name, passive=True)
    await auto.cancel(tag)
    await expect_channel_error(aex.ChannelNotFoundEntity, "NOT_FOUND", same_conn.declare_queue(auto.name, passive=True))
    other = await ctx.channel()
    await expect_channel_error(aex.ChannelLockedResource, "RESOURCE_LOCKED", other.declare_queue(excl.name, passive=True))
    await conn.close()
    other = await ctx.channel()
    await expect_channel_error(aex.ChannelNotFoundEntity, "NOT_FOUND", other.declare_queue(excl.name, passive=True))


async def check_ttl_dead_letter(ctx):
    """Queue TTL and per-message expiration dead-letter to the DLX with x-death reason expired."""
    ch = await ctx.channel()
    dlq = await ctx.queue(ch, "dlq")
    q = await ctx.queue(
        ch,
        arguments={"x-message-ttl": 200, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq.name},
    )
    await ch.default_exchange.publish(Message(b"queue-ttl"), routing_key=q.name)
    await ch.default_exchange.publish(Message(b"message-ttl", expiration=0.05), routing_key=q.name)
    got = []
    deadline = time.monotonic() + WAIT_SECS
    while len(got) < 2 and time.monotonic() < deadline:
        m = await get(dlq, no_ack=True, timeout=0.2)
        if m is not None:
            got.append(m)
    expect_eq(sorted(m.body for m in got), [b"message-ttl", b"queue-ttl"], "dead-lettered bodies")
    for m in got:
        death = (m.headers or {}).get("x-death")
        expect(death, f"{m.body!r}: no x-death header")
        expect_eq((death[0]["reason"], death[0]["queue"]), ("expired", q.name), f"{m.body!r} x-death")
    # A rejected message dead-letters too, with reason rejected.
    await ch.default_exchange.publish(Message(b"rejected"), routing_key=q.name)
    await (await get(q)).reject(requeue=False)
    m = await get(dlq, no_ack=True)
    expect(m is not None, "the rejected message was not dead-lettered")
    expect_eq(m.headers["x-death"][0]["reason"], "rejected", "x-death reason")


async def check_large_message(ctx):
    """A 1 MiB body (split over many frames both ways) round-trips byte for byte."""
    ch = await ctx.channel()
    q = await ctx.queue(ch, exclusive=True)
    body = bytes((i * 7 + 3) % 256 for i in range(1024 * 1024))
    await ch.default_exchange.publish(Message(body), routing_key=q.name)
    m = await get(q, no_ack=True)
    expect(m is not None and m.body == body, f"1 MiB body did not round-trip ({len(m.body) if m else None} bytes)")


async def check_many_channels(ctx):
    """100 channels on one connection, each publishing to and reading from its own queue."""
    conn = await ctx.connect()

    async def one(i):
        ch = await conn.channel()
        q = await ch.declare_queue(exclusive=True)
        await ch.default_exchange.publish(Message(str(i).encode()), routing_key=q.name)
        m = await get(q, no_ack=True)
        return m.body if m else None

    got = await asyncio.gather(*(one(i) for i in range(100)))
    expect_eq(got, [str(i).encode() for i in range(100)], "bodies per channel")


async def check_consumer_cancel_notification(ctx):
    """Deleting a queue under a consumer sends basic.cancel to it (consumer_cancel_notify)."""
    ch = await ctx.channel()
    q = await ctx.queue(ch)
    underlay = await ch.get_underlay_channel()
    cancelled = asyncio.get_running_loop().create_future()
    underlay.on_consumer_cancel_callbacks.add(lambda frame: cancelled.done() or cancelled.set_result(frame))
    tag = await q.consume(lambda m: None, no_ack=True)
    other = await ctx.channel()
    await other.queue_delete(q.name)
    frame = await asyncio.wait_for(cancelled, WAIT_SECS)
    expect_eq(frame.consumer_tag, tag, "cancelled consumer tag")
    # The channel is still usable.
    await ch.declare_queue(exclusive=True)


async def check_direct_reply_to(ctx):
    """RPC over amq.rabbitmq.reply-to: the reply reaches the requester without a reply queue."""
    server_ch = await ctx.channel()
    requests = await ctx.queue(server_ch, exclusive=True)

    async def serve(message):
        async with message.process():
            await server_ch.default_exchange.publish(
                Message(b"re: " + message.body, correlation_id=message.correlation_id),
                routing_key=message.reply_to,
            )

    await requests.consume(serve)
    client_ch = await ctx.channel()
    underlay = await client_ch.get_underlay_channel()
    reply = asyncio.get_running_loop().create_future()

    async def on_reply(message):
        if not reply.done():
            reply.set_result(message)

    await underlay.basic_consume(REPLY_TO, on_reply, no_ack=True)
    await client_ch.default_exchange.publish(
        Message(b"ping", reply_to=REPLY_TO, correlation_id="c-1"), routing_key=requests.name
    )
    message = await asyncio.wait_for(reply, WAIT_SECS)
    expect_eq((message.body, message.header.properties.correlation_id), (b"re: ping", "c-1"), "reply")
    expect(message.delivery.routing_key.startswith(REPLY_TO), f"reply routing key {message.delivery.routing_key!r}")


async def check_error_not_found(ctx):
    """Passive declare of a missing queue: 404 NOT_FOUND; publish to a missing exchange: 404."""
    ch = await ctx.channel()
    await expect_channel_error(
        aex.ChannelNotFoundEntity, "NOT_FOUND - no queue", ch.declare_queue(ctx.name("missing"), passive=True)
    )
    ch = await ctx.channel()
    missing = ctx.name("missing-x")
    text = await expect_channel_error(
        aex.ChannelNotFoundEntity,
        "NOT_FOUND - no exchange",
        (await ch.get_underlay_channel()).basic_publish(b"x", exchange=missing, routing_key="k"),
    )
    expect(missing in text, f"404 text names the exchange: {text!r}")


async def check_error_precondition_failed(ctx):
    """Redeclaring a queue with another durable flag: 406 PRECONDITION_FAILED (inequivalent arg)."""
    ch = await ctx.channel()
    q = await ctx.queue(ch, durable=False)
    ch2 = await ctx.channel()
    await expect_channel_error(
        aex.ChannelPreconditionFailed,
        "PRECONDITION_FAILED - inequivalent arg 'durable'",
        ch2.declare_queue(q.name, durable=True),
    )


async def check_error_resource_locked(ctx):
    """Another connection's exclusive queue: 405 RESOURCE_LOCKED."""
    ch = await ctx.channel()
    q = await ctx.queue(ch, exclusive=True)
    other = await ctx.channel()
    await expect_channel_error(
        aex.ChannelLockedResource, "RESOURCE_LOCKED", other.declare_queue(q.name, exclusive=True)
    )


async def check_error_wrong_password(ctx):
    """A wrong password fails the handshake with 403 ACCESS_REFUSED; the right one still works."""
    url = URL(ctx.url).with_password(f"wrong-{RUN_ID}")
    try:
        await ctx.connect(str(url))
    except (aex.ProbableAuthenticationError, aex.AuthenticationError) as e:
        expect("ACCESS_REFUSED" in str(e.args), f"expected 403 ACCESS_REFUSED, got {e!r}")
    else:
        raise CheckFailed("connected with a wrong password")
    await ctx.connect()


CHECKS = [(name[len("check_") :], fn) for name, fn in list(globals().items()) if name.startswith("check_")]


# ----------------------------------------------------------------------------------------------
# Runner


async def run_check(url, name, fn):
    """Runs one check with a time limit; returns None on success or the failure message."""
    ctx = Context(url, name)
    failure = None
    try:
        await asyncio.wait_for(fn(ctx), CHECK_TIMEOUT_SECS)
    except CheckFailed as e:
        failure = str(e)
    except asyncio.TimeoutError:
        failure = f"no answer from the broker within {CHECK_TIMEOUT_SECS}s"
    except Exception as e:  # noqa: BLE001 - any error is this check's failure, not the run's
        failure = f"unexpected {type(e).__name__}: {e!r}"
        if not type(e).__module__.startswith(("aiormq", "aio_pika")):
            failure += "\n" + traceback.format_exc()  # A bug in the check itself, most likely.
    try:
        problems = await asyncio.wait_for(ctx.cleanup(), CLEANUP_TIMEOUT_SECS)
    except asyncio.TimeoutError:
        problems = [f"cleanup: no answer within {CLEANUP_TIMEOUT_SECS}s"]
    for p in problems:
        print(f"      warning: {p}")
    return failure


async def run(url, selected):
    shown = URL(url)
    print(
        f"aio-pika {version('aio-pika')} (aiormq {version('aiormq')}) against"
        f" amqp://{shown.user}:***@{shown.host}:{shown.port} vhost={shown.path[1:] or '/'!r} (run {RUN_ID})",
        flush=True,
    )
    failed = []
    for i, (name, fn) in enumerate(selected):
        started = time.monotonic()
        failure = await run_check(url, name, fn)
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
    return asyncio.run(run(args.url, selected))


if __name__ == "__main__":
    sys.exit(main())
