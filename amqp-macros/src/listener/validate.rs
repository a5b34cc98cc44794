//! Checking what was parsed: each value against its key's kind, the keys against each other, and
//! the function's signature; the result is a [`Listener`] that `expand` turns into code. Every
//! problem goes to `Errors` with the tokens it is about.

use std::collections::BTreeMap;

use proc_macro2::{Ident, Span, TokenStream};
use quote::ToTokens;
use syn::{Expr, ExprLit, FnArg, ItemFn, Lit, LitStr, ReturnType, Type, UnOp};

use super::keys::{Key, Kind};
use super::parse::{Entry, TableName, Value};
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
}

/// A queue or binding argument's value.
#[derive(Clone)]
pub(crate) enum Arg {
    Str(String),
    Int(i64),
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
    if let Some(lit) = v.str(Key::DeadLetterRoutingKeys) {
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
    for (name, value) in v.table(Key::Arguments).unwrap_or_default() {
        queue_arguments.push(&name.value(), value.clone(), name);
    }

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

    let queue_arguments = queue_arguments.finish(errors);
    let binding_arguments = binding_arguments.finish(errors);
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
    })
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

/// A value that has the shape its key asks for.
enum Checked {
    Str(LitStr),
    Bool(bool),
    Int(i128, Expr),
    StrList(Vec<LitStr>),
    Table(Vec<(TableName, Arg)>),
}

/// The attribute's values by key, each checked against its key's [`Kind`].
struct Values {
    /// Whether some of the attribute did not parse.
    unparsed: bool,
    /// Keys that were written, whether or not their value was right.
    given: BTreeMap<Key, Ident>,
    checked: BTreeMap<Key, Checked>,
}

impl Values {
    fn check(entries: Vec<Entry>, errors: &mut Errors) -> Self {
        let mut values = Values {
            unparsed: errors.count() > 0,
            given: BTreeMap::new(),
            checked: BTreeMap::new(),
        };
        for entry in entries {
            if !values.once(&entry, errors) {
                continue;
            }
            if let Some(checked) = check(&entry, errors) {
                values.checked.insert(entry.key, checked);
            }
        }
        values
    }

    /// Records that `entry`'s key was given; `false` (and an error at the second one) when it
    /// already was.
    fn once(&mut self, entry: &Entry, errors: &mut Errors) -> bool {
        if self.given.contains_key(&entry.key) {
            errors.spanned(
                &entry.ident,
                format!("`{}` is given twice: keep one", entry.key.name()),
            );
            return false;
        }
        self.given.insert(entry.key, entry.ident.clone());
        true
    }

    fn given(&self, key: Key) -> bool {
        self.given.contains_key(&key)
    }

    /// The key as written, if it was.
    fn ident(&self, key: Key) -> Option<&Ident> {
        self.given.get(&key)
    }

    fn str(&self, key: Key) -> Option<&LitStr> {
        match self.checked.get(&key) {
            Some(Checked::Str(lit)) => Some(lit),
            _ => None,
        }
    }

    fn bool(&self, key: Key) -> Option<bool> {
        match self.checked.get(&key) {
            Some(Checked::Bool(b)) => Some(*b),
            _ => None,
        }
    }

    fn list(&self, key: Key) -> Option<&[LitStr]> {
        match self.checked.get(&key) {
            Some(Checked::StrList(list)) => Some(list),
            _ => None,
        }
    }

    fn table(&self, key: Key) -> Option<&[(TableName, Arg)]> {
        match self.checked.get(&key) {
            Some(Checked::Table(table)) => Some(table),
            _ => None,
        }
    }

    /// An integer key's value, which must lie in `min..=max`.
    fn int(&self, key: Key, min: i128, max: i128, errors: &mut Errors) -> Option<(i128, &Expr)> {
        let Some(Checked::Int(n, expr)) = self.checked.get(&key) else {
            return None;
        };
        let bound = if *n < min {
            format!("at least {min}")
        } else if *n > max {
            format!("at most {max}")
        } else {
            return Some((*n, expr));
        };
        errors.spanned(
            expr,
            format!(
                "`{}` is {bound}: write e.g. `{}`",
                key.name(),
                key.example()
            ),
        );
        None
    }

