//! Documents that computed values depend on.

use std::fmt;
use std::sync::Arc;

use bson::oid::ObjectId;
use bson::Bson;

/// A MongoDB document type that `#[computed]` functions take as an argument.
///
/// A value computed from an entity is keyed by the entity's id, and (with the
/// `smache-worker`) recomputed when the document changes. Derive it:
///
/// ```
/// use bson::oid::ObjectId;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize, smache::Entity)]
/// #[entity(collection = "users")]
/// struct User {
///     #[serde(rename = "_id")]
///     id: ObjectId,
///     name: String,
/// }
///
/// use smache::Entity as _;
/// let user = User { id: ObjectId::new(), name: "Ada".into() };
/// assert_eq!(User::COLLECTION, "users");
/// assert_eq!(user.id(), smache::EntityId::ObjectId(user.id));
/// ```
///
/// The derive finds the id in the field marked `#[entity(id)]`, else the field
/// named `_id`, else the field renamed to `_id` by serde, else the field named
/// `id`. Ids may be [`ObjectId`]s, strings or integers.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a smache entity",
    label = "not an entity",
    note = "derive it with `#[derive(smache::Entity)]`, or declare the argument as `Raw` to key it by its serialized value"
)]
pub trait Entity {
    /// The MongoDB collection the documents live in.
    const COLLECTION: &'static str;

    /// The Rust type of the document's `_id`: what a `relations(...)`
    /// mapper targeting this entity must return (one of it, an `Option` or
    /// a `Vec`; or [`EntityId`]s).
    type Id;

    /// The document's `_id`.
    fn id(&self) -> EntityId;
}

/// The `_id` of an entity document.
///
/// ```
/// use smache::EntityId;
/// assert_eq!(EntityId::from(42).to_string(), "42");
/// assert_eq!(EntityId::from("ada").to_string(), "ada");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum EntityId {
    /// A BSON ObjectId (MongoDB's default `_id`).
    ObjectId(ObjectId),
    /// A string `_id`.
    String(String),
    /// An integer `_id` (BSON int32 or int64).
    Int(i64),
}

impl EntityId {
    /// The id as a BSON value, for queries such as `doc! { "_id": id.to_bson() }`.
    #[must_use]
    pub fn to_bson(&self) -> Bson {
        match self {
            EntityId::ObjectId(oid) => Bson::ObjectId(*oid),
            EntityId::String(s) => Bson::String(s.clone()),
            EntityId::Int(i) => Bson::Int64(*i),
        }
    }

    /// Reads an id from a BSON value (a change event's `documentKey._id`).
    /// Returns `None` for BSON types smache does not use as ids.
    #[must_use]
    pub fn from_bson(value: &Bson) -> Option<Self> {
        match value {
            Bson::ObjectId(oid) => Some(EntityId::ObjectId(*oid)),
            Bson::String(s) => Some(EntityId::String(s.clone())),
            Bson::Int32(i) => Some(EntityId::Int(i64::from(*i))),
            Bson::Int64(i) => Some(EntityId::Int(*i)),
            _ => None,
        }
    }

    /// Appends the id's key segment: `o:<hex>`, `i:<n>` or `s:<json string>`.
    /// Each form is self-delimiting, so keys built from several ids are
    /// unambiguous.
    pub(crate) fn write_key(&self, out: &mut String) {
        // Written in place, with no `String` of its own: an entity-keyed
        // hit builds its key this way.
        match self {
            EntityId::ObjectId(oid) => {
                out.push_str("o:");
                crate::key::push_hex(out, &oid.bytes());
            }
            EntityId::Int(i) => {
                out.push_str("i:");
                out.push_str(itoa::Buffer::new().format(*i));
            }
            EntityId::String(s) => {
                out.push_str("s:");
                crate::key::push_json(out, s);
            }
        }
    }

    /// Parses a whole key segment written by [`write_key`](Self::write_key)
    /// (`o:<hex>`, `i:<n>`, `s:"<json>"`); `None` for anything else.
    pub(crate) fn from_key(key: &str) -> Option<EntityId> {
        let (kind, body) = (key.get(..2)?, key.get(2..)?);
        match kind {
            "o:" => ObjectId::parse_str(body).ok().map(EntityId::ObjectId),
            "i:" => body.parse().ok().map(EntityId::Int),
            "s:" => serde_json::from_str(body).ok().map(EntityId::String),
            _ => None,
        }
    }

    /// The dependency token of the document with this id in `collection`,
    /// `e:<collection>:<key segment>`: what a value reading it records and
    /// what the worker signals when it changes.
    pub(crate) fn token(&self, collection: &str) -> String {
        let mut token = String::with_capacity(collection.len() + 32);
        token.push_str("e:");
        token.push_str(collection);
        token.push(':');
        self.write_key(&mut token);
        token
    }
}

