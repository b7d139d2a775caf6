//! Parsing `#[computed(Kind, …, option = value, …)]`.

use proc_macro2::Span;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Ident, LitInt, LitStr, Path, Token, Type};

/// How one function argument is keyed.
pub(crate) enum Kind {
    /// An entity type, keyed by its id.
    Entity(Box<Type>),
    /// `Raw`: keyed by its serialized value.
    Raw(Span),
}

impl Kind {
    pub(crate) fn span(&self) -> Span {
        match self {
            Kind::Entity(ty) => ty.span(),
            Kind::Raw(span) => *span,
        }
    }
}

/// The parsed attribute.
#[derive(Default)]
pub(crate) struct Args {
    pub(crate) kinds: Vec<Kind>,
    pub(crate) ttl_secs: Option<Setting<u64>>,
    pub(crate) name: Option<Setting<String>>,
    pub(crate) version: Option<Setting<u32>>,
    pub(crate) krate: Option<Setting<Path>>,
    /// `sources(A, B)`: entity types whose whole collection the values depend on.
    pub(crate) sources: Option<Setting<Vec<Type>>>,
    /// `relations(Order => |o: &Order| o.user_id)`.
    pub(crate) relations: Option<Setting<Vec<Relation>>>,
    /// `refresh = mark_stale` (true) or `write_through` (false, the default).
    pub(crate) mark_stale: Option<Setting<bool>>,
    /// `store = mongo` (true) or `redis` (false); unset: the instance's default.
    pub(crate) store_mongo: Option<Setting<bool>>,
}

/// `Source => mapper`: a changed `Source` document maps to the ids of the
/// function's (first) entity argument whose values depend on it.
pub(crate) struct Relation {
    pub(crate) source: Type,
    pub(crate) map: syn::Expr,
}

impl Parse for Relation {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let source: Type = input.parse()?;
        input.parse::<Token![=>]>()?;
        let map: syn::Expr = input.parse()?;
        Ok(Relation { source, map })
    }
}

/// The value of an option.
pub(crate) struct Setting<T> {
    pub(crate) value: T,
}

const OPTIONS: &str =
    "`ttl`, `ttl_secs`, `name`, `version`, `refresh`, `store`, `sources(...)`, `relations(...)` or `crate`";

/// One comma-separated element of the attribute.
enum Element {
    Kind(Kind),
    Option {
        key: Ident,
        value: OptionValue,
    },
    Sources {
        key: Ident,
        types: Vec<Type>,
    },
    Relations {
        key: Ident,
        relations: Vec<Relation>,
    },
}

enum OptionValue {
    Str(LitStr),
    Int(LitInt),
    Path(Path),
}

impl OptionValue {
    fn span(&self) -> Span {
        match self {
            OptionValue::Str(lit) => lit.span(),
            OptionValue::Int(lit) => lit.span(),
            OptionValue::Path(path) => path.span(),
        }
    }
}

impl Parse for Element {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        if input.peek(Token![crate]) && input.peek2(Token![=]) {
            let krate: Token![crate] = input.parse()?;
            input.parse::<Token![=]>()?;
            let path = input.call(Path::parse_mod_style)?;
            return Ok(Element::Option {
                key: Ident::new("crate", krate.span),
                value: OptionValue::Path(path),
            });
        }
        if input.peek(Ident) && input.peek2(syn::token::Paren) {
            let fork = input.fork();
            let key: Ident = fork.parse()?;
            if key == "sources" {
                input.parse::<Ident>()?;
                let content;
                syn::parenthesized!(content in input);
                let types = Punctuated::<Type, Token![,]>::parse_terminated(&content)?;
                if types.is_empty() {
                    return Err(syn::Error::new(
                        key.span(),
                        "`sources(...)` needs at least one entity type",
                    ));
                }
                return Ok(Element::Sources {
                    key,
                    types: types.into_iter().collect(),
                });
            }
            if key == "relations" {
                input.parse::<Ident>()?;
                let content;
                syn::parenthesized!(content in input);
                let relations = Punctuated::<Relation, Token![,]>::parse_terminated(&content)?;
                if relations.is_empty() {
                    return Err(syn::Error::new(
                        key.span(),
                        "`relations(...)` needs at least one `Source => |doc: &Source| id`",
                    ));
                }
                return Ok(Element::Relations {
                    key,
                    relations: relations.into_iter().collect(),
                });
            }
        }
        if input.peek(Ident) && input.peek2(Token![=]) {
            let key: Ident = input.parse()?;
            input.parse::<Token![=]>()?;
            let lookahead = input.lookahead1();
            let value = if lookahead.peek(LitStr) {
                OptionValue::Str(input.parse()?)
            } else if lookahead.peek(LitInt) {
                OptionValue::Int(input.parse()?)
            } else if lookahead.peek(Ident) {
                OptionValue::Path(input.parse()?)
            } else {
                return Err(lookahead.error());
            };
            return Ok(Element::Option { key, value });
        }
        let ty: Type = input.parse()?;
        if let Type::Path(path) = &ty {
            if path.qself.is_none() && path.path.is_ident("Raw") {
                return Ok(Element::Kind(Kind::Raw(ty.span())));
            }
        }
        Ok(Element::Kind(Kind::Entity(Box::new(ty))))
    }
}

