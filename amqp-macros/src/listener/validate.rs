//! Checking what was parsed: each value against its key's kind, the keys against each other, and
//! the function's signature; the result is a [`Listener`] that `expand` turns into code. Every
//! problem goes to `Errors` with the tokens it is about.

use proc_macro2::{Ident, Span, TokenStream};
use quote::ToTokens;
use syn::{FnArg, ItemFn, LitStr, ReturnType, Type};

use super::keys::Key;
use super::parse::{Entry, TableName};
use super::values::Values;
use crate::errors::Errors;

/// A listener ready to be expanded.
pub(crate) struct Listener {
    pub(crate) config: Config,
    pub(crate) handler: Handler,
}

/// What the attribute declares, with defaults applied.
pub(crate) struct Config {
    /// `None`: the function's path.
    pub(crate) id: Option<String>,
    pub(crate) queue: String,
    pub(crate) exchange: Option<String>,
    pub(crate) exchange_type: &'static str,
    pub(crate) keys: Vec<String>,
    pub(crate) durable: bool,
    pub(crate) exclusive: bool,
    pub(crate) auto_delete: bool,
    pub(crate) queue_arguments: Vec<(String, Arg)>,
    pub(crate) binding_arguments: Vec<(String, Arg)>,
    pub(crate) prefetch: Option<u16>,
    pub(crate) concurrency: Option<usize>,
    pub(crate) ack: Ack,
    pub(crate) idempotent: bool,
    /// `rate = "200/s"`: (count, per milliseconds).
    pub(crate) rate: Option<(u32, u64)>,
    pub(crate) circuit_breaker: Option<Breaker>,
    pub(crate) retry: Option<Retry>,
    /// `partitions = N`: ordered partitions `<queue>.0` … `<queue>.N-1`.
    pub(crate) partitions: Option<u16>,
}

/// `circuit_breaker(...)`, with defaults for what is left out.
pub(crate) struct Breaker {
    pub(crate) failure_percent: u32,
    pub(crate) min_calls: u32,
    pub(crate) window_ms: u64,
    pub(crate) cool_down_ms: u64,
}

/// `retry(...)`, with defaults for what is left out (those of `amqp_core::Retry`).
pub(crate) struct Retry {
    pub(crate) max_attempts: u32,
    pub(crate) initial_ms: u64,
    pub(crate) multiplier: f64,
    pub(crate) max_ms: u64,
}

/// A queue or binding argument's value.
#[derive(Clone)]
pub(crate) enum Arg {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

/// `ack = "..."`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ack {
    Auto,
    Manual,
    None,
}

/// The function as the generated handler calls it.
pub(crate) struct Handler {
    pub(crate) name: Ident,
    /// The types of the parameters before the last one.
    pub(crate) extractors: Vec<Type>,
    /// The last parameter's type.
    pub(crate) payload: Type,
    /// The return type, if not `()`.
    pub(crate) output: Option<Type>,
}

/// The listener, or `None` when something is wrong (and then `errors` says what).
pub(crate) fn listener(
    entries: Vec<Entry>,
    function: &ItemFn,
    errors: &mut Errors,
) -> Option<Listener> {
    let config = config(Values::check(entries, errors), errors);
    let handler = handler(function, errors);
    Some(Listener {
        config: config?,
        handler: handler?,
    })
}

const EXCHANGE_TYPES: &[&str] = &["direct", "fanout", "topic", "headers"];
const ACK_MODES: &[&str] = &["auto", "manual", "none"];
const X_MATCH: &[&str] = &["all", "any", "all-with-x", "any-with-x"];

