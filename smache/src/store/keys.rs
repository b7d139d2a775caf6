//! Every Redis key smache names, built in one place from the instance's
//! base, `{prefix}:` (one hash tag: one Redis Cluster slot). The layout of
//! each key, and the dependency tokens, are described in `lua/common.lua`,
//! where the scripts use them, and in README's "Keys"; the scripts build
//! the same names from the base they are given.

use crate::key::CacheKey;

/// `{prefix}:`, the start of every key of an instance.
pub(crate) fn base(prefix: &str) -> String {
    format!("{{{prefix}}}:")
}

/// The start of every value key: `{prefix}:v:`, followed by the value id.
pub(crate) fn value_prefix(base: &str) -> String {
    format!("{base}v:")
}

/// A value's hash: `{prefix}:v:<id>`.
pub(crate) fn value(base: &str, id: &str) -> String {
    format!("{base}v:{id}")
}

/// [`value`] written into `out` (cleared first), the id by `write_id`,
/// without a `String` of its own: the hit path reuses one buffer. Returns
/// where the id starts in `out`.
pub(crate) fn write_value(
    out: &mut String,
    base: &str,
    write_id: impl FnOnce(&mut String),
) -> usize {
    out.clear();
    out.push_str(base);
    out.push_str("v:");
    let id_at = out.len();
    write_id(out);
    id_at
}