impl fmt::Display for EntityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EntityId::ObjectId(oid) => write!(f, "{}", oid.to_hex()),
            EntityId::String(s) => f.write_str(s),
            EntityId::Int(i) => write!(f, "{i}"),
        }
    }
}

impl From<EntityId> for Bson {
    fn from(id: EntityId) -> Self {
        id.to_bson()
    }
}

/// Types that can serve as an entity's id. Used by `#[derive(Entity)]`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be an entity id",
    label = "not an id type",
    note = "entity ids are `bson::oid::ObjectId`, `String` or integers"
)]
pub trait IntoEntityId {
    /// The id this value denotes.
    fn to_entity_id(&self) -> EntityId;
}

impl<T: IntoEntityId + ?Sized> IntoEntityId for &T {
    fn to_entity_id(&self) -> EntityId {
        (**self).to_entity_id()
    }
}

impl<T: IntoEntityId + ?Sized> IntoEntityId for Box<T> {
    fn to_entity_id(&self) -> EntityId {
        (**self).to_entity_id()
    }
}

impl<T: IntoEntityId + ?Sized> IntoEntityId for Arc<T> {
    fn to_entity_id(&self) -> EntityId {
        (**self).to_entity_id()
    }
}

impl IntoEntityId for EntityId {
    fn to_entity_id(&self) -> EntityId {
        self.clone()
    }
}

impl IntoEntityId for ObjectId {
    fn to_entity_id(&self) -> EntityId {
        EntityId::ObjectId(*self)
    }
}

impl IntoEntityId for str {
    fn to_entity_id(&self) -> EntityId {
        EntityId::String(self.to_owned())
    }
}

impl IntoEntityId for String {
    fn to_entity_id(&self) -> EntityId {
        EntityId::String(self.clone())
    }
}

macro_rules! int_ids {
    ($($t:ty),*) => {$(
        impl IntoEntityId for $t {
            fn to_entity_id(&self) -> EntityId {
                EntityId::Int(i64::from(*self))
            }
        }
    )*};
}
int_ids!(i8, i16, i32, i64, u8, u16, u32);

impl<T: IntoEntityId + ?Sized> From<&T> for EntityId {
    fn from(value: &T) -> Self {
        value.to_entity_id()
    }
}

impl From<ObjectId> for EntityId {
    fn from(oid: ObjectId) -> Self {
        EntityId::ObjectId(oid)
    }
}

impl From<String> for EntityId {
    fn from(s: String) -> Self {
        EntityId::String(s)
    }
}

impl From<i64> for EntityId {
    fn from(i: i64) -> Self {
        EntityId::Int(i)
    }
}

impl From<i32> for EntityId {
    fn from(i: i32) -> Self {
        EntityId::Int(i64::from(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of(id: &EntityId) -> String {
        let mut out = String::new();
        id.write_key(&mut out);
        out
    }

    #[test]
    fn key_segments_are_typed_and_self_delimiting() {
        let oid = ObjectId::parse_str("65f000000000000000000001").unwrap();
        assert_eq!(key_of(&oid.into()), "o:65f000000000000000000001");
        assert_eq!(key_of(&7.into()), "i:7");
        assert_eq!(key_of(&i64::MIN.into()), "i:-9223372036854775808");
        assert_eq!(key_of(&EntityId::from("a:b\"c")), r#"s:"a:b\"c""#);
        // Every form reads back as the id it was written from.
        let oid = ObjectId::new();
        for id in [oid.into(), i64::MIN.into(), EntityId::from("é\\\n")] {
            assert_eq!(EntityId::from_key(&key_of(&id)), Some(id));
        }
        // The string "7" and the integer 7 are different ids.
        assert_ne!(key_of(&EntityId::from("7")), key_of(&7.into()));
        assert_eq!(
            EntityId::from(7).token("users"),
            "e:users:i:7",
            "as the worker signals it"
        );
    }

    #[test]
    fn key_segments_parse_back() {
        for id in [
            EntityId::ObjectId(ObjectId::new()),
            EntityId::Int(-4),
            EntityId::String("a:\"b".into()),
        ] {
            assert_eq!(EntityId::from_key(&key_of(&id)), Some(id));
        }
        assert_eq!(EntityId::from_key("x:1"), None);
        assert_eq!(EntityId::from_key("i:x"), None);
        assert_eq!(EntityId::from_key("o"), None);
    }

    #[test]
    fn bson_round_trip() {
        for id in [
            EntityId::ObjectId(ObjectId::new()),
            EntityId::String("x".into()),
            EntityId::Int(-3),
        ] {
            assert_eq!(EntityId::from_bson(&id.to_bson()), Some(id));
        }
        assert_eq!(EntityId::from_bson(&Bson::Int32(5)), Some(EntityId::Int(5)));
        assert_eq!(EntityId::from_bson(&Bson::Boolean(true)), None);
    }
}
