//! The attribute's keys, one line each in the `keys!` table below: the keyword, the kind of value
//! it takes, and an example for error messages. Adding a key is a line here, reading it in
//! `validate::config`, and emitting it in `expand`.

use proc_macro2::{Ident, TokenTree};
use syn::parse::ParseStream;

/// The shape of a key's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `key = "text"`
    Str,
    /// `key = true`
    Bool,
    /// `key` alone (meaning true), or `key = true`
    Flag,
    /// `key = 10`
    Int,
    /// `key = "a"` or `key = ["a", "b"]`
    StrList,
    /// `key(name = "text", "x-name" = 5, other = true)`
    Table,
}

impl Kind {
    /// What a value of this kind is, for "takes …" messages.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Kind::Str => "a string",
            Kind::Bool => "`true` or `false`",
            Kind::Flag => "no value (or `true` / `false`)",
            Kind::Int => "an integer",
            Kind::StrList => "a string or a list of strings",
            Kind::Table => "a list of `name = value` pairs in parentheses",
        }
    }
}

macro_rules! keys {
    ($($variant:ident $kw:ident: $kind:ident, $example:literal;)*) => {
        mod kw {
            $(syn::custom_keyword!($kw);)*
        }

        /// A key of `#[rabbit_listener(...)]`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
        pub(crate) enum Key {
            $($variant,)*
        }

        impl Key {
            /// Every key, in the order the docs list them.
            pub(crate) const ALL: &'static [Key] = &[$(Key::$variant,)*];

            /// The key as written.
            pub(crate) fn name(self) -> &'static str {
                match self {
                    $(Key::$variant => stringify!($kw),)*
                }
            }

            /// The shape of its value.
            pub(crate) fn kind(self) -> Kind {
                match self {
                    $(Key::$variant => Kind::$kind,)*
                }
            }

            /// How it is written, for error messages.
            pub(crate) fn example(self) -> &'static str {
                match self {
                    $(Key::$variant => $example,)*
                }
            }

            /// Parses one key; an unknown one is an error that lists the keys.
            pub(crate) fn parse(input: ParseStream) -> syn::Result<(Key, Ident)> {
                let lookahead = input.lookahead1();
                $(
                    if lookahead.peek(kw::$kw) {
                        let keyword: kw::$kw = input.parse()?;
                        return Ok((Key::$variant, Ident::new(stringify!($kw), keyword.span)));
                    }
                )*
                Err(unknown_key(input, lookahead))
            }
        }
    };
}

keys! {
    Queue queue: Str, "queue = \"orders\"";
    Exchange exchange: Str, "exchange = \"orders\"";
    ExchangeType exchange_type: Str, "exchange_type = \"topic\"";
    RoutingKeys key: StrList, "key = \"order.*\" or key = [\"order.created\", \"order.paid\"]";
    Durable durable: Bool, "durable = false";
    Exclusive exclusive: Bool, "exclusive = true";
    AutoDelete auto_delete: Bool, "auto_delete = true";
    DeadLetterExchange dead_letter_exchange: Str, "dead_letter_exchange = \"orders.dlx\"";
    DeadLetterRouting dead_letter_routing_key: Str, "dead_letter_routing_key = \"failed\"";
    MessageTtl message_ttl: Int, "message_ttl = 60000";
    MaxLength max_length: Int, "max_length = 10000";
    Quorum quorum: Flag, "quorum";
    DeliveryLimit delivery_limit: Int, "delivery_limit = 5";
    Arguments arguments: Table, "arguments(\"x-overflow\" = \"reject-publish\")";
    Headers headers: Table, "headers(kind = \"audit\", \"x-region\" = \"eu\")";
    XMatch x_match: Str, "x_match = \"any\"";
    Prefetch prefetch: Int, "prefetch = 50";
    Concurrency concurrency: Int, "concurrency = 4";
    Ack ack: Str, "ack = \"manual\"";
    Id id: Str, "id = \"orders-listener\"";
    Idempotent idempotent: Flag, "idempotent";
    Rate rate: Str, "rate = \"200/s\"";
    CircuitBreaker circuit_breaker: Table, "circuit_breaker(failure_percent = 50, min_calls = 10, window = \"10s\", cool_down = \"30s\")";
    Retry retry: Table, "retry(max_attempts = 5, initial = \"100ms\", multiplier = 2.0, max = \"10s\")";
    Partitions partitions: Int, "partitions = 4";
}

/// "unknown key `quue`: did you mean `queue`? The keys are …", at the unknown token.
fn unknown_key(input: ParseStream, lookahead: syn::parse::Lookahead1) -> syn::Error {
    let Some((TokenTree::Ident(ident), _)) = input.cursor().token_tree() else {
        return lookahead.error();
    };
    let written = ident.to_string();
    let names: Vec<&str> = Key::ALL.iter().map(|k| k.name()).collect();
    let suggestion = names
        .iter()
        .map(|name| (edit_distance(&written, name), *name))
        .filter(|(distance, _)| *distance <= 2)
        .min()
        .map(|(_, name)| format!(": did you mean `{name}`? The keys are"))
        .unwrap_or_else(|| ": the keys are".into());
    let keys: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    syn::Error::new_spanned(
        ident,
        format!("unknown key `{written}`{suggestion} {}", keys.join(", ")),
    )
}

/// Levenshtein distance, for "did you mean".
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(previous + 1);
        }
    }
    row[b.len()]
}
