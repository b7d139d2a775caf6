//! `#[derive(Entity)]`.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Attribute, Data, DeriveInput, Field, Fields, LitStr, Path, Token};

use crate::args::Errors;
use crate::fallback;

/// The derive's entry point.
pub(crate) fn derive(input: TokenStream) -> TokenStream {
    let input: DeriveInput = match syn::parse2(input) {
        Ok(input) => input,
        Err(err) => return err.to_compile_error(),
    };
    match expand(&input) {
        Ok(tokens) => tokens,
        // A derive cannot re-emit the item: only the errors.
        Err(err) => fallback::item_with_errors(TokenStream::new(), &err),
    }
}

struct Options {
    collection: Option<LitStr>,
    krate: Option<Path>,
}

fn expand(input: &DeriveInput) -> syn::Result<TokenStream> {
    let mut errors = Errors::default();
    let options = match container_options(&input.attrs) {
        Ok(options) => Some(options),
        Err(err) => {
            errors.add(err);
            None
        }
    };
    let id_field = match id_field(input) {
        Ok(field) => Some(field),
        Err(err) => {
            errors.add(err);
            None
        }
    };
    let collection = match options.as_ref().map(|o| o.collection.clone()) {
        Some(Some(collection)) => Some(collection),
        Some(None) => {
            errors.add(syn::Error::new(
                input.ident.span(),
                "missing `#[entity(collection = \"…\")]`: smache needs the MongoDB collection of the documents",
            ));
            None
        }
        None => None,
    };
    errors.finish()?;
    let (Some(options), Some(field), Some(collection)) = (options, id_field, collection) else {
        unreachable!("errors were reported above");
    };

    let krate = options.krate.unwrap_or_else(|| syn::parse_quote!(::smache));
    let ident = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    // Every token at the field's type, where an id type that is no
    // `IntoEntityId` is reported.
    let mut member = field.ident.clone().expect("named field");
    member.set_span(field.ty.span());
    let into_entity_id = crate::expand::respan(quote!(#krate::IntoEntityId), field.ty.span());
    let id_type = &field.ty;
    let id = quote_spanned! {field.ty.span()=>
        #into_entity_id::to_entity_id(&self.#member)
    };
    Ok(quote! {
        impl #impl_generics #krate::Entity for #ident #ty_generics #where_clause {
            const COLLECTION: &'static str = #collection;

            type Id = #id_type;

            fn id(&self) -> #krate::EntityId {
                #id
            }
        }
    })
}

fn container_options(attrs: &[Attribute]) -> syn::Result<Options> {
    let mut options = Options {
        collection: None,
        krate: None,
    };
    for attr in attrs.iter().filter(|a| a.path().is_ident("entity")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("collection") {
                let lit: LitStr = meta.value()?.parse()?;
                if options.collection.is_some() {
                    return Err(meta.error("duplicate option `collection`"));
                }
                let name = lit.value();
                if name.is_empty() || name.contains('$') || name.contains('\0') {
                    return Err(syn::Error::new(
                        lit.span(),
                        "not a valid MongoDB collection name",
                    ));
                }
                options.collection = Some(lit);
                Ok(())
            } else if meta.input.peek(Token![crate]) || meta.path.is_ident("crate") {
                if options.krate.is_some() {
                    return Err(meta.error("duplicate option `crate`"));
                }
                options.krate = Some(meta.value()?.call(Path::parse_mod_style)?);
                Ok(())
            } else {
                Err(meta.error("unknown option; expected `collection = \"…\"` or `crate = path`"))
            }
        })?;
    }
    Ok(options)
}

/// The field holding `_id`: marked `#[entity(id)]`, else named `_id`, else
/// renamed to `_id` by serde, else named `id`.
fn id_field(input: &DeriveInput) -> syn::Result<&Field> {
    const NAMED_FIELDS: &str = "#[derive(Entity)] needs a struct with named fields";
    let fields = match &input.data {
        Data::Struct(data) => match &data.fields {
            Fields::Named(fields) => &fields.named,
            Fields::Unnamed(fields) => return Err(syn::Error::new_spanned(fields, NAMED_FIELDS)),
            Fields::Unit => return Err(syn::Error::new(input.ident.span(), NAMED_FIELDS)),
        },
        Data::Enum(data) => return Err(syn::Error::new(data.enum_token.span, NAMED_FIELDS)),
        Data::Union(data) => return Err(syn::Error::new(data.union_token.span, NAMED_FIELDS)),
    };
    let mut marked = Vec::new();
    for field in fields {
        for attr in field.attrs.iter().filter(|a| a.path().is_ident("entity")) {
            attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("id") {
                    marked.push((field, attr));
                    Ok(())
                } else {
                    Err(meta.error("unknown field option; expected `id`"))
                }
            })?;
        }
    }
    if let Some((_, second)) = marked.get(1) {
        return Err(syn::Error::new_spanned(
            second,
            "only one field can be `#[entity(id)]`",
        ));
    }
    let named = |name: &str| {
        fields
            .iter()
            .find(|f| f.ident.as_ref().is_some_and(|i| i == name))
    };
    marked
        .first()
        .map(|(field, _)| *field)
        .or_else(|| named("_id"))
        .or_else(|| fields.iter().find(|f| serde_renamed_to_id(f)))
        .or_else(|| named("id"))
        .ok_or_else(|| {
            syn::Error::new(
                input.ident.span(),
                "no id field: name it `id` or `_id`, or mark the field that holds the document's `_id` with `#[entity(id)]`",
            )
        })
}

fn serde_renamed_to_id(field: &Field) -> bool {
    let mut renamed = false;
    for attr in field.attrs.iter().filter(|a| a.path().is_ident("serde")) {
        let _ = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("rename") {
                if let Ok(value) = meta.value() {
                    if let Ok(lit) = value.parse::<LitStr>() {
                        renamed |= lit.value() == "_id";
                    }
                }
            } else if meta.input.peek(Token![=]) {
                // Skip the value of options we do not read.
                let _ = meta.value()?.parse::<syn::Expr>()?;
            } else if meta.input.peek(syn::token::Paren) {
                let _ = meta.input.parse::<proc_macro2::Group>();
            }
            Ok(())
        });
    }
    renamed
}
