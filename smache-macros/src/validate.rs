//! Checks a `#[computed]` function against its attribute. Every error points
//! at the token that causes it; independent errors are reported together.

use syn::spanned::Spanned;
use syn::{
    FnArg, GenericArgument, GenericParam, Ident, Pat, PatType, PathArguments, ReturnType,
    Signature, Type, TypeImplTrait,
};

use crate::args::{Args, Errors, Kind};

/// One argument of the function with its kind.
pub(crate) struct Arg<'a> {
    pub(crate) ident: &'a Ident,
    pub(crate) ty: &'a Type,
    pub(crate) kind: &'a Kind,
}

/// A validated signature.
pub(crate) struct Checked<'a> {
    pub(crate) args: Vec<Arg<'a>>,
    pub(crate) ret: &'a Type,
    /// Whether the function returns a `Result` (only `Ok` is cached).
    pub(crate) returns_result: bool,
}

pub(crate) fn check<'a>(args: &'a Args, sig: &'a Signature) -> syn::Result<Checked<'a>> {
    let mut errors = Errors::default();

    if let Some(constness) = &sig.constness {
        errors.add(syn::Error::new(
            constness.span,
            "#[computed] cannot be used on a `const fn`",
        ));
    }
    if let Some(unsafety) = &sig.unsafety {
        errors.add(syn::Error::new(
            unsafety.span,
            "#[computed] cannot be used on an `unsafe fn`",
        ));
    }
    if let Some(abi) = &sig.abi {
        errors.add(syn::Error::new_spanned(
            abi,
            "#[computed] cannot be used on an `extern fn`",
        ));
    }
    if let Some(variadic) = &sig.variadic {
        errors.add(syn::Error::new(
            variadic.span(),
            "#[computed] cannot be used on a variadic function",
        ));
    }
    for param in &sig.generics.params {
        if !matches!(param, GenericParam::Lifetime(_)) {
            errors.add(syn::Error::new_spanned(
                param,
                "#[computed] functions cannot be generic: the cache key must name every argument's type; write one function per type",
            ));
        }
    }
    if let Some(where_clause) = &sig.generics.where_clause {
        errors.add(syn::Error::new(
            where_clause.span(),
            "#[computed] functions cannot have a `where` clause",
        ));
    }

    let mut checked_args = Vec::new();
    let mut kinds = args.kinds.iter();
    let mut missing_kind: Option<&PatType> = None;
    for input in &sig.inputs {
        let typed = match input {
            FnArg::Receiver(receiver) => {
                errors.add(syn::Error::new_spanned(
                    receiver,
                    "#[computed] cannot be used on methods with a `self` receiver; write a free function that takes the value as an argument",
                ));
                continue;
            }
            FnArg::Typed(typed) => typed,
        };
        let kind = kinds.next();
        if kind.is_none() && missing_kind.is_none() {
            missing_kind = Some(typed);
        }
        let ident = match &*typed.pat {
            Pat::Ident(pat) if pat.by_ref.is_none() && pat.subpat.is_none() => &pat.ident,
            other => {
                errors.add(syn::Error::new_spanned(
                    other,
                    "#[computed] arguments must be plain names (`user: &User`), not patterns",
                ));
                continue;
            }
        };
        if let Some(impl_trait) = impl_trait(&typed.ty) {
            errors.add(syn::Error::new_spanned(
                impl_trait,
                "#[computed] arguments cannot be `impl Trait`: the cache key must name every argument's type",
            ));
            continue;
        }
        if let Some(kind) = kind {
            checked_args.push(Arg {
                ident,
                ty: &typed.ty,
                kind,
            });
        }
    }
    let expected = sig.inputs.len();
    if let Some(arg) = missing_kind {
        errors.add(syn::Error::new_spanned(
            arg,
            format!(
                "this argument has no kind: #[computed] needs one kind per argument ({expected} here), like `#[computed(User, Raw)]`",
            ),
        ));
    }
    if let Some(extra) = kinds.next() {
        let message = format!("too many kinds: the function has {expected} argument(s)");
        errors.add(match extra {
            Kind::Entity(ty) => syn::Error::new_spanned(ty, message),
            Kind::Raw(_) => syn::Error::new(extra.span(), message),
        });
    }

    if let Some(relations) = &args.relations {
        if !args.kinds.iter().any(|k| matches!(k, Kind::Entity(_))) {
            let first = &relations.value[0];
            errors.add(syn::Error::new(
                first.source.span(),
                "`relations(...)` map a document to the ids of the function's entity argument, and this function has none",
            ));
        }
    }

    let ret = match &sig.output {
        ReturnType::Default => {
            errors.add(syn::Error::new(
                sig.ident.span(),
                "#[computed] functions must return the value to cache",
            ));
            None
        }
        ReturnType::Type(_, ty) => {
            if let Some(impl_trait) = impl_trait(ty) {
                errors.add(syn::Error::new_spanned(
                    impl_trait,
                    "#[computed] functions must return a concrete type, not `impl Trait`",
                ));
            }
            Some(&**ty)
        }
    };

    errors.finish()?;
    let ret = ret.expect("checked above");
    Ok(Checked {
        args: checked_args,
        ret,
        returns_result: is_result(ret),
    })
}

/// An `impl Trait` anywhere in `ty`.
fn impl_trait(ty: &Type) -> Option<&TypeImplTrait> {
    match ty {
        Type::ImplTrait(it) => Some(it),
        Type::Reference(r) => impl_trait(&r.elem),
        Type::Paren(p) => impl_trait(&p.elem),
        Type::Group(g) => impl_trait(&g.elem),
        Type::Slice(s) => impl_trait(&s.elem),
        Type::Array(a) => impl_trait(&a.elem),
        Type::Tuple(t) => t.elems.iter().find_map(impl_trait),
        Type::Path(p) => p.path.segments.iter().find_map(|seg| match &seg.arguments {
            PathArguments::AngleBracketed(args) => args.args.iter().find_map(|arg| match arg {
                GenericArgument::Type(ty) => impl_trait(ty),
                _ => None,
            }),
            _ => None,
        }),
        _ => None,
    }
}

/// `Result<T, E>`, `io::Result<T>`, `anyhow::Result<T>`: any path whose last
/// segment is `Result` with type arguments.
fn is_result(ty: &Type) -> bool {
    match ty {
        Type::Path(path) if path.qself.is_none() => path.path.segments.last().is_some_and(|seg| {
            seg.ident == "Result" && matches!(seg.arguments, PathArguments::AngleBracketed(_))
        }),
        Type::Group(group) => is_result(&group.elem),
        Type::Paren(paren) => is_result(&paren.elem),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use syn::parse_quote;

    #[test]
    fn recognises_results() {
        assert!(is_result(&parse_quote!(Result<u8, String>)));
        assert!(is_result(&parse_quote!(std::io::Result<u8>)));
        assert!(!is_result(&parse_quote!(Option<u8>)));
        assert!(!is_result(&parse_quote!(ResultCode)));
    }

    #[test]
    fn finds_nested_impl_trait() {
        assert!(impl_trait(&parse_quote!(&impl Fn())).is_some());
        assert!(impl_trait(&parse_quote!(Vec<impl Clone>)).is_some());
        assert!(impl_trait(&parse_quote!(Vec<u8>)).is_none());
    }
}
