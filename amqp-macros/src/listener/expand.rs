//! The code for one listener: the user's function unchanged, then, inside `const _: () = {…}`, a
//! handler that turns a delivery into the function's arguments and its result into an outcome,
//! and the listener's registration with `inventory`. Every path is absolute, so that the user's
//! `Result`, `Option` or `Box` do not get in the way.

use proc_macro2::{Literal, Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;

use super::validate::{Ack, Arg, Config, Handler, Listener};

pub(crate) fn listener(item: TokenStream, listener: &Listener) -> TokenStream {
    let handler = handler(&listener.handler);
    let definition = definition(&listener.config, &listener.handler);
    quote! {
        #item

        const _: () = {
            #handler

            ::amqp_core::__private::inventory::submit! {
                #definition
            }
        };
    }
}

/// `fn __amqp_listener_handler(Delivery) -> BoxFuture<Outcome>`: extractors, payload, call.
fn handler(handler: &Handler) -> TokenStream {
    let name = &handler.name;
    let args: Vec<_> = (0..handler.extractors.len())
        .map(|i| format_ident!("__arg{}", i))
        .collect();
    // Each check is spanned at its parameter's type, so that "not an extractor" or "not
    // Deserialize" points at that parameter (hygiene stays the call site's).
    let extract = handler.extractors.iter().zip(&args).map(|(ty, arg)| {
        let span = Span::call_site().located_at(ty.span());
        quote_spanned! {span=>
            let #arg = match <#ty as ::amqp_core::FromDelivery>::from_delivery(&__delivery) {
                ::core::result::Result::Ok(value) => value,
                ::core::result::Result::Err(error) => return ::amqp_core::Outcome::Failed(error),
            };
        }
    });
    let payload_ty = &handler.payload;
    let payload_span = Span::call_site().located_at(payload_ty.span());
    let payload = quote_spanned! {payload_span=>
        let __payload = match ::amqp_core::Delivery::payload::<#payload_ty>(&__delivery) {
            ::core::result::Result::Ok(value) => value,
            ::core::result::Result::Err(error) => return ::amqp_core::Outcome::Undecodable(error),
        };
    };
    let output_span = handler.output.as_ref().map_or_else(Span::call_site, |ty| {
        Span::call_site().located_at(ty.span())
    });
    let into_outcome = quote_spanned! {output_span=>
        ::amqp_core::IntoOutcome::into_outcome(#name(#(#args,)* __payload).await)
    };
    quote! {
        fn __amqp_listener_handler(
            __delivery: ::amqp_core::Delivery,
        ) -> ::amqp_core::__private::BoxFuture<'static, ::amqp_core::Outcome> {
            ::std::boxed::Box::pin(async move {
                #(#extract)*
                #payload
                ::core::mem::drop(__delivery);
                #into_outcome
            })
        }
    }
}

/// The `ListenerDefinition` that registers it.
fn definition(config: &Config, handler: &Handler) -> TokenStream {
    let name = &handler.name;
    let id = match &config.id {
        Some(id) => quote!(#id),
        None => {
            let name = name.to_string();
            quote!(::core::concat!(::core::module_path!(), "::", #name))
        }
    };
    let queue = &config.queue;
    let exchange = match &config.exchange {
        Some(exchange) => quote!(::core::option::Option::Some(#exchange)),
        None => quote!(::core::option::Option::None),
    };
    let exchange_type = config.exchange_type;
    let keys = &config.keys;
    let durable = config.durable;
    let exclusive = config.exclusive;
    let auto_delete = config.auto_delete;
    let queue_arguments = arguments(&config.queue_arguments);
    let binding_arguments = arguments(&config.binding_arguments);
    let prefetch = optional(config.prefetch.map(Literal::u16_unsuffixed));
    let concurrency = optional(config.concurrency.map(Literal::usize_unsuffixed));
    let ack = match config.ack {
        Ack::Auto => quote!(::amqp_core::AckMode::Auto),
        Ack::Manual => quote!(::amqp_core::AckMode::Manual),
        Ack::None => quote!(::amqp_core::AckMode::None),
    };
    let idempotent = config.idempotent;
    let partitions = optional(config.partitions.map(Literal::u16_unsuffixed));
    let rate = match config.rate {
        Some((count, per_ms)) => quote!(::core::option::Option::Some(
            ::amqp_core::__private::rate(#count, #per_ms)
        )),
        None => quote!(::core::option::Option::None),
    };
    let circuit_breaker = match &config.circuit_breaker {
        Some(b) => {
            let (percent, min_calls, window_ms, cool_down_ms) =
                (b.failure_percent, b.min_calls, b.window_ms, b.cool_down_ms);
            quote!(::core::option::Option::Some(
                ::amqp_core::__private::circuit_breaker(#percent, #min_calls, #window_ms, #cool_down_ms)
            ))
        }
        None => quote!(::core::option::Option::None),
    };
    let retry = match &config.retry {
        Some(r) => {
            let (attempts, initial_ms, multiplier, max_ms) =
                (r.max_attempts, r.initial_ms, r.multiplier, r.max_ms);
            quote!(::core::option::Option::Some(
                ::amqp_core::__private::retry(#attempts, #initial_ms, #multiplier, #max_ms)
            ))
        }
        None => quote!(::core::option::Option::None),
    };
    quote! {
        ::amqp_core::__private::ListenerDefinition {
            id: #id,
            queue: #queue,
            exchange: #exchange,
            exchange_type: #exchange_type,
            keys: &[#(#keys),*],
            durable: #durable,
            exclusive: #exclusive,
            auto_delete: #auto_delete,
            queue_arguments: &[#(#queue_arguments),*],
            binding_arguments: &[#(#binding_arguments),*],
            prefetch: #prefetch,
            concurrency: #concurrency,
            ack: #ack,
            idempotent: #idempotent,
            rate: #rate,
            circuit_breaker: #circuit_breaker,
            retry: #retry,
            partitions: #partitions,
            handler: __amqp_listener_handler,
            location: ::core::concat!(::core::file!(), ":", ::core::line!()),
        }
    }
}

fn arguments(arguments: &[(String, Arg)]) -> Vec<TokenStream> {
    arguments
        .iter()
        .map(|(name, value)| {
            let value = match value {
                Arg::Str(s) => quote!(::amqp_core::__private::ArgValue::Str(#s)),
                Arg::Int(n) => {
                    let n = Literal::i64_unsuffixed(*n);
                    quote!(::amqp_core::__private::ArgValue::Int(#n))
                }
                Arg::Bool(b) => quote!(::amqp_core::__private::ArgValue::Bool(#b)),
                Arg::Float(f) => quote!(::amqp_core::__private::ArgValue::Float(#f)),
            };
            quote!((#name, #value))
        })
        .collect()
}

fn optional(value: Option<Literal>) -> TokenStream {
    match value {
        Some(value) => quote!(::core::option::Option::Some(#value)),
        None => quote!(::core::option::Option::None),
    }
}
