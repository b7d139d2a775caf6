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
//! The function's body is emitted once, unchanged, as a private function
//! `__smache_body` nested in the wrapper (so `return` and `?` behave as they
//! did). The wrapper hands the cache a closure that calls it, run only on a
//! miss; the executor's recompute, registered beside it, calls it with a
//! job's arguments. The expansion of the README's `dashboard` is kept in
//! `tests/expand/dashboard.expanded.rs`.

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
        .map(|ty| quote_spanned!(ty.span()=> <#ty as #krate::Entity>::COLLECTION))
        .collect::<Vec<_>>();
    let sources = (!sources.is_empty()).then(|| quote!(.__sources(&[#(#sources),*])));
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
        })
        .collect::<Vec<_>>();
    let relation_sources =
        (!relation_sources.is_empty()).then(|| quote!(.__relations(&[#(#relation_sources),*])));

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
            Kind::Raw(_) => quote_spanned! {ty.span()=>
                .raw_as::<#ty, _>(#ident, #private::raw_kind!(#ty))
            },
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
    // the `::smache` path included, the return type's span. The wrapper and
    // the recompute both go through `__smache_cached`, so that the bound is
    // checked, and reported, once.
    let private_at_ret = respan(private.clone(), ret.span());
    let mode = if checked.returns_result {
        quote_spanned!(ret.span()=> #private_at_ret::OkOnly)
    } else {
        quote_spanned!(ret.span()=> #private_at_ret::Plain)
    };
    let is_async = sig.asyncness.is_some();
    let entry = if is_async {
        quote_spanned!(ret.span()=> #private_at_ret::call_async::<#mode, #ret, _, _, _>)
    } else {
        quote_spanned!(ret.span()=> #private_at_ret::call_sync::<#mode, #ret, _>)
    };
    let dot_await = is_async.then(|| quote_spanned!(ret.span()=> .await));
    let body_fn = Ident::new(
        "__smache_body",
        Span::mixed_site().located_at(sig.ident.span()),
    );
    let cached = Ident::new("__smache_cached", Span::mixed_site());
    let lifetime_params: Vec<_> = sig.generics.lifetimes().collect();
    // The async one is not an `async fn` but returns the entry's answer:
    // a hit's value at once, which the wrapper returns with no future
    // around it, or the future of the rest of the call. (An executor's
    // recompute awaits the answer as it is, an `IntoFuture`.)
    let job_lifetime = syn::Lifetime::new("'__smache_job", Span::mixed_site());
    let lifetime_names: Vec<_> = lifetime_params
        .iter()
        .map(|param| &param.lifetime)
        .collect();
    let (returns, compute_params, compute_bounds) = if is_async {
        (
            quote_spanned! {ret.span()=>
                #private_at_ret::Answer<
                    #ret,
                    impl ::core::future::Future<Output = #ret>
                        + use<#job_lifetime, #(#lifetime_names,)* F, Fut>,
                >
            },
            quote!(<#job_lifetime, #(#lifetime_params,)* F, Fut>),
            quote!(F: ::core::ops::FnOnce() -> Fut, Fut: ::core::future::Future<Output = #ret>),
        )
    } else {
        (
            quote!(#ret),
            quote!(<#job_lifetime, #(#lifetime_params,)* F>),
            quote!(F: ::core::ops::FnOnce() -> #ret),
        )
    };
    let mut body_sig = sig.clone();
    body_sig.ident = body_fn.clone();
    let mut wrapper_sig = sig.clone();
    for input in &mut wrapper_sig.inputs {
        if let syn::FnArg::Typed(typed) = input {
            if let syn::Pat::Ident(pat) = &mut *typed.pat {
                // Only the body binds its arguments mutably.
                pat.mutability = None;
            }
        }
    }
    // At the return type, like the entry it calls: whatever rustc says
    // about the return value's bounds points there, once.
    let cached_fn = quote_spanned! {ret.span()=>
        #[allow(clippy::needless_lifetimes)]
        fn #cached #compute_params (
            key: #krate::Result<#krate::CacheKey>,
            compute: F,
            job: ::core::option::Option<&#job_lifetime #private::Job>,
        ) -> #returns
        where
            #compute_bounds
        {
            let keep = #private_at_ret::keep!(#mode, #ret);
            #entry(&#module::SPEC, key, compute, job, keep)
        }
    };
    let call = Call {
        cached: &cached,
        dot_await: &dot_await,
        body_fn: &body_fn,
        module,
    };
    let recompute = recompute(checked, args, &call, &krate);

    let value_mode = if checked.returns_result {
        quote!(#private::OkOnly)
    } else {
        quote!(#private::Plain)
    };
    let submit = quote_spanned! {ret.span()=>
        #private_at_ret::submit::<#mode, #ret>(&SPEC, __key(#(&#idents),*)).await
    };
    let wrapper_call = quote! {
        #cached(#module::__key(#(&#idents),*), move || #body_fn(#(#idents),*), ::core::option::Option::None)
    };
    let wrapper_call = if is_async {
        let value = Ident::new("__smache_value", Span::mixed_site());
        let rest = Ident::new("__smache_rest", Span::mixed_site());
        quote_spanned! {ret.span()=>
            match #wrapper_call {
                #private_at_ret::Answer::Now(#value) => #value,
                #private_at_ret::Answer::Later(#rest) => #rest.await,
            }
        }
    } else {
        wrapper_call
    };
    let fn_name = fn_ident.to_string();
    let module_doc = format!(" Cache helpers of [`{fn_name}()`], generated by `#[computed]`.");
    let krate_path = quote!(#krate).to_string().replace(' ', "");
    let is_fresh_doc = format!(
        " Whether a value is cached for these arguments (in [`Smache::current`]({krate_path}::Smache::current))."
    );
    let invalidate_doc = format!(
        " Removes the cached value for these arguments (in [`Smache::current`]({krate_path}::Smache::current)); returns whether one was stored."
    );
    let submit_doc = format!(
        " Returns at once: the cached value, or a task an executor runs to compute it (joining the one pending, if any). See [`task`]({krate_path}::task)."
    );
    quote! {
        #(#attrs)*
        #vis #wrapper_sig {
            #[allow(clippy::needless_lifetimes)]
            #body_sig #block

            // An executor's way to the body: decode a job's arguments and
            // call the body through the cache, which stores the result.
            const _: () = {
                #recompute
            };

            #cached_fn

            #wrapper_call
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
            #sources
            #relation_sources
            .__mode(#refresh)
            #store;

            #[doc(hidden)]
            pub fn __key #lifetimes (#(#idents: &#tys),*) -> #krate::Result<#krate::CacheKey> {
                #private::KeyBuilder::new(&SPEC) #(#pushes)* .finish()
            }

            /// The cache key of the value for these arguments.
            /// # Errors
            /// When a `Raw` argument cannot be serialized.
            pub fn key #lifetimes (#(#idents: #tys),*) -> #krate::Result<#krate::CacheKey> {
                __key(#(&#idents),*)
            }

            #[doc = #is_fresh_doc]
            /// # Errors
            /// When the key cannot be built or the store cannot be reached.
            pub async fn is_fresh #lifetimes (#(#idents: #tys),*) -> #krate::Result<bool> {
                #krate::Smache::current().is_fresh(&__key(#(&#idents),*)?).await
            }

            #[doc = #invalidate_doc]
            /// # Errors
            /// When the key cannot be built or the store cannot be reached.
            pub async fn invalidate #lifetimes (#(#idents: #tys),*) -> #krate::Result<bool> {
                #krate::Smache::current().invalidate(&__key(#(&#idents),*)?).await
            }

            #[doc = #submit_doc]
            /// # Errors
            /// When the key cannot be built, there is no Redis store, or Redis cannot be reached.
            pub async fn submit #lifetimes (#(#idents: #tys),*) -> #krate::Result<
                #krate::Submitted<<#value_mode as #private::ValueType<#ret>>::Value>,
            > {
                #submit
            }
        }

    }
}

/// How the recompute reaches the cache: through the wrapper's entry, its
/// answer awaited as it is (the wrapper returns a hit's value at once).
struct Call<'a> {
    /// The wrapper's way into the cache, `call_async` or `call_sync`.
    cached: &'a Ident,
    /// `.await` for an `async fn` (the answer is an `IntoFuture`).
    dot_await: &'a Option<TokenStream>,
    /// The function's body, as a private function.
    body_fn: &'a Ident,
    /// The generated module (`SPEC`).
    module: &'a Ident,
}

/// The registration that lets an executor recompute a value: decode each
/// argument from the job (entities loaded fresh from MongoDB, raw values
/// from their JSON), then call the body through the cache, which stores
/// the result (conditionally on the job's change generation).
fn recompute(checked: &Checked<'_>, args: &Args, call: &Call<'_>, krate: &Path) -> TokenStream {
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
    let Call {
        cached,
        dot_await,
        body_fn,
        module,
    } = call;
    let key = format_ident!("__smache_key", span = Span::mixed_site());
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
                fn #mapper(document: #private::bson::Document) -> #krate::Result<::std::vec::Vec<#krate::EntityId>> {
                    #private::map_related::<#source, #target, _>(document, #map)
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
        fn __recompute(#job: &#private::Job) -> #private::LocalBoxFuture<'_, #private::JobResult> {
            ::std::boxed::Box::pin(async move {
                let mut #reader = #job.args(&#module::SPEC);
                #(#decode)*
                let #key = ::core::result::Result::Ok(#reader.key()?);
                // What became of it is reported to the job.
                let _ = #cached(#key, || #body_fn(#(#pass),*), ::core::option::Option::Some(#job))
                    #dot_await;
                ::core::result::Result::Ok(())
            })
        }

        #private::inventory::submit! {
            #private::Registration::new(&#module::SPEC, __recompute)
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
