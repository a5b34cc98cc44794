//! Ordered partitions: 10,000 messages over 100 keys, 4 partitions, two consumer processes, the
//! active one killed (SIGKILL) midway; each key's messages are handled in order and every message
//! is handled. Plus the in-process checks that the partition of a key is stable and spreads keys.
//!
//! What "in order" means with at-least-once delivery, exactly as `check_order` asserts it: for
//! each key, list its handlings as they happened (process A's, then B's: B only becomes the
//! active consumer of a partition once A is dead). That list starts at 0 and each next number is
//! the previous plus one, except at the one point where B takes over from A: there B may start
//! again at or before A's last number, with a message the broker marks redelivered (A handled it
//! but its ack never reached the broker), and goes on plus one from there. So no message is ever
//! handled while an earlier one of its key is still unhandled, and the only repeats are the
//! handled-but-unacked messages of the killed process, re-handled in order.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use amqp_core::{ConnectionFactory, Partitions, Template};
use tests::process::{Event, Process, drain};
use tests::{TestBroker, conformance, unique};
use tokio::sync::mpsc::unbounded_channel;

const KEYS: u32 = 100;
const PER_KEY: u32 = 100;
const PARTITIONS: u16 = 4;
const PREFETCH: u16 = 20;
/// Process A is killed once it has handled this many messages.
const KILL_AFTER: usize = 3_000;

/// One handling, as a consumer process printed it.
#[derive(Clone, Debug)]
struct Handled {
    process: &'static str,
    queue: String,
    seq: u32,
    redelivered: bool,
}

fn parse(process: &'static str, line: &str) -> Option<(String, Handled)> {
    let mut parts = line.strip_prefix("handled ")?.split(' ');
    let queue = parts.next()?.to_owned();
    let key = parts.next()?.to_owned();
    let seq = parts.next()?.parse().ok()?;
    let redelivered = parts.next()? == "1";
    Some((
        key,
        Handled {
            process,
            queue,
            seq,
            redelivered,
        },
    ))
}

/// The order rule of the module docs, for one key's handlings (A's, then B's).
fn check_order(key: &str, handled: &[Handled]) -> Result<(), String> {
    let first = handled.first().ok_or(format!("{key}: never handled"))?;
    if first.seq != 0 {
        return Err(format!("{key}: first handled {first:?}, not 0"));
    }
    let mut takeovers = 0;
    for pair in handled.windows(2) {
        let (prev, next) = (&pair[0], &pair[1]);
        if next.seq == prev.seq + 1 {
            continue;
        }
        let takeover = prev.process != next.process;
        if next.seq <= prev.seq && takeover && next.redelivered {
            takeovers += 1;
            continue;
        }
        return Err(format!(
            "{key}: {next:?} came after {prev:?}; the handlings were {:?}",
            handled
                .iter()
                .map(|h| (h.process, h.seq))
                .collect::<Vec<_>>()
        ));
    }
    if takeovers > 1 {
        return Err(format!("{key}: went back {takeovers} times"));
    }
    let last = handled.iter().map(|h| h.seq).max().unwrap_or(0);
    if last != PER_KEY - 1 {
        return Err(format!("{key}: handled up to {last}, not {}", PER_KEY - 1));
    }
    let queues: std::collections::BTreeSet<_> = handled.iter().map(|h| &h.queue).collect();
    if queues.len() != 1 {
        return Err(format!("{key}: handled from several queues {queues:?}"));
    }
    Ok(())
}