    /// A string key's value, which must be one of `allowed`.
    fn choice(
        &self,
        key: Key,
        allowed: &[&'static str],
        errors: &mut Errors,
    ) -> Option<&'static str> {
        let lit = self.str(key)?;
        let written = lit.value();
        let found = allowed.iter().find(|a| **a == written).copied();
        if found.is_none() {
            errors.spanned(
                lit,
                format!(
                    "`{}` is one of {}, not \"{}\"",
                    key.name(),
                    allowed
                        .iter()
                        .map(|a| format!("\"{a}\""))
                        .collect::<Vec<_>>()
                        .join(", "),
                    written.escape_default()
                ),
            );
        }
        found
    }
}

/// Checks an entry's value against its key's kind.
fn check(entry: &Entry, errors: &mut Errors) -> Option<Checked> {
    let key = entry.key;
    let wrong = |errors: &mut Errors, tokens: &dyn ToTokens| {
        errors.spanned(
            tokens.to_token_stream(),
            format!(
                "`{}` takes {}: write e.g. `{}`",
                key.name(),
                key.kind().describe(),
                key.example()
            ),
        );
        None
    };
    match (&entry.value, key.kind()) {
        (Value::Absent, Kind::Flag) => Some(Checked::Bool(true)),
        (Value::Absent, _) => wrong(errors, &entry.ident),
        (Value::Table(table), Kind::Table) => {
            let mut checked = Vec::with_capacity(table.len());
            for item in table {
                match arg(&item.value) {
                    Some(value) => checked.push((item.name.clone(), value)),
                    None => errors.spanned(
                        &item.value,
                        format!(
                            "a value in `{}(...)` is a string, an integer, `true` or `false`: write e.g. `{}`",
                            key.name(),
                            key.example()
                        ),
                    ),
                }
            }
            Some(Checked::Table(checked))
        }
        (Value::Table(_), _) => wrong(errors, &entry.ident),
        (Value::Expr(expr), Kind::Table) => wrong(errors, expr),
        (Value::Expr(expr), kind) => match (kind, lit(expr)) {
            (Kind::Str, Some(Lit::Str(s))) => Some(Checked::Str(s.clone())),
            (Kind::Bool | Kind::Flag, Some(Lit::Bool(b))) => Some(Checked::Bool(b.value)),
            (Kind::Int, _) => match int(expr) {
                Some(Ok(n)) => Some(Checked::Int(n, expr.clone())),
                Some(Err(e)) => {
                    errors.push(e);
                    None
                }
                None => wrong(errors, expr),
            },
            (Kind::StrList, Some(Lit::Str(s))) => Some(Checked::StrList(vec![s.clone()])),
            (Kind::StrList, None) => {
                let Expr::Array(array) = expr else {
                    return wrong(errors, expr);
                };
                let mut list = Vec::new();
                for element in &array.elems {
                    match lit(element) {
                        Some(Lit::Str(s)) => list.push(s.clone()),
                        _ => errors.spanned(
                            element,
                            format!(
                                "`{}` lists strings: write e.g. `{}`",
                                key.name(),
                                key.example()
                            ),
                        ),
                    }
                }
                Some(Checked::StrList(list))
            }
            _ => wrong(errors, expr),
        },
    }
}

/// The literal an expression is, if it is one.
fn lit(expr: &Expr) -> Option<&Lit> {
    match expr {
        Expr::Lit(ExprLit { lit, .. }) => Some(lit),
        Expr::Group(group) => lit(&group.expr),
        _ => None,
    }
}

/// An integer literal, possibly negated; `None` if the expression is no integer.
fn int(expr: &Expr) -> Option<syn::Result<i128>> {
    match expr {
        Expr::Unary(unary) if matches!(unary.op, UnOp::Neg(_)) => {
            int(&unary.expr).map(|n| n.map(|n| -n))
        }
        _ => match lit(expr)? {
            Lit::Int(int) => Some(int.base10_parse::<i128>()),
            _ => None,
        },
    }
}

/// An argument value (`"text"`, `5`, `-5`, `true`).
fn arg(expr: &Expr) -> Option<Arg> {
    if let Some(n) = int(expr) {
        return n.ok().and_then(|n| i64::try_from(n).ok()).map(Arg::Int);
    }
    match lit(expr)? {
        Lit::Str(s) => Some(Arg::Str(s.value())),
        Lit::Bool(b) => Some(Arg::Bool(b.value)),
        _ => None,
    }
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
