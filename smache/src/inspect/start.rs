//! Where a graph report starts: a value, a document or a collection, from
//! a [`CacheKey`] or the forms operators see (value ids as `inspect jobs`
//! prints them, `<collection>/<id>`, tokens).

use std::fmt;
use std::str::FromStr;

use crate::entity::EntityId;
use crate::error::Error;
use crate::key::CacheKey;

/// Where a graph report starts: a value, a document or a whole collection.
///
/// Parsed from the forms `smache-worker inspect graph` takes:
///
/// ```
/// use smache::inspect::GraphStart;
/// use smache::EntityId;
///
/// // A value id, as `inspect jobs` and `CacheKey`'s `Display` show it.
/// let value: GraphStart = "app::card#1:o:65f000000000000000000001".parse()?;
/// assert_eq!(value, GraphStart::Value("app::card#1:o:65f000000000000000000001".into()));
/// // `<collection>/<document id>`: an ObjectId's hex, an integer, else a string…
/// let doc: GraphStart = "users/65f000000000000000000001".parse()?;
/// assert_eq!(doc.token(), "e:users:o:65f000000000000000000001");
/// assert_eq!("users/42".parse::<GraphStart>()?.token(), "e:users:i:42");
/// assert_eq!("users/ada".parse::<GraphStart>()?.token(), r#"e:users:s:"ada""#);
/// // …or the id as keys write it, to say which: the string "42".
/// assert_eq!(r#"users/s:"42""#.parse::<GraphStart>()?, GraphStart::document("users", "42"));
/// // A collection alone: the values with `sources(...)` on it.
/// assert_eq!("plans".parse::<GraphStart>()?, GraphStart::Collection("plans".into()));
/// # Ok::<(), smache::Error>(())
/// ```
///
/// A token (`v:<value id>`, `e:<collection>:<id key>`, `c:<collection>`)
/// is taken as it is: use `v:` for a function whose `name = "…"` holds a
/// `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum GraphStart {
    /// A value, by its id: `<function name>#<version>:<arguments>`, the
    /// storage key without `{prefix}:v:` (see
    /// [`CacheKey`](crate::CacheKey#key-scheme)).
    Value(String),
    /// A document.
    Document {
        /// Its collection.
        collection: String,
        /// Its `_id`.
        id: EntityId,
    },
    /// A whole collection: what depends on any change in it.
    Collection(String),
}

impl GraphStart {
    /// The value of `key`.
    #[must_use]
    pub fn value(key: &CacheKey) -> Self {
        GraphStart::Value(key.value_id())
    }

    /// The document `id` of `collection`.
    #[must_use]
    pub fn document(collection: impl Into<String>, id: impl Into<EntityId>) -> Self {
        GraphStart::Document {
            collection: collection.into(),
            id: id.into(),
        }
    }

    /// The dependency token it stands for: `v:<value id>`,
    /// `e:<collection>:<id key>` or `c:<collection>`.
    #[must_use]
    pub fn token(&self) -> String {
        match self {
            GraphStart::Value(id) => format!("v:{id}"),
            GraphStart::Document { collection, id } => id.token(collection),
            GraphStart::Collection(name) => format!("c:{name}"),
        }
    }
}

impl From<&CacheKey> for GraphStart {
    fn from(key: &CacheKey) -> Self {
        GraphStart::value(key)
    }
}

impl fmt::Display for GraphStart {
    /// The form [`FromStr`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GraphStart::Value(id) => f.write_str(id),
            GraphStart::Document { collection, id } => {
                let mut key = String::new();
                id.write_key(&mut key);
                write!(f, "{collection}/{key}")
            }
            GraphStart::Collection(name) => f.write_str(name),
        }
    }
}

impl FromStr for GraphStart {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        let bad = |why: &str| Error::Config(format!("not a graph start: {text:?}: {why}"));
        let text = text.trim();
        if text.is_empty() {
            return Err(bad("empty"));
        }
        if let Some(id) = text.strip_prefix("v:") {
            return Ok(GraphStart::Value(id.to_owned()));
        }
        if let Some(name) = text.strip_prefix("c:") {
            return Ok(GraphStart::Collection(name.to_owned()));
        }
        if let Some(rest) = text.strip_prefix("e:") {
            let Some((collection, key)) = crate::store::keys::split_document(text) else {
                return Err(bad(if rest.contains(':') {
                    NOT_AN_ID_KEY
                } else {
                    "a document token is e:<collection>:<id key>"
                }));
            };
            let id = EntityId::from_key(key).ok_or_else(|| bad(NOT_AN_ID_KEY))?;
            return Ok(GraphStart::document(collection, id));
        }
        if is_value_id(text) {
            return Ok(GraphStart::Value(text.to_owned()));
        }
        let Some((collection, id)) = text.split_once('/') else {
            return Ok(GraphStart::Collection(text.to_owned()));
        };
        if collection.is_empty() || id.is_empty() {
            return Err(bad("a document is <collection>/<id>"));
        }
        let id = if let Some(id) = EntityId::from_key(id) {
            id
        } else if id.len() == 24 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            bson::oid::ObjectId::parse_str(id)
                .map(EntityId::ObjectId)
                .map_err(|_| bad("not an ObjectId"))?
        } else if let Ok(n) = id.parse::<i64>() {
            EntityId::Int(n)
        } else if matches!(id.as_bytes(), [b'o' | b'i' | b's', b':', ..]) {
            return Err(bad(NOT_AN_ID_KEY));
        } else {
            EntityId::String(id.to_owned())
        };
        Ok(GraphStart::document(collection, id))
    }
}

