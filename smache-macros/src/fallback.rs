//! What to emit when the input is wrong: the user's item, unchanged, and the
//! errors — so the item still exists for IDEs and follow-on code, and the
//! real error is not drowned by others.

use proc_macro2::TokenStream;
use quote::ToTokens;

pub(crate) fn item_with_errors(item: impl ToTokens, error: &syn::Error) -> TokenStream {
    let mut tokens = error.to_compile_error();
    item.to_tokens(&mut tokens);
    tokens
}
