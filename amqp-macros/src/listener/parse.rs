//! Parsing `#[rabbit_listener(...)]`'s arguments: `key = value`, a bare `flag`, or
//! `table(name = value, ...)`, separated by commas. Values are kept as expressions here and
//! checked against their key in `validate`; a key that does not parse is reported and skipped, so
//! that every mistake in the attribute shows up in one compile.

use proc_macro2::{Ident, TokenStream, TokenTree};
use syn::parse::{ParseStream, Parser};
use syn::punctuated::Punctuated;
use syn::{Expr, LitStr, Token, parenthesized};

use super::keys::Key;
use crate::errors::Errors;

/// One `key ...` of the attribute.
pub(crate) struct Entry {
    pub(crate) key: Key,
    /// The key as written (where errors about it point).
    pub(crate) ident: Ident,
    pub(crate) value: Value,
}

/// What follows a key.
pub(crate) enum Value {
    /// Nothing: a flag.
    Absent,
    /// `= expression`
    Expr(Expr),
    /// `(name = expression, ...)`
    Table(Vec<TableEntry>),
}

/// One `name = value` inside `arguments(...)` or `headers(...)`.
pub(crate) struct TableEntry {
    /// The name, written as an identifier (`kind`) or a string (`"x-kind"`).
    pub(crate) name: TableName,
    pub(crate) value: Expr,
}

/// A table entry's name.
#[derive(Clone)]
pub(crate) enum TableName {
    Ident(Ident),
    Str(LitStr),
}

impl TableName {
    pub(crate) fn value(&self) -> String {
        match self {
            TableName::Ident(ident) => ident.to_string(),
            TableName::Str(lit) => lit.value(),
        }
    }
}

impl quote::ToTokens for TableName {
    fn to_tokens(&self, tokens: &mut TokenStream) {
        match self {
            TableName::Ident(ident) => ident.to_tokens(tokens),
            TableName::Str(lit) => lit.to_tokens(tokens),
        }
    }
}

/// The attribute's entries in order; what did not parse is in `errors`.
pub(crate) fn entries(attr: TokenStream, errors: &mut Errors) -> Vec<Entry> {
    let parser = |input: ParseStream| {
        let mut entries = Vec::new();
        while !input.is_empty() {
            match entry(input) {
                Ok(entry) => entries.push(entry),
                Err(error) => {
                    errors.push(error);
                    skip_past_comma(input);
                    continue;
                }
            }
            if input.is_empty() {
                break;
            }
            if let Err(error) = input.parse::<Token![,]>() {
                errors.push(syn::Error::new(
                    error.span(),
                    "expected `,` between the keys of #[rabbit_listener(...)]",
                ));
                skip_past_comma(input);
            }
        }
        Ok(entries)
    };
    match parser.parse2(attr) {
        Ok(entries) => entries,
        Err(error) => {
            errors.push(error);
            Vec::new()
        }
    }
}

fn entry(input: ParseStream) -> syn::Result<Entry> {
    let (key, ident) = Key::parse(input)?;
    let value = if input.peek(Token![=]) {
        input.parse::<Token![=]>()?;
        Value::Expr(input.parse()?)
    } else if input.peek(syn::token::Paren) {
        let content;
        parenthesized!(content in input);
        let table =
            Punctuated::<TableEntry, Token![,]>::parse_terminated_with(&content, |input| {
                let name = if input.peek(LitStr) {
                    TableName::Str(input.parse()?)
                } else {
                    TableName::Ident(syn::ext::IdentExt::parse_any(input)?)
                };
                input.parse::<Token![=]>()?;
                Ok(TableEntry {
                    name,
                    value: input.parse()?,
                })
            })?;
        Value::Table(table.into_iter().collect())
    } else {
        Value::Absent
    };
    Ok(Entry { key, ident, value })
}

/// Skips what is left of a malformed entry, and the comma after it.
fn skip_past_comma(input: ParseStream) {
    let _ = input.step(|cursor| {
        let mut rest = *cursor;
        while let Some((tree, next)) = rest.token_tree() {
            rest = next;
            if matches!(&tree, TokenTree::Punct(p) if p.as_char() == ',') {
                break;
            }
        }
        Ok(((), rest))
    });
}