fn config(v: Values, errors: &mut Errors) -> Option<Config> {
    let before = errors.count();

    let queue = v.str(Key::Queue);
    // After a key that did not parse (a misspelled `queue`, say), "missing queue" would be noise.
    if !v.given(Key::Queue) && !v.unparsed {
        errors.at(
            Span::call_site(),
            "#[rabbit_listener] needs the queue to consume: write `#[rabbit_listener(queue = \"orders\")]`",
        );
    }
    if let Some(lit) = queue.filter(|q| q.value().is_empty()) {
        errors.spanned(
            lit,
            "`queue` must name a queue: write e.g. `queue = \"orders\"`",
        );
    }

    let exchange = v.str(Key::Exchange);
    if let Some(lit) = exchange.filter(|e| e.value().is_empty()) {
        errors.spanned(
            lit,
            "the default exchange cannot be bound to: leave `exchange` out to receive what is sent to the queue by name",
        );
    }
    for key in [Key::ExchangeType, Key::RoutingKeys] {
        if let (Some(ident), None) = (v.ident(key), exchange) {
            errors.spanned(
                ident,
                format!(
                    "`{}` needs an exchange to bind the queue to: add `exchange = \"name\"`, or remove `{}` to receive what is sent to the queue by name",
                    key.name(),
                    key.name()
                ),
            );
        }
    }
    let exchange_type = v.choice(Key::ExchangeType, EXCHANGE_TYPES, errors);

    let keys = v.list(Key::RoutingKeys);
    if let (Some([]), Some(ident)) = (keys, v.ident(Key::RoutingKeys)) {
        errors.spanned(
            ident,
            "`key = []` binds nothing: give at least one key, or leave `key` out to bind with the empty key",
        );
    }

    let durable = v.bool(Key::Durable);
    let exclusive = v.bool(Key::Exclusive).unwrap_or(false);
    let auto_delete = v.bool(Key::AutoDelete).unwrap_or(false);
    let queue_arguments = queue_arguments(&v, errors);
    let binding_arguments = binding_arguments(&v, exchange_type, errors);

    let prefetch = v.int(Key::Prefetch, 0, u16::MAX.into(), errors);
    let concurrency = v.int(Key::Concurrency, 1, u16::MAX.into(), errors);
    let ack = v
        .choice(Key::Ack, ACK_MODES, errors)
        .map(|mode| match mode {
            "manual" => Ack::Manual,
            "none" => Ack::None,
            _ => Ack::Auto,
        });
    let id = v.str(Key::Id);
    if let Some(lit) = id.filter(|id| id.value().trim().is_empty()) {
        errors.spanned(lit, "`id` must not be empty: write e.g. `id = \"orders\"`, or leave it out to use the function's path");
    }

    let idempotent = v.bool(Key::Idempotent).unwrap_or(false);
    if let (true, Some(Ack::None), Some(ident)) = (idempotent, ack, v.ident(Key::Idempotent)) {
        errors.spanned(
            ident,
            "an idempotent listener needs acknowledgements, to requeue a message another consumer is handling: remove `ack = \"none\"` or `idempotent`",
        );
    }
    let rate = v.str(Key::Rate).and_then(|lit| {
        let parsed = rate(&lit.value());
        if parsed.is_none() {
            errors.spanned(
                lit,
                "`rate` is a positive count per second, minute or hour: write e.g. `rate = \"200/s\"`, `\"30/m\"` or `\"1000/h\"`",
            );
        }
        parsed
    });
    let circuit_breaker = v
        .table(Key::CircuitBreaker)
        .map(|table| breaker(table, errors));
    if let (Some(_), true, Some(ident)) =
        (&circuit_breaker, auto_delete, v.ident(Key::CircuitBreaker))
    {
        errors.spanned(
            ident,
            "an open circuit breaker cancels the listener's consumers, and an auto-delete queue is deleted with its messages when its last consumer goes: remove `auto_delete = true` or `circuit_breaker(...)`",
        );
    }

    let retry = v.table(Key::Retry).map(|table| retry(table, errors));
    if let (Some(_), Some(Ack::Manual | Ack::None), Some(ident)) =
        (&retry, ack, v.ident(Key::Retry))
    {
        errors.spanned(
            ident,
            "retry re-publishes a failed message and then acks it, so it needs `ack = \"auto\"`: remove `ack = ...` or `retry(...)`",
        );
    }
    let partitions = partitions(&v, concurrency, exchange_type, errors);

    if errors.count() > before {
        return None;
    }
    Some(Config {
        id: id.map(LitStr::value),
        queue: queue?.value(),
        exchange: exchange.map(LitStr::value),
        exchange_type: exchange_type.unwrap_or("direct"),
        keys: keys.unwrap_or_default().iter().map(LitStr::value).collect(),
        durable: durable.unwrap_or(true),
        exclusive,
        auto_delete,
        queue_arguments,
        binding_arguments,
        prefetch: prefetch.map(|(n, _)| n as u16),
        concurrency: concurrency.map(|(n, _)| n as usize),
        ack: ack.unwrap_or(Ack::Auto),
        idempotent,
        rate,
        circuit_breaker,
        retry,
        partitions,
    })
}

