//! `#[rabbit_listener]`: parse the attribute, validate it with the function, expand.

mod expand;
mod keys;
mod parse;
mod validate;
mod values;

use proc_macro2::TokenStream;
use quote::quote;
use syn::ItemFn;

use crate::errors::Errors;

pub(crate) fn rabbit_listener(attr: TokenStream, item: TokenStream) -> TokenStream {
    let function = match syn::parse2::<ItemFn>(item.clone()) {
        Ok(function) => function,
        Err(error) => {
            let error = syn::Error::new(
                error.span(),
                "#[rabbit_listener] goes on an `async fn` with a body: write `async fn name(event: MyEvent) { ... }`",
            )
            .into_compile_error();
            return quote! { #item #error };
        }
    };
    let mut errors = Errors::default();
    let entries = parse::entries(attr, &mut errors);
    let listener = validate::listener(entries, &function, &mut errors);
    match (errors.finish(), listener) {
        (Ok(()), Some(listener)) => expand::listener(item, &listener),
        (Err(error), _) => {
            // The function is kept, so that its callers and the editor still see it.
            let error = error.into_compile_error();
            quote! { #item #error }
        }
        (Ok(()), None) => unreachable!("validation failed without saying why"),
    }
}
