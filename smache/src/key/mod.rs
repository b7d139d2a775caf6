//! Cache keys: [`CacheKey`] (whose documentation gives the key scheme), the
//! builder the generated `f::key(..)` uses, and the job format that reads a
//! value id back into arguments (`job`).

use std::fmt;

use sha2::{Digest, Sha256};

use crate::spec::FnSpec;

mod builder;
mod job;
mod scalar;
mod spare;

pub use builder::{KeyBuilder, RawKind};

pub(crate) use scalar::push_json;
// Used by the generated code only (through `__private`).
#[doc(hidden)]
pub use scalar::{AsJson, AsScalar, KeyScalar, RawJson, RawProbe, RawScalar};

pub(crate) use job::{decode_for_fuzzing, split_value_id, Outcome, Report};
// Used by the generated code only (through `__private`).
#[doc(hidden)]
pub use job::{ArgReader, Job, JobError};

/// Arguments longer than this many bytes are hashed in the stored key.
pub(crate) const MAX_INLINE_ARGS: usize = 160;

/// The longest entity id a key may hold, in bytes as encoded (`o:<hex>`,
/// `i:<n>`, `s:<json string>`). Ids name dependency-graph keys unhashed.
pub(crate) const MAX_ENTITY_ID_LEN: usize = 1024;

/// The longest argument list a key may hold, in bytes as encoded. Beyond
/// [`MAX_INLINE_ARGS`] they are hashed in the key but stored whole in the
/// value's hash and read by every executor's recompute.
pub(crate) const MAX_ARGS_LEN: usize = 64 * 1024;

/// The key of one computed value: a function and its arguments.
///
/// Keys do not depend on a [`Smache`](crate::Smache) instance: the instance
/// adds its prefix when it talks to its store. Build one with the `key`
/// helper the macro generates beside each function:
///
/// ```
/// #[smache::computed(Raw, Raw, name = "demo.add")]
/// fn add(a: i32, b: i32) -> i32 {
///     a + b
/// }
///
/// let key = add::key(1, 2).unwrap();
/// assert_eq!(key.to_string(), "demo.add#1:1:2");
/// ```
///
/// # Key scheme
///
/// Every key smache writes lives under one Redis hash tag, so a whole
/// deployment maps to one Redis Cluster slot and multi-key scripts work:
///
/// ```text
/// {<prefix>}:v:<function name>#<version>:<arg>:<arg>…
/// ```
///
/// * `<prefix>` is [`SmacheBuilder::prefix`](crate::SmacheBuilder::prefix) (default `smache`);
/// * `v` marks a value (other kinds of keys — dependency graph, jobs — use other letters);
/// * `<function name>` is the `name = "…"` option or `module::path::function`;
/// * `<version>` is the `version = N` option (default 1);
/// * each `<arg>` is, by the argument's kind, an entity id (`o:<objectid hex>`,
///   `i:<integer>`, `s:<json string>`) or a raw value as compact JSON
///   (`"en"`, `42`, `{"a":1}`). Every form is self-delimiting, so different
///   argument lists never share a key. Arguments that take more than 160
///   bytes are replaced by `h:<sha-256 of them, 32 hex>` (see
///   [`is_hashed`](Self::is_hashed)).
///
/// Limits: an entity id may take up to 1024 bytes as encoded (it names
/// graph keys as it is) and all the arguments together up to 64 KiB (they
/// are kept whole beside a hashed key, for the executors). Past either,
/// building the key fails with [`Error::KeyTooLong`] and a call computes
/// without the cache.
///
/// Raw arguments are keyed by their serde JSON form: map types with an
/// unspecified iteration order (`HashMap`) give unstable keys; use `BTreeMap`.
#[derive(Clone)]
pub struct CacheKey {
    spec: &'static FnSpec,
    /// `<name>#<version>:<args>`.
    path: String,
    /// Where the arguments start in `path`.
    args_at: usize,
    /// The entity arguments: collection and the id segment's range in `path`.
    entities: Vec<(&'static str, usize, usize)>,
}

impl CacheKey {
    /// The function this key belongs to.
    #[must_use]
    pub fn spec(&self) -> &'static FnSpec {
        self.spec
    }

    /// The encoded arguments (before any hashing).
    #[must_use]
    #[inline]
    pub fn args(&self) -> &str {
        &self.path[self.args_at..]
    }

    /// Whether the stored key holds a hash of the arguments rather than
    /// them (arguments over 160 bytes); the full arguments are then kept
    /// in the value's hash, for executors.
    ///
    /// ```
    /// #[smache::computed(Raw)]
    /// fn echo(text: &str) -> usize {
    ///     text.len()
    /// }
    ///
    /// assert!(!echo::key("short").unwrap().is_hashed());
    /// assert!(echo::key(&"long ".repeat(50)).unwrap().is_hashed());
    /// ```
    #[must_use]
    #[inline]
    pub fn is_hashed(&self) -> bool {
        self.args().len() > MAX_INLINE_ARGS
    }