impl Args {
    /// Parses the attribute's tokens, collecting every semantic error.
    pub(crate) fn parse(tokens: proc_macro2::TokenStream) -> syn::Result<Args> {
        let elements =
            syn::parse::Parser::parse2(Punctuated::<Element, Token![,]>::parse_terminated, tokens)?;
        let mut args = Args::default();
        let mut errors = Errors::default();
        for element in elements {
            match element {
                Element::Kind(kind) => args.kinds.push(kind),
                Element::Option { key, value } => errors.push(args.apply(&key, value)),
                Element::Sources { key, types } => {
                    errors.push(set_once(&mut args.sources, "sources", &key, types));
                }
                Element::Relations { key, relations } => {
                    errors.push(set_once(&mut args.relations, "relations", &key, relations));
                }
            }
        }
        errors.finish()?;
        Ok(args)
    }

    fn apply(&mut self, key: &Ident, value: OptionValue) -> syn::Result<()> {
        match key.to_string().as_str() {
            "ttl" => {
                let lit = expect_str(key, value)?;
                let secs = parse_ttl(&lit)?;
                set_once(&mut self.ttl_secs, "ttl", key, secs)
            }
            "ttl_secs" => {
                let lit = expect_int(key, value)?;
                let secs: u64 = lit.base10_parse()?;
                if secs == 0 {
                    return Err(syn::Error::new(lit.span(), "`ttl_secs` must be at least 1"));
                }
                set_once(&mut self.ttl_secs, "ttl", key, secs)
            }
            "name" => {
                let lit = expect_str(key, value)?;
                let name = lit.value();
                validate_name(&name, &lit)?;
                set_once(&mut self.name, "name", key, name)
            }
            "version" => {
                let lit = expect_int(key, value)?;
                let version: u32 = lit.base10_parse()?;
                set_once(&mut self.version, "version", key, version)
            }
            "refresh" => {
                let mark_stale = match &value {
                    OptionValue::Path(path) if path.is_ident("mark_stale") => true,
                    OptionValue::Path(path) if path.is_ident("write_through") => false,
                    other => {
                        return Err(syn::Error::new(
                            other.span(),
                            "`refresh` is `write_through` (the default) or `mark_stale`",
                        ))
                    }
                };
                set_once(&mut self.mark_stale, "refresh", key, mark_stale)
            }
            "store" => {
                let mongo = match &value {
                    OptionValue::Path(path) if path.is_ident("mongo") => true,
                    OptionValue::Path(path) if path.is_ident("redis") => false,
                    other => {
                        return Err(syn::Error::new(
                            other.span(),
                            "`store` is `redis` or `mongo` (values kept in MongoDB)",
                        ))
                    }
                };
                set_once(&mut self.store_mongo, "store", key, mongo)
            }
            "crate" => match value {
                OptionValue::Path(path) => set_once(&mut self.krate, "crate", key, path),
                other => Err(syn::Error::new(
                    other.span(),
                    "expected a path, like `crate = ::smache`",
                )),
            },
            other => Err(syn::Error::new(
                key.span(),
                format!("unknown option `{other}`; expected {OPTIONS}"),
            )),
        }
    }
}

/// The one "set once, else error" check every option goes through.
/// `slot_name` names the slot, so `ttl` and `ttl_secs` conflict with each other.
fn set_once<T>(
    slot: &mut Option<Setting<T>>,
    slot_name: &str,
    key: &Ident,
    value: T,
) -> syn::Result<()> {
    if slot.is_some() {
        let message = if key == slot_name {
            format!("duplicate option `{key}`")
        } else {
            format!("`{key}` conflicts with an earlier `{slot_name}` option")
        };
        return Err(syn::Error::new(key.span(), message));
    }
    *slot = Some(Setting { value });
    Ok(())
}

