//! Procedural macros of [smache](https://docs.rs/smache). Use them through
//! the `smache` crate (`smache::computed`, `smache::Entity`), which documents
//! them; this crate's version is pinned by `smache`.
//!
//! Each macro is a pipeline: `args` parses the attribute, `validate` checks
//! the item against it, `expand` generates the code, and `fallback` emits
//! the unchanged item beside the errors so IDEs keep working.

mod args;
mod entity;
mod expand;
mod fallback;
#[cfg(test)]
mod golden;
mod validate;

use proc_macro::TokenStream;

/// Caches a function's results; see the `smache` crate documentation.
#[proc_macro_attribute]
pub fn computed(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::computed(args.into(), item.into()).into()
}

/// Implements `smache::Entity`; see the `smache` crate documentation.
#[proc_macro_derive(Entity, attributes(entity))]
pub fn derive_entity(input: TokenStream) -> TokenStream {
    entity::derive(input.into()).into()
}