/// The most partitions (as `amqp_core::Partitions::MAX`).
const MAX_PARTITIONS: i128 = 1024;

/// `partitions = N`: from 1 to 1024, one consumer per partition, routed by routing key.
fn partitions(
    v: &Values,
    concurrency: Option<(i128, &syn::Expr)>,
    exchange_type: Option<&str>,
    errors: &mut Errors,
) -> Option<u16> {
    let (n, _) = v.int(Key::Partitions, 1, MAX_PARTITIONS, errors)?;
    let ident = v.ident(Key::Partitions)?;
    if let Some((consumers, expr)) = concurrency.filter(|(c, _)| *c > 1) {
        errors.spanned(
            expr,
            format!("each of the {n} partitions has a single active consumer, so `concurrency = {consumers}` would only add idle consumers: remove `concurrency` and raise `partitions` for more parallelism"),
        );
    }
    if let Some(kind @ ("fanout" | "headers")) = exchange_type {
        errors.spanned(
            ident,
            format!("partitions are chosen by routing key, which a {kind} exchange ignores: use a direct or topic exchange, or remove `partitions`"),
        );
    }
    Some(n as u16)
}

/// `"200/s"` as (200, 1000 ms).
fn rate(text: &str) -> Option<(u32, u64)> {
    let (count, unit) = text.split_once('/')?;
    let count: u32 = count.trim().parse().ok().filter(|n| *n > 0)?;
    let per_ms = match unit.trim() {
        "s" | "sec" | "second" => 1_000,
        "m" | "min" | "minute" => 60_000,
        "h" | "hour" => 3_600_000,
        _ => return None,
    };
    Some((count, per_ms))
}

/// `"500ms"`, `"10s"`, `"2m"`, `"1h"` in milliseconds.
fn duration_ms(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits = text.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = text.split_at(digits);
    let n: u64 = n.parse().ok()?;
    let factor = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    n.checked_mul(factor)
}

/// The settings of a `name(...)` table, each once: a setting given twice is reported at the
/// repeat, which is left out.
fn settings<'a>(
    table: &'a [(TableName, Arg)],
    errors: &mut Errors,
) -> Vec<(&'a TableName, String, &'a Arg)> {
    let mut seen: Vec<(&TableName, String, &Arg)> = Vec::new();
    for (name, value) in table {
        let written = name.value();
        if seen.iter().any(|(_, w, _)| *w == written) {
            errors.spanned(name, format!("`{written}` is given twice: keep one"));
            continue;
        }
        seen.push((name, written, value));
    }
    seen
}

const BREAKER_SETTINGS: &str =
    "`failure_percent = 50`, `min_calls = 10`, `window = \"10s\"`, `cool_down = \"30s\"`";