async fn order_holds_when_a_consumer_process_is_killed(b: TestBroker) {
    let queue = unique("patterns.partitions");
    let bin = env!("CARGO_BIN_EXE_partition_consumer");
    let args = [
        b.url(),
        &queue,
        &PARTITIONS.to_string(),
        &PREFETCH.to_string(),
        "1", // ms between a message's side effect and its ack
    ];
    let (tx, mut lines) = unbounded_channel();
    let ready = |lines: &mut tokio::sync::mpsc::UnboundedReceiver<(&'static str, String)>| {
        let mut lines = std::mem::replace(lines, unbounded_channel().1);
        async move {
            let line = tokio::time::timeout(Duration::from_secs(30), lines.recv())
                .await
                .expect("the consumer process starts within 30 s");
            (line, lines)
        }
    };
    // A subscribes first, so it is the active consumer of every partition; B stands by.
    let mut a = Process::spawn("A", bin, &args, &[], tx.clone());
    let (line, rest) = ready(&mut lines).await;
    assert_eq!(line, Some(("A", "ready".to_owned())));
    lines = rest;
    let mut b_process = Process::spawn("B", bin, &args, &[], tx);
    let (line, rest) = ready(&mut lines).await;
    assert_eq!(line, Some(("B", "ready".to_owned())));
    lines = rest;

    let conn = ConnectionFactory::new(b.url())
        .connection_name(unique("patterns.partitions.publisher"))
        .connect()
        .await
        .expect("connect");
    let template = Template::new(conn.clone());
    // One task per key, each sending its key's events one after the other (each confirmed
    // before the next); the keys go concurrently.
    let publishers: Vec<_> = (0..KEYS)
        .map(|k| {
            let template = template.clone();
            let queue = queue.clone();
            tokio::spawn(async move {
                let key = format!("key-{k}");
                for seq in 0..PER_KEY {
                    let event = Event {
                        key: key.clone(),
                        seq,
                    };
                    template
                        .convert_and_send_partitioned("", &queue, PARTITIONS, &key, &event)
                        .await
                        .expect("partitioned send");
                }
            })
        })
        .collect();

    let total = (KEYS * PER_KEY) as usize;
    let mut by_key: HashMap<String, (Vec<Handled>, Vec<Handled>)> = HashMap::new();
    let mut distinct = std::collections::HashSet::new();
    let (mut handled_by_a, mut b_before_kill, mut killed) = (0, 0, false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    while distinct.len() < total {
        let next = tokio::time::timeout_at(deadline, lines.recv()).await;
        let Ok(Some((process, line))) = next else {
            panic!(
                "{} of {total} messages handled when the consumers went quiet (A handled {handled_by_a})",
                distinct.len()
            );
        };
        let Some((key, handled)) = parse(process, &line) else {
            panic!("unexpected line from {process}: {line}");
        };
        distinct.insert((key.clone(), handled.seq));
        let entry = by_key.entry(key).or_default();
        if process == "A" {
            handled_by_a += 1;
            entry.0.push(handled);
        } else {
            b_before_kill += usize::from(!killed);
            entry.1.push(handled);
        }
        if !killed && handled_by_a >= KILL_AFTER {
            a.kill().await;
            killed = true;
        }
    }
    for p in publishers {
        p.await.expect("publisher");
    }
    // Let any last redelivery show, then stop B gracefully.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = b_process.terminate().await;
    assert!(status.success(), "B exits cleanly on SIGTERM: {status}");
    drop(a);
    for (process, line) in drain(&mut lines).await {
        match parse(process, &line) {
            Some((key, handled)) => {
                let entry = by_key.entry(key).or_default();
                match process {
                    "A" => entry.0.push(handled),
                    _ => entry.1.push(handled),
                }
            }
            None => assert_eq!((process, line.as_str()), ("B", "stopped")),
        }
    }

    assert!(killed, "A was killed midway");
    assert_eq!(b_before_kill, 0, "B handled nothing while A was active");
    let handled_by_a: usize = by_key.values().map(|(a, _)| a.len()).sum();
    let handled_by_b: usize = by_key.values().map(|(_, b)| b.len()).sum();
    assert!(handled_by_b > 0, "B took over");
    let repeats = handled_by_a + handled_by_b - total;
    let mut failures = Vec::new();
    for (key, (a_list, b_list)) in &by_key {
        let all: Vec<Handled> = a_list.iter().chain(b_list).cloned().collect();
        if let Err(e) = check_order(key, &all) {
            failures.push(e);
        }
    }
    assert!(
        failures.is_empty(),
        "order broken:\n{}",
        failures.join("\n")
    );
    assert_eq!(by_key.len(), KEYS as usize);
    // Only what A had handled but not acked comes again: at most its prefetch per partition.
    assert!(
        repeats <= usize::from(PARTITIONS * PREFETCH),
        "{repeats} repeats"
    );
    eprintln!(
        "{:?}: A handled {handled_by_a}, B {handled_by_b}, {repeats} handled twice (redelivered after the kill)",
        b.backend()
    );
    conn.close().await;
}

conformance!(order_holds_when_a_consumer_process_is_killed);

#[test]
fn a_key_always_goes_to_the_same_partition_and_keys_spread() {
    let partitions = Partitions::new(PARTITIONS).expect("4 partitions");
    let mut per_partition = BTreeMap::new();
    for k in 0..KEYS {
        let key = format!("key-{k}");
        let p = partitions.of(&key);
        assert!(p < PARTITIONS);
        assert_eq!(p, partitions.of(&key.clone()));
        *per_partition.entry(p).or_insert(0) += 1;
    }
    assert_eq!(
        per_partition.len(),
        usize::from(PARTITIONS),
        "{per_partition:?}"
    );
    for (p, n) in &per_partition {
        assert!(
            (12..=38).contains(n),
            "partition {p} got {n} of 100 keys: {per_partition:?}"
        );
    }
    // The same in another process: the test binary's own value is pinned by amqp-core's unit
    // tests; here, a different key set stays spread over 16 partitions too.
    let sixteen = Partitions::new(16).expect("16");
    let mut hits = [0u32; 16];
    for k in 0..16_000 {
        hits[usize::from(sixteen.of(&format!("order-{k}")))] += 1;
    }
    assert!(hits.iter().all(|n| (800..1200).contains(n)), "{hits:?}");
}

#[test]
fn a_partitioned_listener_declares_single_active_consumer_queues_bound_by_partition() {
    use amqp_core::{Declarable, ListenerDefinition};
    let definition = ListenerDefinition {
        id: "accounts",
        queue: "accounts",
        exchange: Some("events"),
        exchange_type: "topic",
        keys: &["account.*"],
        durable: true,
        exclusive: false,
        auto_delete: false,
        queue_arguments: &[],
        binding_arguments: &[],
        prefetch: None,
        concurrency: None,
        ack: amqp_core::AckMode::Auto,
        idempotent: false,
        rate: None,
        circuit_breaker: None,
        retry: None,
        partitions: Some(2),
        handler: |_| Box::pin(async { amqp_core::Outcome::Done(None) }),
        location: "here",
    };
    let described: Vec<String> = definition
        .declarations()
        .iter()
        .map(|d| match d {
            Declarable::Exchange(x) => format!("exchange {}", x.name()),
            Declarable::Queue(q) => format!("queue {}", q.name()),
            Declarable::Binding(b) => format!("{b:?}"),
        })
        .collect();
    assert_eq!(
        described[..3],
        ["exchange events", "queue accounts.0", "queue accounts.1"]
    );
    assert!(described[3].contains("\"accounts.0\"") && described[3].contains("account.*.0"));
    assert!(described[4].contains("\"accounts.1\"") && described[4].contains("account.*.1"));
    assert_eq!(described.len(), 5);
    let sac = Partitions::new(2)
        .unwrap()
        .queues(&amqp_core::Queue::durable("accounts"));
    assert!(format!("{sac:?}").contains("x-single-active-consumer"));
}

/// Settings that cannot work are errors that say why, before anything is consumed or sent; a
/// send to a partition no queue takes fails instead of vanishing.
async fn bad_partition_settings_are_errors(b: TestBroker) {
    use amqp_core::{Error, Listener, ListenerError, Queue};
    let conn = ConnectionFactory::new(b.url())
        .connection_name(unique("patterns.partitions.bad"))
        .connect()
        .await
        .expect("connect");
    let queue = unique("patterns.partitions.bad");
    let base = Queue::transient(&queue).auto_delete();
    conn.declare(Partitions::new(2).unwrap().queues(&base))
        .await
        .expect("declare two partitions");
    let listener = |n: u16, consumers: usize| {
        Listener::on(&queue)
            .partitions(n)
            .concurrency(consumers)
            .handler(|_: u32| async { Ok::<_, ListenerError>(()) })
            .start(&conn)
    };
    let zero = listener(0, 1).await.expect_err("0 partitions");
    assert!(
        zero.to_string()
            .contains("partitions must be from 1 to 1024, not 0"),
        "{zero}"
    );
    let crowded = listener(2, 2).await.expect_err("2 consumers per partition");
    assert!(
        crowded.to_string().contains("single active consumer"),
        "{crowded}"
    );

    let template = Template::new(conn.clone());
    let none = template
        .convert_and_send_partitioned("", &queue, 0, "k", &1)
        .await
        .expect_err("0 partitions");
    assert!(matches!(none, Error::Configuration(_)), "{none}");
    // "a" is in partition 2 of 4 (pinned in amqp-core), which has no queue here.
    assert_eq!(Partitions::new(4).unwrap().of("a"), 2);
    let lost = template
        .convert_and_send_partitioned("", &queue, 4, "a", &1)
        .await
        .expect_err("no queue for partition 2");
    assert!(matches!(lost, Error::Returned { .. }), "{lost}");
    // The right count reaches a queue.
    let p = Partitions::new(2).unwrap().of("a");
    template
        .convert_and_send_partitioned("", &queue, 2, "a", &7u32)
        .await
        .expect("send");
    let got: Option<u32> = template
        .receive_and_convert(&Partitions::queue_name(&queue, p), Duration::from_secs(5))
        .await
        .expect("receive");
    assert_eq!(got, Some(7));
    conn.close().await;
}

conformance!(bad_partition_settings_are_errors);