/// Why an id key given does not read as one.
const NOT_AN_ID_KEY: &str = "the id key is not o:<hex>, i:<integer> or s:\"<string>\"";

/// Whether `text` reads as a value id: `<name>#<version digits>:…` with no
/// `/` in the name (a function's name holds one only if set so with
/// `name = "…"`; then write the value as its token, `v:<id>`).
fn is_value_id(text: &str) -> bool {
    let Some((head, _)) = crate::key::split_value_id(text) else {
        return false;
    };
    let Some((name, version)) = head.rsplit_once('#') else {
        return false;
    };
    !name.is_empty()
        && !name.contains('/')
        && !version.is_empty()
        && version.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::oid::ObjectId;

    fn parse(text: &str) -> GraphStart {
        text.parse().unwrap_or_else(|err| panic!("{text}: {err}"))
    }

    #[test]
    fn starts_parse_from_what_operators_see() {
        let oid = ObjectId::parse_str("65f000000000000000000001").unwrap();
        // Value ids, as `inspect jobs` and `CacheKey`'s Display show them,
        // whatever their arguments hold.
        for id in [
            "app::card#1:o:65f000000000000000000001",
            r#"app::card#12:"en/gb":{"a":[1,2]}"#,
            "f#1:",
            "app::card#1:h:0123456789abcdef0123456789abcdef",
        ] {
            assert_eq!(parse(id), GraphStart::Value(id.into()), "{id}");
        }
        // Documents: hex, integer, string, or the id as keys write it.
        assert_eq!(
            parse("users/65f000000000000000000001"),
            GraphStart::document("users", oid)
        );
        assert_eq!(parse("users/-7"), GraphStart::document("users", -7));
        assert_eq!(parse("users/ada"), GraphStart::document("users", "ada"));
        assert_eq!(parse("users/a/b"), GraphStart::document("users", "a/b"));
        assert_eq!(
            parse(r#"users/s:"42""#),
            GraphStart::document("users", "42")
        );
        assert_eq!(
            parse("users/o:65f000000000000000000001"),
            GraphStart::document("users", oid)
        );
        assert_eq!(parse("plans"), GraphStart::Collection("plans".into()));
        // Tokens, as they are.
        assert_eq!(parse("v:a/b#1:x"), GraphStart::Value("a/b#1:x".into()));
        assert_eq!(parse("c:plans"), GraphStart::Collection("plans".into()));
        assert_eq!(parse("e:users:i:7"), GraphStart::document("users", 7));
        // Each start prints as it parses back, and names its token.
        for start in [
            GraphStart::Value(r#"app::card#1:"x""#.into()),
            GraphStart::document("users", oid),
            GraphStart::document("users", "42"),
            GraphStart::document("users", 42),
            GraphStart::Collection("plans".into()),
        ] {
            assert_eq!(parse(&start.to_string()), start);
        }
        assert_eq!(parse("users/42").token(), "e:users:i:42");
        assert_eq!(
            parse("e:shop:orders:i:3"),
            GraphStart::document("shop:orders", EntityId::Int(3))
        );
        assert_eq!(parse("app::card#1:i:4").token(), "v:app::card#1:i:4");
    }

    #[test]
    fn malformed_starts_say_why() {
        for (text, why) in [
            ("", "empty"),
            ("users/", "<collection>/<id>"),
            ("/7", "<collection>/<id>"),
            ("users/o:xyz", "the id key is not"),
            ("users/s:unquoted", "the id key is not"),
            ("e:users", "e:<collection>:<id key>"),
            ("e:users:q:1", "the id key is not"),
        ] {
            let err = text.parse::<GraphStart>().unwrap_err().to_string();
            assert!(err.contains(why), "{text}: {err}");
        }
    }
}