/// `circuit_breaker(failure_percent = 50, min_calls = 10, window = "10s", cool_down = "30s")`.
fn breaker(table: &[(TableName, Arg)], errors: &mut Errors) -> Breaker {
    let mut breaker = Breaker {
        failure_percent: 50,
        min_calls: 10,
        window_ms: 10_000,
        cool_down_ms: 30_000,
    };
    for (name, written, value) in settings(table, errors) {
        match (written.as_str(), value) {
            ("failure_percent", Arg::Int(n)) if (1..=100).contains(n) => {
                breaker.failure_percent = *n as u32;
            }
            ("failure_percent", _) => errors.spanned(
                name,
                "`failure_percent` is an integer from 1 to 100: write e.g. `failure_percent = 50`",
            ),
            ("min_calls", Arg::Int(n)) if (1..=i64::from(u32::MAX)).contains(n) => {
                breaker.min_calls = *n as u32;
            }
            ("min_calls", _) => errors.spanned(
                name,
                "`min_calls` is an integer of at least 1: write e.g. `min_calls = 10`",
            ),
            ("window" | "cool_down", value) => {
                let ms = match value {
                    Arg::Str(s) => duration_ms(s).filter(|ms| *ms > 0),
                    _ => None,
                };
                match (ms, written.as_str()) {
                    (Some(ms), "window") => breaker.window_ms = ms,
                    (Some(ms), _) => breaker.cool_down_ms = ms,
                    (None, _) => errors.spanned(
                        name,
                        format!("`{written}` is a duration: write e.g. `{written} = \"30s\"` (units: ms, s, m, h)"),
                    ),
                }
            }
            _ => errors.spanned(
                name,
                format!("`circuit_breaker` has no setting `{written}`: the settings are {BREAKER_SETTINGS}"),
            ),
        }
    }
    breaker
}

const RETRY_SETTINGS: &str =
    "`max_attempts = 5`, `initial = \"100ms\"`, `multiplier = 2.0`, `max = \"10s\"`";

/// `retry(max_attempts = 5, initial = "100ms", multiplier = 2.0, max = "10s")`.
fn retry(table: &[(TableName, Arg)], errors: &mut Errors) -> Retry {
    let mut retry = Retry {
        max_attempts: 3,
        initial_ms: 1_000,
        multiplier: 2.0,
        max_ms: 10_000,
    };
    for (name, written, value) in settings(table, errors) {
        match (written.as_str(), value) {
            ("max_attempts", Arg::Int(n)) if (1..=i64::from(u32::MAX)).contains(n) => {
                retry.max_attempts = *n as u32;
            }
            ("max_attempts", _) => errors.spanned(
                name,
                "`max_attempts` is an integer of at least 1, the first delivery included: write e.g. `max_attempts = 5`",
            ),
            ("multiplier", Arg::Float(f)) if f.is_finite() && *f >= 1.0 => retry.multiplier = *f,
            ("multiplier", Arg::Int(n)) if *n >= 1 => retry.multiplier = *n as f64,
            ("multiplier", _) => errors.spanned(
                name,
                "`multiplier` is a number of at least 1.0 (1.0: a fixed delay): write e.g. `multiplier = 2.0`",
            ),
            ("initial" | "max", value) => {
                let ms = match value {
                    Arg::Str(s) => duration_ms(s).filter(|ms| (1..=u64::from(u32::MAX)).contains(ms)),
                    _ => None,
                };
                match (ms, written.as_str()) {
                    (Some(ms), "initial") => retry.initial_ms = ms,
                    (Some(ms), _) => retry.max_ms = ms,
                    (None, _) => errors.spanned(
                        name,
                        format!("`{written}` is a duration from 1 ms to 49 days: write e.g. `{written} = \"500ms\"` (units: ms, s, m, h)"),
                    ),
                }
            }
            _ => errors.spanned(
                name,
                format!("`retry` has no setting `{written}`: the settings are {RETRY_SETTINGS}"),
            ),
        }
    }
    if retry.initial_ms > retry.max_ms {
        let at = table
            .iter()
            .find(|(name, _)| name.value() == "initial")
            .or_else(|| table.iter().find(|(name, _)| name.value() == "max"));
        if let Some((name, _)) = at {
            errors.spanned(
                name,
                format!(
                    "the initial delay ({} ms) is longer than the max ({} ms): make `initial` shorter or `max` longer",
                    retry.initial_ms, retry.max_ms
                ),
            );
        }
    }
    retry
}