fn expect_str(key: &Ident, value: OptionValue) -> syn::Result<LitStr> {
    match value {
        OptionValue::Str(lit) => Ok(lit),
        other => Err(syn::Error::new(
            other.span(),
            format!("`{key}` takes a string literal"),
        )),
    }
}

fn expect_int(key: &Ident, value: OptionValue) -> syn::Result<LitInt> {
    match value {
        OptionValue::Int(lit) => Ok(lit),
        other => Err(syn::Error::new(
            other.span(),
            format!("`{key}` takes an integer literal"),
        )),
    }
}

/// `"90s"`, `"5m"`, `"1h 30m"`, `"2days"` → whole seconds.
fn parse_ttl(lit: &LitStr) -> syn::Result<u64> {
    let duration = humantime::parse_duration(&lit.value()).map_err(|err| {
        syn::Error::new(
            lit.span(),
            format!("invalid duration: {err}; write it like \"90s\", \"5m\" or \"1h 30m\""),
        )
    })?;
    if duration.subsec_nanos() != 0 || duration.as_secs() == 0 {
        return Err(syn::Error::new(
            lit.span(),
            "`ttl` must be a whole number of seconds, at least 1s",
        ));
    }
    Ok(duration.as_secs())
}

fn validate_name(name: &str, lit: &LitStr) -> syn::Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 200
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:/".contains(&b));
    if valid {
        Ok(())
    } else {
        Err(syn::Error::new(
            lit.span(),
            "`name` must be 1 to 200 characters of [A-Za-z0-9_-.:/]",
        ))
    }
}

/// Collects several errors into one, as `syn::Error::combine` does.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    pub(crate) fn push(&mut self, result: syn::Result<()>) {
        if let Err(err) = result {
            self.add(err);
        }
    }

    pub(crate) fn add(&mut self, err: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(err),
            None => self.0 = Some(err),
        }
    }

    pub(crate) fn finish(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    #[test]
    fn parses_kinds_and_options() {
        let args = Args::parse(quote!(User, Raw, ttl = "5m", name = "a.b", version = 3)).unwrap();
        assert_eq!(args.kinds.len(), 2);
        assert!(matches!(args.kinds[0], Kind::Entity(_)));
        assert!(matches!(args.kinds[1], Kind::Raw(_)));
        assert_eq!(args.ttl_secs.unwrap().value, 300);
        assert_eq!(args.name.unwrap().value, "a.b");
        assert_eq!(args.version.unwrap().value, 3);
    }

    #[test]
    fn parses_sources_and_refresh() {
        let args =
            Args::parse(quote!(User, sources(Settings, Plan), refresh = mark_stale)).unwrap();
        assert_eq!(args.kinds.len(), 1);
        assert_eq!(args.sources.unwrap().value.len(), 2);
        assert!(args.mark_stale.unwrap().value);
        assert!(Args::parse(quote!(Raw, refresh = sometimes)).is_err());
        assert!(
            Args::parse(quote!(Raw, store = mongo))
                .unwrap()
                .store_mongo
                .unwrap()
                .value
        );
        assert!(
            !Args::parse(quote!(Raw, store = redis))
                .unwrap()
                .store_mongo
                .unwrap()
                .value
        );
        assert!(Args::parse(quote!(Raw, store = "mongo")).is_err());
        assert!(Args::parse(quote!(Raw, sources())).is_err());
        let args = Args::parse(quote!(User, relations(Order => |o: &Order| o.user_id))).unwrap();
        assert_eq!(args.relations.unwrap().value.len(), 1);
    }

    #[test]
    fn collects_every_error() {
        let Err(err) = Args::parse(quote!(Raw, bogus = 1, ttl = "1m", ttl_secs = 5)) else {
            panic!("expected errors");
        };
        let messages: Vec<String> = err.into_iter().map(|e| e.to_string()).collect();
        assert_eq!(messages.len(), 2, "{messages:?}");
        assert!(messages[0].contains("unknown option `bogus`"));
        assert!(messages[1].contains("conflicts"));
    }

    #[test]
    fn ttl_forms() {
        for (text, secs) in [("90s", 90), ("1h 30m", 5400), ("2days", 172_800)] {
            let lit = LitStr::new(text, Span::call_site());
            assert_eq!(parse_ttl(&lit).unwrap(), secs);
        }
        for bad in ["", "soon", "500ms", "1.5s"] {
            assert!(
                parse_ttl(&LitStr::new(bad, Span::call_site())).is_err(),
                "{bad}"
            );
        }
    }
}
