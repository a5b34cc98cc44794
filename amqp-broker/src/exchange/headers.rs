//! Headers routing: a binding's arguments against a message's headers, with `x-match` = `all`
//! (the default) or `any`, and RabbitMQ's `all-with-x` / `any-with-x`, which also compare `x-`
//! headers.

use amq_protocol::types::{AMQPValue, FieldTable};

/// Whether a message with `headers` matches a binding with `arguments`.
pub(crate) fn matches(arguments: &FieldTable, headers: &FieldTable) -> bool {
    let mode = match arguments.inner().get("x-match") {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        Some(AMQPValue::ShortString(s)) => s.as_str().to_owned(),
        _ => "all".to_owned(),
    };
    let (any, with_x) = match mode.as_str() {
        "any" => (true, false),
        "any-with-x" => (true, true),
        "all-with-x" => (false, true),
        _ => (false, false),
    };
    let mut pairs = arguments
        .inner()
        .iter()
        .filter(|(k, _)| k.as_str() != "x-match" && (with_x || !k.as_str().starts_with("x-")))
        .map(|(k, want)| match headers.inner().get(k) {
            // A void binding value only asks for the header to be present.
            Some(_) if matches!(want, AMQPValue::Void) => true,
            Some(got) => same_value(want, got),
            None => false,
        });
    if any {
        pairs.any(|m| m)
    } else {
        pairs.all(|m| m)
    }
}

/// Equality as RabbitMQ sees it: strings compare by bytes whatever their AMQP type.
fn same_value(a: &AMQPValue, b: &AMQPValue) -> bool {
    match (string_bytes(a), string_bytes(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn string_bytes(v: &AMQPValue) -> Option<&[u8]> {
    match v {
        AMQPValue::LongString(s) => Some(s.as_bytes()),
        AMQPValue::ShortString(s) => Some(s.as_str().as_bytes()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(pairs: &[(&str, &str)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert((*k).into(), AMQPValue::LongString((*v).into()));
        }
        t
    }

    #[test]
    fn all_is_the_default_and_needs_every_pair() {
        let args = table(&[("format", "pdf"), ("type", "report")]);
        assert!(matches(
            &args,
            &table(&[("format", "pdf"), ("type", "report"), ("x", "y")])
        ));
        assert!(!matches(&args, &table(&[("format", "pdf")])));
        let args = table(&[("x-match", "all"), ("format", "pdf")]);
        assert!(!matches(&args, &table(&[("format", "zip")])));
    }

    #[test]
    fn any_needs_one_pair() {
        let args = table(&[("x-match", "any"), ("format", "pdf"), ("type", "report")]);
        assert!(matches(&args, &table(&[("type", "report")])));
        assert!(!matches(&args, &table(&[("type", "log")])));
        assert!(!matches(&args, &FieldTable::default()));
    }

    #[test]
    fn x_headers_are_ignored_unless_with_x() {
        let args = table(&[("x-match", "all"), ("x-tag", "1")]);
        assert!(matches(&args, &FieldTable::default()));
        let args = table(&[("x-match", "all-with-x"), ("x-tag", "1")]);
        assert!(!matches(&args, &FieldTable::default()));
        assert!(matches(&args, &table(&[("x-tag", "1")])));
    }
}