/// `x-dead-letter-exchange`, `x-message-ttl`, ... from their keys, then `arguments(...)`.
fn queue_arguments(v: &Values, errors: &mut Errors) -> Vec<(String, Arg)> {
    let durable = v.bool(Key::Durable);
    let exclusive = v.bool(Key::Exclusive).unwrap_or(false);
    let auto_delete = v.bool(Key::AutoDelete).unwrap_or(false);
    let quorum = v.bool(Key::Quorum).unwrap_or(false);
    if let (true, Some(ident)) = (quorum, v.ident(Key::Quorum)) {
        let conflicts: Vec<&str> = [
            (durable == Some(false), "durable = false"),
            (exclusive, "exclusive = true"),
            (auto_delete, "auto_delete = true"),
        ]
        .into_iter()
        .filter_map(|(conflict, text)| conflict.then_some(text))
        .collect();
        if !conflicts.is_empty() {
            errors.spanned(
                ident,
                format!(
                    "a quorum queue is durable, not exclusive and not auto-delete: remove `{}` or `quorum`",
                    conflicts.join("`, `")
                ),
            );
        }
    }

    let mut queue_arguments = Arguments::default();
    if let Some(lit) = v.str(Key::DeadLetterExchange) {
        queue_arguments.push("x-dead-letter-exchange", Arg::Str(lit.value()), lit);
    }
    if let Some(lit) = v.str(Key::DeadLetterRouting) {
        queue_arguments.push("x-dead-letter-routing-key", Arg::Str(lit.value()), lit);
    }
    if let Some((ttl, expr)) = v.int(Key::MessageTtl, 0, u32::MAX.into(), errors) {
        queue_arguments.push("x-message-ttl", Arg::Int(ttl as i64), expr);
    }
    if let Some((max, expr)) = v.int(Key::MaxLength, 0, i64::MAX.into(), errors) {
        queue_arguments.push("x-max-length", Arg::Int(max as i64), expr);
    }
    if let (true, Some(ident)) = (quorum, v.ident(Key::Quorum)) {
        queue_arguments.push("x-queue-type", Arg::Str("quorum".into()), ident);
    }
    if let (false, Some(ident)) = (quorum, v.ident(Key::DeliveryLimit)) {
        // A classic queue takes the argument and ignores it: say so here instead.
        errors.spanned(
            ident,
            "`delivery_limit` is for quorum queues (`x-delivery-limit`): add `quorum`, or remove `delivery_limit`",
        );
    } else if let Some((limit, expr)) = v.int(Key::DeliveryLimit, 0, u32::MAX.into(), errors) {
        queue_arguments.push("x-delivery-limit", Arg::Int(limit as i64), expr);
    }
    for (name, value) in v.table(Key::Arguments).unwrap_or_default() {
        queue_arguments.push(&name.value(), value.clone(), name);
    }

    queue_arguments.finish(errors)
}

