//! Code generation for `#[computed]`.
//!
//! For `#[computed(User, Raw)] async fn greet(user: &User, lang: &str) -> String`
//! this emits the function, with the signature the user wrote and a body that
//! goes through the cache, and beside it a module of the same name:
//!
//! ```text
//! pub mod greet {
//!     pub static SPEC: FnSpec = …;                      // name, version, ttl, kinds
//!     pub fn key(user: &User, lang: &str) -> Result<CacheKey>;
//!     pub async fn is_fresh(user: &User, lang: &str) -> Result<bool>;
//!     pub async fn invalidate(user: &User, lang: &str) -> Result<bool>;
//!     pub async fn submit(user: &User, lang: &str) -> Result<Submitted<String>>;
//! }
//! ```
//!
//! The original body runs inside an `async move` block (or a `move` closure
//! for `fn`) whose type is pinned to the declared return type, so `return`
//! and `?` behave as they did.

use proc_macro2::{Group, Span, TokenStream, TokenTree};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::visit_mut::VisitMut;
use syn::{Ident, ItemFn, Path, Type};

use crate::args::{Args, Kind};
use crate::fallback;
use crate::validate::{self, Checked};

/// The `#[computed]` entry point.
pub(crate) fn computed(args: TokenStream, item: TokenStream) -> TokenStream {
    let item: ItemFn = match syn::parse2(item.clone()) {
        Ok(item) => item,
        Err(err) => return fallback::item_with_errors(item, &err),
    };
    let args = match Args::parse(args) {
        Ok(args) => args,
        Err(err) => return fallback::item_with_errors(&item, &err),
    };
    match validate::check(&args, &item.sig) {
        Ok(checked) => generate(&args, &checked, &item),
        Err(err) => fallback::item_with_errors(&item, &err),
    }
}