thread_local! {
    /// The value id of an in-process hit, written here rather than into a
    /// new `String` on every hit.
    static HIT_ID: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// Runs `f` with the value id `write_id` writes, in a buffer reused by
/// every hit of this thread (the in-process layer is keyed by value id:
/// no key, no shard, no copy of the base).
pub(crate) fn with_value_id<R>(write_id: impl FnOnce(&mut String), f: impl FnOnce(&str) -> R) -> R {
    HIT_ID.with(|cell| {
        // A re-entrant use (not expected: nothing in `f` calls back) gets
        // an id of its own.
        let mut own = String::new();
        let mut borrowed = cell.try_borrow_mut();
        let id = match borrowed.as_deref_mut() {
            Ok(id) => id,
            Err(_) => &mut own,
        };
        id.clear();
        write_id(id);
        f(id)
    })
}

/// The consumer group all executors share on the jobs stream.
pub const GROUP: &str = "executors";

/// How many given-up jobs the dead-letter stream (`{prefix}:dead`) keeps,
/// about: older ones are trimmed. See [`crate::inspect`].
pub const DEAD_LETTERS_KEPT: usize = 10_000;

/// The stream of jobs executors run.
pub(crate) fn jobs(base: &str) -> String {
    format!("{base}jobs")
}

/// The doorbell of an instance of several shards, from its base
/// (`{prefix}:`): a pub/sub channel its scripts publish on as they queue a
/// job, which its executors subscribe to between sweeps of the streams.
pub(crate) fn bell(base: &str) -> String {
    format!("{base}bell")
}

/// The stream of jobs given up (dead letters).
pub(crate) fn dead(base: &str) -> String {
    format!("{base}dead")
}

/// The pub/sub channel on which ended computations are announced.
pub(crate) fn done(base: &str) -> String {
    format!("{base}done")
}

/// A submitted task's record.
pub(crate) fn task(base: &str, task: &str) -> String {
    format!("{base}t:{task}")
}

/// What live executors can run, and when they last said so.
pub(crate) fn functions(base: &str) -> String {
    format!("{base}fns")
}

/// Settings the scripts and `inspect` read.
pub(crate) fn config(base: &str) -> String {
    format!("{base}config")
}

/// The collections some value depends on.
pub(crate) fn collections(base: &str) -> String {
    format!("{base}collections")
}

/// The functions with `relations(...)` on a collection.
pub(crate) fn relations(base: &str, collection: &str) -> String {
    format!("{base}rel:{collection}")
}

/// The recorded mapping of a related document `source`
/// (`<collection>:<id key>`) by the function `head`: the set of target id
/// keys it mapped to at its last change seen (`lua/relate.lua`).
pub(crate) fn mapping(base: &str, head: &str, source: &str) -> String {
    format!("{base}m:{head}|{source}")
}

/// The shards whose values read value `id` (on a store of several
/// shards): `{prefix#i}:rd:<id>` in `id`'s own shard, each member a
/// reader's shard base. A store of `id` fans out to the other shards only
/// while it exists (`fan_all` in `lua/common.lua`).
pub(crate) fn readers(base: &str, id: &str) -> String {
    format!("{base}rd:{id}")
}

/// The aliases of value `id`: `{prefix}:al:<id>`.
pub(crate) fn aliases(base: &str, id: &str) -> String {
    format!("{base}al:{id}")
}

/// The start of every reverse-edge key: `{prefix}:r:`, followed by a
/// dependency token.
pub(crate) fn dependants_prefix(base: &str) -> String {
    format!("{base}r:")
}

/// The value ids that depend on dependency token `token`:
/// `{prefix}:r:<token>`.
pub(crate) fn dependants(base: &str, token: &str) -> String {
    format!("{base}r:{token}")
}

/// A `SCAN` pattern for the reverse edges of every document of
/// `collection` (tokens `e:<collection>:<id key>`).
pub(crate) fn document_dependants_pattern(base: &str, collection: &str) -> String {
    dependants(base, &format!("e:{}:*", glob_escape(collection)))
}

/// Keys of `base`'s slot that nothing ever writes: every script call
/// declares the first (`store::script`), and the breaker's probe reads
/// both, so that a slot moving between masters answers neither
/// (`TRYAGAIN`, `ASK`) until the move ends.
pub(crate) fn unwritten(base: &str) -> String {
    format!("{base}probe:a")
}

/// The second of [`unwritten`]'s keys (a probe needs two, so that the
/// importing master answers `TRYAGAIN`: several keys, not all there).
pub(crate) fn unwritten_too(base: &str) -> String {
    format!("{base}probe:b")
}

/// The base, `{tag}:`, a key begins with; `None` for a key without one
/// (no key smache names).
pub(crate) fn base_of_key(key: &str) -> Option<&str> {
    let close = key.strip_prefix('{')?.find('}')? + 1;
    (close > 1 && key[close + 1..].starts_with(':')).then(|| &key[..close + 2])
}

/// The records the live workers announce.
pub(crate) fn workers(base: &str) -> String {
    format!("{base}workers")
}

/// Escapes Redis glob characters in a literal.
pub(crate) fn glob_escape(literal: &str) -> String {
    let mut out = String::with_capacity(literal.len());
    for c in literal.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The Redis keys the worker uses.
#[derive(Debug, Clone)]
pub(crate) struct WorkerKeys {
    /// The change stream's resume token.
    pub(crate) token: String,
    /// Which worker watches (expires unless renewed).
    pub(crate) lease: String,
    /// The fencing counter: grows with every new lease holder.
    pub(crate) fence: String,
    /// Set while "history lost: mark everything stale" is owed, so a
    /// crash in between does not drop it.
    pub(crate) lost: String,
    /// The cluster time of the saved position, `seconds << 32 | increment`
    /// (what read-your-writes waits for).
    pub(crate) time: String,
}

impl WorkerKeys {
    pub(crate) fn new(base: &str) -> Self {
        WorkerKeys {
            token: format!("{base}w:token"),
            lease: worker_lease(base),
            fence: format!("{base}w:fence"),
            lost: format!("{base}w:lost"),
            time: format!("{base}w:time"),
        }
    }
}

/// The watcher's lease.
pub(crate) fn worker_lease(base: &str) -> String {
    format!("{base}w:lease")
}

/// The field of `{prefix}:fns` that says an executor runs the callback
/// `name` (a function's field is its head, `<name>#<version>`).
pub(crate) fn callback_field(name: &str) -> String {
    format!("cb:{name}")
}

/// A glob of the value ids of the function `head` (`<name>#<version>`).
pub(crate) fn function_values(head: &str) -> String {
    format!("{}:*", glob_escape(head))
}

/// The dependency token of a nested value: `v:<id>`. A value's
/// dependency tokens name what it is recomputed from; each one names a
/// reverse-edge set (`{prefix}:d:<token>`, see `lua/common.lua`).
pub(crate) fn value_token(id: &str) -> String {
    let mut token = String::with_capacity(2 + id.len());
    write_value_token(&mut token, |out| out.push_str(id));
    token
}

/// Appends `v:` and the id `write_id` appends (a token built in place).
pub(crate) fn write_value_token(out: &mut String, write_id: impl FnOnce(&mut String)) {
    out.push_str("v:");
    write_id(out);
}

/// The dependency token of one document: `e:<collection>:<encoded id>`.
pub(crate) fn entity_token(collection: &str, id: &str) -> String {
    format!("e:{collection}:{id}")
}

/// The dependency token of a whole collection (`sources(...)`):
/// `c:<collection>`.
pub(crate) fn collection_token(collection: &str) -> String {
    format!("c:{collection}")
}

/// The dependency tokens known from a key alone: one
/// `e:<collection>:<id>` per entity argument, one `c:<collection>` per
/// source its function declares.
pub(crate) fn static_deps(key: &CacheKey) -> Vec<String> {
    key.entity_ids()
        .map(|(collection, id)| entity_token(collection, id))
        .chain(key.spec().sources().iter().map(|c| collection_token(c)))
        .collect()
}

/// The collection of a document token, `e:<collection>:<id key>` (the
/// key `rel:<collection>` names its functions with relations on it).
pub(crate) fn document_collection(token: &str) -> Option<&str> {
    split_document(token).map(|(collection, _)| collection)
}

/// The collection and id key of a document token,
/// `e:<collection>:<id key>`. A collection's name may hold `:`, and an id
/// key's shape (`o:` and 24 hex digits, `i:` and an integer, `s:` and a
/// JSON string) starts no tail of one: the first `:` followed by a whole
/// id key ends the collection. `document_of` in `lua/common.lua` reads
/// tokens the same way.
pub(crate) fn split_document(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix("e:")?;
    rest.match_indices(':')
        .map(|(at, _)| at)
        .filter(|&at| at > 0)
        .find(|&at| is_id_key(&rest[at + 1..]))
        .map(|at| (&rest[..at], &rest[at + 1..]))
}

/// Whether `key` has the shape of an id key ([`split_document`]).
fn is_id_key(key: &str) -> bool {
    if let Some(hex) = key.strip_prefix("o:") {
        hex.len() == 24 && hex.bytes().all(|b| b.is_ascii_hexdigit())
    } else if let Some(n) = key.strip_prefix("i:") {
        let digits = n.strip_prefix('-').unwrap_or(n);
        !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
    } else if let Some(json) = key.strip_prefix("s:") {
        // A JSON string: no quote or lone backslash inside once each
        // escaped character is taken out.
        let Some(inner) = json.strip_prefix('"').and_then(|j| j.strip_suffix('"')) else {
            return false;
        };
        let mut escaped = false;
        for c in inner.chars() {
            match (escaped, c) {
                // The escaped character, whatever it is.
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => return false,
                _ => {}
            }
        }
        !escaped
    } else {
        false
    }
}

/// Whether a dependency token names documents (`e:`/`c:`), which only a
/// worker's change stream keeps a value fresh from.
pub(crate) fn names_documents(token: &str) -> bool {
    token.starts_with("e:") || token.starts_with("c:")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_token_splits_before_its_id_key_whatever_its_collection_holds() {
        let oid = "e:shop:orders:o:65f0a1b2c3d4e5f6a7b8c9d0";
        assert_eq!(
            split_document(oid),
            Some(("shop:orders", "o:65f0a1b2c3d4e5f6a7b8c9d0"))
        );
        assert_eq!(split_document("e:users:i:-7"), Some(("users", "i:-7")));
        let string = r#"e:a:b:s:"x:i:1:o:y""#;
        assert_eq!(split_document(string), Some(("a:b", r#"s:"x:i:1:o:y""#)));
        assert_eq!(document_collection(oid), Some("shop:orders"));
        // A quote in a collection's name: the first split's tail is not
        // one JSON string.
        assert_eq!(
            split_document(r#"e:a:s:"b:s:"c""#),
            Some((r#"a:s:"b"#, r#"s:"c""#))
        );
        assert_eq!(
            split_document(r#"e:a:s:"b\"":s:"c\\""#),
            Some((r#"a:s:"b\"""#, r#"s:"c\\""#))
        );
        for not_one in [
            "e:users",
            "e::i:1",
            "e:users:i:",
            "e:users:o:12",
            r#"e:users:s:"a\""#,
            "c:users",
            "v:f#1:x",
        ] {
            assert_eq!(split_document(not_one), None, "{not_one}");
        }
        // Every id key the entity module writes is one.
        for id in [
            crate::EntityId::Int(3),
            crate::EntityId::String("a:\"b".into()),
            crate::EntityId::ObjectId(bson::oid::ObjectId::new()),
        ] {
            let token = id.token("x:y");
            let (collection, key) = split_document(&token).unwrap();
            assert_eq!(collection, "x:y");
            assert_eq!(crate::EntityId::from_key(key), Some(id));
        }
    }

    #[test]
    fn a_keys_base_is_its_leading_hash_tag_and_colon() {
        let base = base("shop#48:k7");
        assert_eq!(base_of_key(&value(&base, "f#1:{x}")), Some(base.as_str()));
        assert_eq!(
            unwritten(base_of_key(&jobs(&base)).unwrap()),
            "{shop#48:k7}:probe:a"
        );
        for untagged in ["plain", "{}:v:x", "{open:v:x", "{shop}v:x", "x{shop}:v"] {
            assert_eq!(base_of_key(untagged), None, "{untagged}");
        }
    }

    #[test]
    fn keys_share_the_instances_hash_tag() {
        let base = base("shop");
        assert_eq!(base, "{shop}:");
        assert_eq!(value(&base, "f#1:1"), "{shop}:v:f#1:1");
        assert!(value(&base, "x").starts_with(&value_prefix(&base)));
        let mut out = String::from("left over");
        let id_at = write_value(&mut out, &base, |out| out.push_str("f#1:1"));
        assert_eq!(out, value(&base, "f#1:1"));
        assert_eq!(&out[id_at..], "f#1:1");
        assert!(dependants(&base, "c:x").starts_with(&dependants_prefix(&base)));
        assert_eq!(
            document_dependants_pattern(&base, "a*b"),
            "{shop}:r:e:a\\*b:*"
        );
        let workers = WorkerKeys::new(&base);
        for key in [
            jobs(&base),
            dead(&base),
            done(&base),
            task(&base, "t1"),
            functions(&base),
            config(&base),
            collections(&base),
            relations(&base, "orders"),
            dependants(&base, "c:orders"),
            document_dependants_pattern(&base, "orders"),
            self::workers(&base),
            workers.token,
            workers.lease,
            workers.fence,
            workers.lost,
            workers.time,
        ] {
            assert!(key.starts_with("{shop}:"), "{key}");
        }
    }

    #[test]
    fn the_scripts_document_the_same_keys() {
        // lua/common.lua's header lists the keys the scripts build from
        // the base they are given, as `base.."<name>"`.
        let common = include_str!("../../lua/common.lua");
        for name in [
            jobs(""),
            dead(""),
            done(""),
            config(""),
            collections(""),
            functions(""),
            value("", ""),
            task("", ""),
            dependants_prefix(""),
        ] {
            let written = format!("base..\"{name}\"");
            assert!(
                common.contains(&written),
                "lua/common.lua does not document {written}"
            );
        }
    }
}