/// `x-match` and `headers(...)`, for a headers exchange only.
fn binding_arguments(
    v: &Values,
    exchange_type: Option<&str>,
    errors: &mut Errors,
) -> Vec<(String, Arg)> {
    let mut binding_arguments = Arguments::default();
    for key in [Key::Headers, Key::XMatch] {
        if let (Some(ident), false) = (v.ident(key), exchange_type == Some("headers")) {
            errors.spanned(
                ident,
                format!(
                    "`{}` is for binding to a headers exchange: add `exchange_type = \"headers\"` (and an `exchange`), or remove `{}`",
                    key.name(),
                    key.name()
                ),
            );
        }
    }
    let x_match = v.choice(Key::XMatch, X_MATCH, errors);
    if let (Some(x_match), Some(lit)) = (x_match, v.str(Key::XMatch)) {
        binding_arguments.push("x-match", Arg::Str(x_match.into()), lit);
    }
    for (name, value) in v.table(Key::Headers).unwrap_or_default() {
        let matches_x = x_match.is_some_and(|m| m.ends_with("-with-x"));
        if name.value().starts_with("x-") && !matches_x {
            errors.spanned(
                name,
                "a headers exchange does not match headers whose names begin with `x-`: rename it, or add `x_match = \"all-with-x\"` (or \"any-with-x\"; RabbitMQ 3.10+)",
            );
        }
        binding_arguments.push(&name.value(), value.clone(), name);
    }

    binding_arguments.finish(errors)
}

fn handler(function: &ItemFn, errors: &mut Errors) -> Option<Handler> {
    let before = errors.count();
    let sig = &function.sig;
    if sig.asyncness.is_none() {
        errors.spanned(
            sig.fn_token,
            format!(
                "#[rabbit_listener] goes on an `async fn`: write `async fn {}(...)`",
                sig.ident
            ),
        );
    }
    if let Some(unsafety) = &sig.unsafety {
        errors.spanned(
            unsafety,
            "a listener cannot be an `unsafe fn`: remove `unsafe`",
        );
    }
    if let Some(abi) = &sig.abi {
        errors.spanned(abi, "a listener cannot have an ABI: remove it");
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        let mut tokens = sig.generics.to_token_stream();
        sig.generics.where_clause.to_tokens(&mut tokens);
        errors.spanned(
            tokens,
            "a listener cannot be generic: the app calls it with concrete types, so name them (e.g. `State<MyDb>`)",
        );
    }
    if let Some(variadic) = &sig.variadic {
        errors.spanned(variadic, "a listener cannot be variadic");
    }

    let mut types = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(receiver) => errors.spanned(
                receiver,
                "a listener is a free function, not a method: move it out of the `impl` block, and take what `self` held as `State<T>` (shared with `App::state`)",
            ),
            FnArg::Typed(typed) => {
                if let Type::ImplTrait(_) = &*typed.ty {
                    errors.spanned(
                        &typed.ty,
                        "a listener's parameters need named types, not `impl Trait`",
                    );
                }
                types.push((*typed.ty).clone());
            }
        }
    }
    let has_receiver = matches!(sig.inputs.first(), Some(FnArg::Receiver(_)));
    if types.is_empty() && !has_receiver {
        errors.at(
            sig.paren_token.span.join(),
            "a listener takes the message's payload as its last parameter: write e.g. `(event: MyEvent)` with `MyEvent: serde::Deserialize`",
        );
    }
    if errors.count() > before {
        return None;
    }
    let payload = types.pop()?;
    Some(Handler {
        name: sig.ident.clone(),
        extractors: types,
        payload,
        output: match &sig.output {
            ReturnType::Default => None,
            ReturnType::Type(_, ty) => Some((**ty).clone()),
        },
    })
}

/// Queue or binding arguments being gathered from several keys; one name given twice is an error.
#[derive(Default)]
struct Arguments {
    items: Vec<(String, Arg, TokenStream)>,
}

impl Arguments {
    fn push(&mut self, name: &str, value: Arg, tokens: impl ToTokens) {
        self.items
            .push((name.to_owned(), value, tokens.to_token_stream()));
    }

    fn finish(self, errors: &mut Errors) -> Vec<(String, Arg)> {
        let mut out: Vec<(String, Arg)> = Vec::with_capacity(self.items.len());
        for (name, value, tokens) in self.items {
            if out.iter().any(|(seen, _)| *seen == name) {
                errors.spanned(
                    tokens,
                    format!("the argument \"{name}\" is given twice: keep one"),
                );
            } else {
                out.push((name, value));
            }
        }
        out
    }
}