    /// The value id: the key without the `{prefix}:v:` part. It is the
    /// path itself, or with long arguments `<name>#<version>:h:<hash>`.
    pub(crate) fn value_id(&self) -> String {
        if !self.is_hashed() {
            return self.path.clone();
        }
        let mut out = String::with_capacity(self.args_at + 34);
        out.push_str(&self.path[..self.args_at]);
        out.push_str("h:");
        let digest = Sha256::digest(self.args().as_bytes());
        push_hex(&mut out, &digest[..16]);
        out
    }

    /// Appends the value id (see [`value_id`](Self::value_id)) to `out`,
    /// without a `String` of its own when the arguments are not hashed.
    pub(crate) fn write_value_id(&self, out: &mut String) {
        if self.is_hashed() {
            out.push_str(&self.value_id());
        } else {
            out.push_str(&self.path);
        }
    }

    /// Runs `f` with the value id (see [`value_id`](Self::value_id)),
    /// borrowed from the key when the arguments are not hashed.
    #[inline]
    pub(crate) fn with_value_id<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        if self.is_hashed() {
            f(&self.value_id())
        } else {
            f(&self.path)
        }
    }

    /// The key a job's arguments were encoded in: `args` whole, with the
    /// entity ids at these ranges of it.
    pub(crate) fn from_job(
        spec: &'static FnSpec,
        args: &str,
        entities: Vec<(&'static str, usize, usize)>,
    ) -> CacheKey {
        let builder = KeyBuilder::new(spec);
        let args_at = builder.args_at;
        let mut path = builder.path;
        path.push_str(args);
        let entities = entities
            .into_iter()
            .map(|(collection, start, end)| (collection, args_at + start, args_at + end))
            .collect();
        CacheKey {
            spec,
            path,
            args_at,
            entities,
        }
    }

    /// The entity arguments: each one's collection and encoded id
    /// (`o:<hex>`, `i:<n>`, `s:<json>`), as dependency tokens name them.
    pub(crate) fn entity_ids(&self) -> impl Iterator<Item = (&'static str, &str)> + '_ {
        self.entities
            .iter()
            .map(|(collection, start, end)| (*collection, &self.path[*start..*end]))
    }
}

// A key is made on every call and dropped at its end: its buffer goes
// back to this thread's spare, which the next key takes (no allocation).
impl Drop for CacheKey {
    #[inline]
    fn drop(&mut self) {
        spare::give(std::mem::take(&mut self.path));
    }
}

// The path names the function (name and version) and the arguments, so it
// alone decides equality.
impl PartialEq for CacheKey {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path
    }
}

impl Eq for CacheKey {}

