//! Every error found in one expansion, reported together (the way serde_derive's `Ctxt` does).

use std::fmt::Display;

use proc_macro2::Span;
use quote::ToTokens;

/// Collects errors so that one compile shows all of them, each at its own tokens.
#[derive(Default)]
pub(crate) struct Errors {
    all: Option<syn::Error>,
    count: usize,
}

impl Errors {
    /// Adds an error.
    pub(crate) fn push(&mut self, error: syn::Error) {
        self.count += (&error).into_iter().count();
        match &mut self.all {
            Some(all) => all.combine(error),
            None => self.all = Some(error),
        }
    }

    /// Adds an error pointing at `tokens`.
    pub(crate) fn spanned(&mut self, tokens: impl ToTokens, message: impl Display) {
        self.push(syn::Error::new_spanned(tokens, message));
    }

    /// Adds an error at `span` (for places that have no tokens of their own, like the attribute).
    pub(crate) fn at(&mut self, span: Span, message: impl Display) {
        self.push(syn::Error::new(span, message));
    }

    /// How many errors so far (a check compares it before and after).
    pub(crate) fn count(&self) -> usize {
        self.count
    }

    /// `Err` with everything collected, if anything was.
    pub(crate) fn finish(self) -> syn::Result<()> {
        match self.all {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}