fn generate(args: &Args, checked: &Checked<'_>, item: &ItemFn) -> TokenStream {
    let krate: Path = args
        .krate
        .as_ref()
        .map_or_else(|| syn::parse_quote!(::smache), |k| k.value.clone());
    let private = quote!(#krate::__private);
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = item;
    let fn_ident = &sig.ident;
    let module = fn_ident;
    let ret = checked.ret;
    let lifetimes = &sig.generics;

    let name = match &args.name {
        Some(name) => {
            let name = &name.value;
            quote!(#name)
        }
        // SPEC lives in the generated module named after the function, so
        // there `module_path!()` is exactly `path::to::function`.
        None => quote!(::core::module_path!()),
    };
    let version = args.version.as_ref().map_or(1, |v| v.value);
    let ttl_secs = args.ttl_secs.as_ref().map_or(0, |t| t.value);
    let sources = args
        .sources
        .iter()
        .flat_map(|s| &s.value)
        .map(|ty| quote_spanned!(ty.span()=> <#ty as #krate::Entity>::COLLECTION));
    let refresh = if args.mark_stale.as_ref().is_some_and(|m| m.value) {
        quote!(#krate::Refresh::MarkStale)
    } else {
        quote!(#krate::Refresh::WriteThrough)
    };
    let store = match args.store_mongo.as_ref().map(|s| s.value) {
        Some(true) => quote!(.__store(#krate::ValueStore::Mongo)),
        Some(false) => quote!(.__store(#krate::ValueStore::Redis)),
        None => quote!(),
    };
    let relation_sources = args
        .relations
        .iter()
        .flat_map(|r| &r.value)
        .map(|relation| {
            let source = &relation.source;
            quote_spanned!(source.span()=> <#source as #krate::Entity>::COLLECTION)
        });
    let recompute = recompute(checked, args, fn_ident, sig.asyncness.is_some(), &krate);

    let idents: Vec<_> = checked.args.iter().map(|arg| arg.ident).collect();
    let tys: Vec<_> = checked.args.iter().map(|arg| arg.ty).collect();
    let kinds = checked.args.iter().map(|arg| match arg.kind {
        Kind::Raw(_) => quote!(#krate::ArgKind::Raw),
        Kind::Entity(entity) => quote_spanned! {entity.span()=>
            #krate::ArgKind::Entity { collection: <#entity as #krate::Entity>::COLLECTION }
        },
    });
    let pushes = checked.args.iter().map(|arg| {
        let ident = arg.ident;
        let ty = arg.ty;
        match arg.kind {
            Kind::Raw(_) => quote_spanned! {ty.span()=> .raw::<#ty>(#ident) },
            Kind::Entity(entity) => {
                let entity_ref = quote_spanned! {ty.span()=>
                    <#ty as #private::EntityArg<#entity>>::entity_ref(#ident)
                };
                quote_spanned! {entity.span()=> .entity::<#entity>(#entity_ref) }
            }
        }
    });

    // The call's `Mode<R>` bound (the return value must be `Serialize +
    // DeserializeOwned`) is reported at the callee: give every token of it,
    // the `::smache` path included, the return type's span.
    let private_at_ret = respan(private.clone(), ret.span());
    let mode = if checked.returns_result {
        quote_spanned!(ret.span()=> #private_at_ret::OkOnly)
    } else {
        quote_spanned!(ret.span()=> #private_at_ret::Plain)
    };
    let key_var = format_ident!("__smache_key", span = Span::mixed_site());
    let ret_var = format_ident!("__smache_ret", span = Span::mixed_site());
    let body = if sig.asyncness.is_some() {
        let call = quote_spanned!(ret.span()=> #private_at_ret::call_async::<#mode, #ret>);
        // Boxed: a computed function that awaits another would otherwise
        // hold the callee's whole future inline, and nesting multiplies
        // future sizes (and, in debug builds, stack use).
        quote_spanned! {ret.span()=>
            #call(&#module::SPEC, #key_var, ::std::boxed::Box::pin(async move {
                let #ret_var: #ret = #block;
                #[allow(unreachable_code)]
                #ret_var
            }))
            .await
        }
    } else {
        let call = quote_spanned!(ret.span()=> #private_at_ret::call_sync::<#mode, #ret>);
        quote_spanned! {ret.span()=>
            #call(&#module::SPEC, #key_var, move || -> #ret #block)
        }
    };

    let value_mode = if checked.returns_result {
        quote!(#private::OkOnly)
    } else {
        quote!(#private::Plain)
    };
    let submit = quote_spanned! {ret.span()=>
        #private_at_ret::submit::<#mode, #ret>(&SPEC, __key(#(&#idents),*)).await
    };
    let fn_name = fn_ident.to_string();
    let module_doc = format!("Cache helpers of [`{fn_name}()`], generated by `#[computed]`.");
    quote! {
        #(#attrs)*
        #vis #sig {
            let #key_var = #module::__key(#(&#idents),*);
            #body
        }

        #[doc = #module_doc]
        #[allow(dead_code, unused_imports, clippy::needless_lifetimes)]
        #vis mod #module {
            use super::*;

            /// The static description of the function: name, version, TTL, argument kinds.
            pub static SPEC: #krate::FnSpec = #krate::FnSpec::__new(
                #name,
                #version,
                #ttl_secs,
                &[#(#kinds),*],
            )
            .__sources(&[#(#sources),*])
            .__relations(&[#(#relation_sources),*])
            .__mode(#refresh)
            #store;

            #[doc(hidden)]
            pub fn __key #lifetimes (#(#idents: &#tys),*) -> #krate::Result<#krate::CacheKey> {
                #private::KeyBuilder::new(&SPEC) #(#pushes)* .finish()
            }

            /// The cache key of the value for these arguments.
            ///
            /// # Errors
            /// When a `Raw` argument cannot be serialized.
            pub fn key #lifetimes (#(#idents: #tys),*) -> #krate::Result<#krate::CacheKey> {
                __key(#(&#idents),*)
            }

            /// Whether a value is cached for these arguments (in [`Smache::current`](#krate::Smache::current)).
            ///
            /// # Errors
            /// When the key cannot be built or the store cannot be reached.
            pub async fn is_fresh #lifetimes (#(#idents: #tys),*) -> #krate::Result<bool> {
                let key = __key(#(&#idents),*)?;
                #krate::Smache::current().is_fresh(&key).await
            }

            /// Removes the cached value for these arguments (in [`Smache::current`](#krate::Smache::current));
            /// returns whether one was stored.
            ///
            /// # Errors
            /// When the key cannot be built or the store cannot be reached.
            pub async fn invalidate #lifetimes (#(#idents: #tys),*) -> #krate::Result<bool> {
                let key = __key(#(&#idents),*)?;
                #krate::Smache::current().invalidate(&key).await
            }

            /// Returns at once: the cached value, or a task an executor
            /// runs to compute it (joining the task already pending for
            /// these arguments, if any). See [`smache::task`](#krate::task).
            ///
            /// # Errors
            /// When the key cannot be built, the instance has no Redis
            /// store, or Redis cannot be reached.
            pub async fn submit #lifetimes (#(#idents: #tys),*) -> #krate::Result<
                #krate::Submitted<<#value_mode as #private::ValueType<#ret>>::Value>,
            > {
                #submit
            }
        }

        // Beside the function rather than in its module, so the function is
        // in scope even when it is declared inside a block. After the module,
        // so that type errors in the arguments are reported there first.
        const _: () = {
            #recompute
        };
    }
}

/// The registration that lets an executor recompute a value: decode each
/// argument from the job (entities loaded fresh from MongoDB, raw values
/// from their JSON), then call the function, which stores the result.
fn recompute(
    checked: &Checked<'_>,
    args: &Args,
    fn_ident: &syn::Ident,
    is_async: bool,
    krate: &Path,
) -> TokenStream {
    let private = quote!(#krate::__private);
    let reader = format_ident!("__smache_args", span = Span::mixed_site());
    let job = format_ident!("__smache_job", span = Span::mixed_site());
    let mut decode = Vec::new();
    let mut pass = Vec::new();
    for (index, arg) in checked.args.iter().enumerate() {
        let var = format_ident!("__smache_arg{}", index, span = Span::mixed_site());
        let ty = arg.ty;
        let (reference, target) = match ty {
            Type::Reference(r) => (Some(r.mutability.is_some()), &*r.elem),
            other => (None, other),
        };
        match arg.kind {
            Kind::Entity(entity) => {
                // At the kind, like every other use of `#entity: Entity`, so
                // that a kind that is no entity is reported there.
                let reader = Ident::new(
                    "__smache_args",
                    Span::mixed_site().located_at(entity.span()),
                );
                decode.push(quote_spanned! {entity.span()=>
                    let mut #var: #entity = (&mut #reader).entity::<#entity>().await?;
                });
                // At the argument's type, where a type that is no form of
                // the entity is reported.
                let var_at_ty =
                    Ident::new(&var.to_string(), Span::mixed_site().located_at(ty.span()));
                pass.push(match reference {
                    Some(false) => quote_spanned!(ty.span()=> &#var_at_ty),
                    Some(true) => quote_spanned!(ty.span()=> &mut #var_at_ty),
                    None => quote_spanned! {ty.span()=>
                        <#ty as #private::FromLoaded<#entity>>::from_loaded(#var)
                    },
                });
            }
            Kind::Raw(_) => {
                let owned = owned_type(target);
                decode.push(quote_spanned! {ty.span()=>
                    let mut #var: #owned = #reader.raw::<#owned>()?;
                });
                pass.push(match reference {
                    Some(false) => quote!(&#var),
                    Some(true) => quote!(&mut #var),
                    None => quote!(#var),
                });
            }
        }
    }
    let call = if is_async {
        quote!(#job.run(#fn_ident(#(#pass),*)).await)
    } else {
        quote!(#job.run_sync(|| #fn_ident(#(#pass),*)))
    };
    let target = checked.args.iter().find_map(|arg| match arg.kind {
        Kind::Entity(entity) => Some(entity),
        Kind::Raw(_) => None,
    });
    let mut mappers = Vec::new();
    let mut relations = Vec::new();
    if let (Some(target), Some(declared)) = (target, &args.relations) {
        for (index, relation) in declared.value.iter().enumerate() {
            let mapper = format_ident!("__smache_relation{}", index, span = Span::mixed_site());
            let source = &relation.source;
            let map = &relation.map;
            mappers.push(quote_spanned! {map.span()=>
                fn #mapper(
                    document: #private::bson::Document,
                ) -> #krate::Result<::std::vec::Vec<#krate::EntityId>> {
                    let source: #source = #private::decode_document(document)?;
                    let map = #map;
                    ::std::result::Result::Ok(#private::IntoEntityIds::<
                        <<#target as #krate::Entity>::Id as #private::IdKind>::Kind,
                    >::into_entity_ids(map(&source)))
                }
            });
            relations.push(quote! {
                #private::Relation::new(
                    <#source as #krate::Entity>::COLLECTION,
                    <#target as #krate::Entity>::COLLECTION,
                    #mapper,
                )
            });
        }
    }
    quote! {
        #(#mappers)*

        #[allow(unused_mut, clippy::needless_borrow)]
        fn __recompute(#job: #private::Job) -> #private::LocalBoxFuture<#krate::Result<()>> {
            ::std::boxed::Box::pin(async move {
                let mut #reader = #job.args();
                #(#decode)*
                #call
            })
        }

        #private::inventory::submit! {
            #private::Registration::new(&#fn_ident::SPEC, __recompute)
                .with_relations(&[#(#relations),*])
        }
    }
}

/// The owned type an executor decodes for a raw argument of type `ty` (or
/// `&ty`): `str` → `String`, `[T]` → `Vec<T>`, `Path` → `PathBuf`, `OsStr` →
/// `OsString`; other types as they are, with every lifetime made `'static`.
fn owned_type(ty: &Type) -> TokenStream {
    match ty {
        Type::Slice(slice) => {
            let elem = owned_type(&slice.elem);
            quote!(::std::vec::Vec<#elem>)
        }
        Type::Path(path) if path.qself.is_none() && path.path.is_ident("str") => {
            quote!(::std::string::String)
        }
        Type::Path(path) if path.qself.is_none() && path.path.is_ident("Path") => {
            quote!(::std::path::PathBuf)
        }
        Type::Path(path) if path.qself.is_none() && path.path.is_ident("OsStr") => {
            quote!(::std::ffi::OsString)
        }
        other => {
            let mut other = other.clone();
            StaticLifetimes.visit_type_mut(&mut other);
            quote!(#other)
        }
    }
}

/// `tokens` with every span set to `span`, so that errors about them point
/// at the user's code rather than at the whole attribute.
pub(crate) fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut tree| {
            if let TokenTree::Group(group) = &tree {
                let mut inner = Group::new(group.delimiter(), respan(group.stream(), span));
                inner.set_span(span);
                tree = TokenTree::Group(inner);
            } else {
                tree.set_span(span);
            }
            tree
        })
        .collect()
}

struct StaticLifetimes;

impl syn::visit_mut::VisitMut for StaticLifetimes {
    fn visit_lifetime_mut(&mut self, lifetime: &mut syn::Lifetime) {
        *lifetime = syn::Lifetime::new("'static", lifetime.span());
    }
}