impl std::hash::Hash for CacheKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.path.hash(state);
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Appends `bytes` in lowercase hex.
pub(crate) fn push_hex(out: &mut String, bytes: &[u8]) {
    for byte in bytes {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path)
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CacheKey").field(&self.path).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entity::Entity;
    use crate::error::Error;
    use crate::spec::ArgKind;
    use serde::Serialize;
    use std::collections::BTreeMap;

    static SPEC: FnSpec = FnSpec::__new("app::f", 3, 0, &[ArgKind::Raw, ArgKind::Raw]);
    static ONE: FnSpec = FnSpec::__new("app::g", 1, 0, &[ArgKind::Raw]);

    #[test]
    fn limits_are_the_documented_ones() {
        // `CacheKey`'s key scheme and `Error::KeyTooLong` state them.
        assert_eq!(MAX_INLINE_ARGS, 160);
        assert_eq!(MAX_ENTITY_ID_LEN, 1024);
        assert_eq!(MAX_ARGS_LEN, 64 * 1024);
    }

    #[test]
    fn scalar_types_take_the_scalar_path_and_others_are_serialized_once() {
        let _: AsScalar = crate::__smache_raw_kind!(u64);
        let _: AsScalar = crate::__smache_raw_kind!(&str);
        let _: AsScalar = crate::__smache_raw_kind!(Option<&String>);
        let _: AsJson = crate::__smache_raw_kind!(f64);
        let _: AsJson = crate::__smache_raw_kind!(Vec<u8>);

        // Serializable once only: a second call would panic.
        struct Once(std::cell::Cell<Option<Vec<u32>>>);
        impl Serialize for Once {
            fn serialize<S: serde::Serializer>(
                &self,
                s: S,
            ) -> std::result::Result<S::Ok, S::Error> {
                s.collect_seq(self.0.take().expect("serialized twice"))
            }
        }
        let once = Once(std::cell::Cell::new(Some(vec![1, 2, 3])));
        let key = KeyBuilder::new(&ONE)
            .raw_as(&once, crate::__smache_raw_kind!(Once))
            .finish()
            .unwrap();
        assert_eq!(key.args(), "[1,2,3]");

        // Either path writes what serde_json writes.
        let text = "tab\t \"quoted\" é";
        let scalar = KeyBuilder::new(&SPEC)
            .raw_as(&text, crate::__smache_raw_kind!(&str))
            .raw_as(&Some(7u8), crate::__smache_raw_kind!(Option<u8>))
            .finish()
            .unwrap();
        let json = KeyBuilder::new(&SPEC)
            .raw(&text)
            .raw(&Some(7u8))
            .finish()
            .unwrap();
        assert_eq!(scalar, json);
    }

    #[test]
    fn layout_is_stable() {
        let key = KeyBuilder::new(&SPEC).raw("en").raw(&7).finish().unwrap();
        assert_eq!(key.to_string(), r#"app::f#3:"en":7"#);
        assert_eq!(key.args(), r#""en":7"#);
        assert_eq!(key.value_id(), r#"app::f#3:"en":7"#);
    }

    #[test]
    fn versions_are_written_in_decimal() {
        static V: FnSpec = FnSpec::__new("app::v", 1234, 0, &[ArgKind::Raw]);
        let key = KeyBuilder::new(&V).raw(&1).finish().unwrap();
        assert_eq!(key.to_string(), "app::v#1234:1");
    }

    #[test]
    fn raw_values_are_unambiguous() {
        let a = KeyBuilder::new(&SPEC).raw("a:b").raw("c").finish().unwrap();
        let b = KeyBuilder::new(&SPEC).raw("a").raw("b:c").finish().unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn long_arguments_are_hashed_deterministically() {
        let long = "x".repeat(500);
        let key = KeyBuilder::new(&SPEC).raw(&long).raw(&1).finish().unwrap();
        let stored = key.value_id();
        assert!(stored.starts_with("app::f#3:h:"), "{stored}");
        assert_eq!(stored.len(), "app::f#3:h:".len() + 32);
        let again = KeyBuilder::new(&SPEC).raw(&long).raw(&1).finish().unwrap();
        assert_eq!(stored, again.value_id());
        let other = KeyBuilder::new(&SPEC).raw(&long).raw(&2).finish().unwrap();
        assert_ne!(stored, other.value_id());
    }

    #[test]
    fn keys_past_the_limits_are_clear_errors() {
        let at_limit = "x".repeat(MAX_ARGS_LEN - 2);
        let key = KeyBuilder::new(&ONE).raw(&at_limit).finish().unwrap();
        assert_eq!(key.args().len(), MAX_ARGS_LEN);
        let over = "x".repeat(MAX_ARGS_LEN - 1);
        let err = KeyBuilder::new(&ONE).raw(&over).finish().unwrap_err();
        assert!(
            matches!(
                err,
                Error::KeyTooLong {
                    what: "the arguments",
                    len,
                    max: MAX_ARGS_LEN
                } if len == MAX_ARGS_LEN + 1
            ),
            "{err}"
        );
        assert!(
            err.to_string().contains("more than the 65536 allowed"),
            "{err}"
        );
    }

    #[test]
    fn entity_ids_past_their_limit_are_clear_errors() {
        struct Doc(String);
        impl Entity for Doc {
            const COLLECTION: &'static str = "docs";
            type Id = String;
            fn id(&self) -> crate::EntityId {
                crate::EntityId::String(self.0.clone())
            }
        }
        // `s:` and the JSON quotes take 4 bytes.
        let fits = Doc("d".repeat(MAX_ENTITY_ID_LEN - 4));
        assert!(KeyBuilder::new(&ONE).entity(&fits).finish().is_ok());
        let long = Doc("d".repeat(MAX_ENTITY_ID_LEN - 3));
        let err = KeyBuilder::new(&ONE).entity(&long).finish().unwrap_err();
        assert!(
            matches!(err, Error::KeyTooLong { what: "an entity id", len, .. } if len == MAX_ENTITY_ID_LEN + 1),
            "{err}"
        );
    }

    #[test]
    fn unserializable_arguments_are_errors() {
        let mut map = BTreeMap::new();
        map.insert(vec![1u8], 1);
        let err = KeyBuilder::new(&SPEC)
            .raw(&map)
            .raw(&1)
            .finish()
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::Serialize {
                    what: "argument",
                    ..
                }
            ),
            "{err}"
        );
    }
}
