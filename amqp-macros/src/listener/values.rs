//! Each value of the attribute checked against its key's [`Kind`] (`prefetch` takes an integer,
//! `key` a string or a list, ...), with the shared check that no key is given twice.

use std::collections::BTreeMap;

use proc_macro2::Ident;
use quote::ToTokens;
use syn::{Expr, ExprLit, Lit, LitStr, UnOp};

use super::keys::{Key, Kind};
use super::parse::{Entry, TableName, Value};
use super::validate::Arg;
use crate::errors::Errors;

/// A value that has the shape its key asks for.
pub(crate) enum Checked {
    Str(LitStr),
    Bool(bool),
    Int(i128, Expr),
    StrList(Vec<LitStr>),
    Table(Vec<(TableName, Arg)>),
}

/// The attribute's values by key, each checked against its key's [`Kind`].
pub(crate) struct Values {
    /// Whether some of the attribute did not parse.
    pub(crate) unparsed: bool,
    /// Keys that were written, whether or not their value was right.
    given: BTreeMap<Key, Ident>,
    checked: BTreeMap<Key, Checked>,
}

impl Values {
    pub(crate) fn check(entries: Vec<Entry>, errors: &mut Errors) -> Self {
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

    pub(crate) fn given(&self, key: Key) -> bool {
        self.given.contains_key(&key)
    }

    /// The key as written, if it was.
    pub(crate) fn ident(&self, key: Key) -> Option<&Ident> {
        self.given.get(&key)
    }

    pub(crate) fn str(&self, key: Key) -> Option<&LitStr> {
        match self.checked.get(&key) {
            Some(Checked::Str(lit)) => Some(lit),
            _ => None,
        }
    }

    pub(crate) fn bool(&self, key: Key) -> Option<bool> {
        match self.checked.get(&key) {
            Some(Checked::Bool(b)) => Some(*b),
            _ => None,
        }
    }

    pub(crate) fn list(&self, key: Key) -> Option<&[LitStr]> {
        match self.checked.get(&key) {
            Some(Checked::StrList(list)) => Some(list),
            _ => None,
        }
    }

    pub(crate) fn table(&self, key: Key) -> Option<&[(TableName, Arg)]> {
        match self.checked.get(&key) {
            Some(Checked::Table(table)) => Some(table),
            _ => None,
        }
    }

    /// An integer key's value, which must lie in `min..=max`.
    pub(crate) fn int(
        &self,
        key: Key,
        min: i128,
        max: i128,
        errors: &mut Errors,
    ) -> Option<(i128, &Expr)> {
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
    pub(crate) fn choice(
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
                            "a value in `{}(...)` is a string, a number, `true` or `false`: write e.g. `{}`",
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

/// An argument value (`"text"`, `5`, `-5`, `2.5`, `true`).
fn arg(expr: &Expr) -> Option<Arg> {
    if let Some(n) = int(expr) {
        return n.ok().and_then(|n| i64::try_from(n).ok()).map(Arg::Int);
    }
    if let Expr::Unary(unary) = expr {
        if let (UnOp::Neg(_), Some(Arg::Float(f))) = (unary.op, arg(&unary.expr)) {
            return Some(Arg::Float(-f));
        }
    }
    match lit(expr)? {
        Lit::Float(f) => f.base10_parse::<f64>().ok().map(Arg::Float),
        Lit::Str(s) => Some(Arg::Str(s.value())),
        Lit::Bool(b) => Some(Arg::Bool(b.value)),
        _ => None,
    }
}
