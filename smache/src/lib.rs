//! # smache — self-refreshing computed values
//!
//! Put `#[computed]` on an ordinary function and its results are cached,
//! keyed by the function and its arguments: entity arguments by their
//! MongoDB `_id`, plain (`Raw`) arguments by their serialized form.
//!
//! ```
//! use bson::oid::ObjectId;
//! use serde::{Deserialize, Serialize};
//! use smache::computed;
//!
//! #[derive(Serialize, Deserialize, smache::Entity)]
//! #[entity(collection = "users")]
//! struct User {
//!     #[serde(rename = "_id")]
//!     id: ObjectId,
//!     first: String,
//!     last: String,
//! }
//!
//! /// Computed once per user and greeting; later calls read the cache.
//! #[computed(User, Raw, ttl = "10m")]
//! async fn display_name(user: &User, greeting: &str) -> String {
//!     format!("{greeting}, {} {}", user.first, user.last)
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), smache::Error> {
//! let ada = User { id: ObjectId::new(), first: "Ada".into(), last: "Lovelace".into() };
//! assert_eq!(display_name(&ada, "Hello").await, "Hello, Ada Lovelace");
//! assert!(display_name::is_fresh(&ada, "Hello").await?);
//! display_name::invalidate(&ada, "Hello").await?;
//! # Ok(())
//! # }
//! ```
//!
//! Without configuration values live in an embedded in-process store. Point
//! smache at Redis with `SMACHE_REDIS_URL`, or build an instance with
//! [`Smache::builder`] and [`install`](Smache::install) it. If the store
//! cannot be reached, calls compute their value directly and log a warning;
//! they never fail because of the cache.
//!
//! ## The attribute
//!
//! `#[computed(Kind, Kind, …, option = value, …)]` — one kind per argument,
//! in order:
//!
//! * an [`Entity`] type (`User`): the argument is that entity (by value or
//!   through `&`, `Box`, `Arc`) and is keyed by its id;
//! * `Raw`: the argument is any `Serialize + DeserializeOwned` value (or a
//!   reference to one, `&str` and `&[T]` included), keyed by its JSON form;
//!   executors decode it back to recompute the value.
//!
//! Options:
//!
//! | option | meaning |
//! |---|---|
//! | `ttl = "5m"` / `ttl_secs = 300` | time-to-live of the values (default: the instance's) |
//! | `name = "billing.total"` | stable name in keys, so renaming the function keeps its values |
//! | `version = 2` | bump to ignore values stored by an older version of the function |
//! | `sources(Settings)` | any change in that collection refreshes every value |
//! | `relations(Order => \|o: &Order\| o.user_id)` | a changed `Order` refreshes the values of the entities it maps to, before and after the change (see [`Smache::wait_fresh_after`] to read your writes) |
//! | `refresh = mark_stale` | on a change only mark values stale (default `write_through`: recompute in the background) |
//! | `store = mongo` | keep the values in MongoDB, the graph in Redis (see [`ValueStore`]) |
//! | `crate = path` | where the `smache` crate is, for crates that re-export it |
//!
//! Functions returning `Result<T, E>` (or an alias of it) cache only `Ok`
//! values; `E` must implement `Display` (its message is what waiters on a
//! submitted task are told). Every return value must be
//! `Serialize + DeserializeOwned`.
//!
//! Beside each function `f` the macro generates a module `f` with
//! `f::key(args…)` (its [`CacheKey`]), `f::is_fresh(args…)`,
//! `f::invalidate(args…)`, `f::submit(args…)` (see [Tasks](#tasks)) and
//! `f::SPEC` (its [`FnSpec`]). Several keys can share one value with
//! [`Smache::alias`].
//!
//! See [`CacheKey`] for the key layout, and [`metrics`] for what smache
//! measures (hits, misses, computations, recomputes, refresh lag, the
//! worker's lag) through the `metrics` facade, and the spans it makes.
//!
//! ## Tasks
//!
//! Every `#[computed]` function `f` gets `f::submit(args)`. It returns at
//! once: [`Submitted::Ready`] with the cached value on a hit, else
//! [`Submitted::Pending`] with a [`Task`] whose work runs on the executors
//! (see [`executor`]). Concurrent submits of one value, from any
//! process, join one task ("twice for the same price"); plain calls of the
//! value meanwhile wait for the same computation (single flight).
//!
//! A task has a stable id: any process can look it up with
//! [`Smache::task`] and attach callbacks to it ([`Task::on_complete`],
//! handlers registered with [`SmacheBuilder::callback`], given a
//! [`Completion`]), which run on an executor once the task finishes — each
//! exactly once per completion. Failed background work is retried by the
//! instance's [`Retry`] policy ([`SmacheBuilder::retry`]).
//!
//! ```no_run
//! # async fn run() -> Result<(), smache::Error> {
//! #[smache::computed(Raw)]
//! async fn report(month: u32) -> String {
//!     format!("report for {month}") // expensive
//! }
//!
//! let smache = smache::Smache::builder()
//!     .redis_url("redis://127.0.0.1/")
//!     .run_executor() // or executors in other processes
//!     .build()?;
//! let value = smache
//!     .scope(async {
//!         match report::submit(11).await? {
//!             smache::Submitted::Ready(value) => Ok(value),
//!             smache::Submitted::Pending(task) => {
//!                 println!("computing as task {}", task.id());
//!                 task.wait().await
//!             }
//!         }
//!     })
//!     .await?;
//! # Ok(()) }
//! ```

mod builder;
mod call;
mod callback;
mod entity;
mod envelope;
mod error;
pub mod executor;
mod flight;
pub mod inspect;
mod instance;
mod key;
pub mod metrics;
mod registry;
mod retry;
mod roster;
mod runtime;
mod shutdown;
mod spec;
mod store;
mod sync;
mod task;
mod watchdog;
pub mod worker;

pub use smache_macros::{computed, Entity};

/// The `bson` crate smache is built with (version 2). Name BSON types
/// through it (`smache::bson::oid::ObjectId`), or depend on the same major
/// version: entity ids of another `bson` version are other types.
pub use bson;
/// The `mongodb` driver smache is built with (version 3), for the client
/// given to [`SmacheBuilder::mongodb`].
pub use mongodb;

pub use crate::builder::{
    SmacheBuilder, DEFAULT_COMPUTE_LEASE, DEFAULT_EXPECT_WORKER_WITHIN,
    DEFAULT_LOCAL_CACHE_CAPACITY, DEFAULT_MAX_STALE, DEFAULT_MAX_VALUE_SIZE,
    DEFAULT_MEMORY_CAPACITY, DEFAULT_OP_TIMEOUT, DEFAULT_ORPHAN_TIMEOUT, DEFAULT_PREFIX,
};
pub use crate::entity::{Entity, EntityId, IntoEntityId};
pub use crate::error::{Error, Result};
pub use crate::instance::{EntryInfo, LocalCacheStats, Smache};
pub use crate::key::CacheKey;
pub use crate::spec::{ArgKind, FnSpec, Refresh, ValueStore};
pub use crate::store::{Backend, DEFAULT_VALUES_COLLECTION};
pub use crate::task::{
    CallbackResult, Completion, Retry, Submitted, Task, TaskStatus, DEFAULT_TASK_RETENTION,
};

/// How hits of a function whose return type `$ret` maps to its value by
/// `$mode` hand the value out (see `call::keep`): in the generated code,
/// where the type is known, so that autoref specialization can tell
/// whether it is `Clone + Send + Sync`. Not public API.
#[doc(hidden)]
#[macro_export]
macro_rules! __smache_keep {
    ($mode:ty, $ret:ty) => {{
        #[allow(unused_imports)]
        use $crate::__private::{KeepClone as _, KeepDecode as _};
        (&&$crate::__private::KeepProbe::<<$mode as $crate::__private::ValueType<$ret>>::Value>::new())
            .keep()
    }};
}

/// How the key of a `Raw` argument of type `$ty` is written (see
/// `key::scalar`): in the generated code, where the type is known, so
/// that autoref specialization can tell whether it is a `KeyScalar`. Not
/// public API.
#[doc(hidden)]
#[macro_export]
macro_rules! __smache_raw_kind {
    ($ty:ty) => {{
        #[allow(unused_imports)]
        use $crate::__private::{RawJson as _, RawScalar as _};
        (&&$crate::__private::RawProbe::<$ty>::new()).kind()
    }};
}

/// Items used by the code `#[computed]` and `#[derive(Entity)]` generate.
/// Not public API: no stability guarantees.
#[doc(hidden)]
pub mod __private {
    pub use crate::__smache_keep as keep;
    pub use crate::__smache_raw_kind as raw_kind;
    pub use crate::call::{
        call_async, call_sync, Answer, DecodeEach, Keep, KeepClone, KeepCloned, KeepDecode,
        KeepProbe, Mode, OkOnly, Plain, ValueType,
    };
    pub use crate::key::{ArgReader, Job, JobError};
    pub use crate::key::{
        AsJson, AsScalar, KeyBuilder, KeyScalar, RawJson, RawKind, RawProbe, RawScalar,
    };

    /// What a generated recompute returns.
    pub type JobResult = Result<(), JobError>;
    pub use crate::registry::{LocalBoxFuture, Registration, Relation};
    pub use crate::task::submit;
    pub use {bson, inventory};

    /// Encodes `value` as a stored envelope; for the benchmarks.
    ///
    /// # Errors
    /// When the value does not serialize.
    pub fn envelope_encode<T: serde::Serialize + ?Sized>(
        value: &T,
        computed_at_ms: u64,
    ) -> crate::Result<Vec<u8>> {
        crate::envelope::encode(value, computed_at_ms)
    }

    /// Decodes a stored envelope and its value; for the benchmarks and
    /// the fuzz targets.
    ///
    /// # Errors
    /// When the bytes are not an envelope of a `T`.
    pub fn envelope_decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> crate::Result<T> {
        let envelope = crate::envelope::decode(bytes)?;
        let _ = crate::envelope::referenced_document(bytes);
        envelope.value()
    }

    /// Decodes a job's value id the way an executor does (function head,
    /// then entity ids and raw JSON arguments in turn); for the fuzz
    /// targets. Returns how many arguments decoded.
    pub fn decode_job(id: &str) -> usize {
        crate::key::decode_for_fuzzing(id)
    }

    use crate::entity::{EntityId, IntoEntityId};

    /// What a `relations(Source => mapper)` runs on a changed `Source`
    /// document: the ids of the `Target` entities whose values depend on it.
    pub fn map_related<S, T, R>(
        document: bson::Document,
        map: impl FnOnce(&S) -> R,
    ) -> crate::Result<Vec<EntityId>>
    where
        S: serde::de::DeserializeOwned,
        T: Entity,
        T::Id: IdKind,
        R: IntoEntityIds<<T::Id as IdKind>::Kind>,
    {
        let source: S = decode_document(document)?;
        Ok(map(&source).into_entity_ids())
    }

    /// Reads a related document for a `relations(...)` mapper.
    pub fn decode_document<T: serde::de::DeserializeOwned>(
        document: bson::Document,
    ) -> crate::Result<T> {
        bson::from_document(document).map_err(|err| crate::Error::Decode {
            what: "a related document",
            message: err.to_string(),
        })
    }

    /// The kind of id an entity is keyed by, from the Rust type of its
    /// `_id` ([`Entity::Id`](crate::Entity::Id)): a `relations(...)` mapper
    /// targeting it must return ids of that kind, so that a mapper
    /// returning, say, a `String` for an entity keyed by `ObjectId` (which
    /// would never match a value) does not compile.
    pub trait IdKind {
        type Kind;
    }

    /// Ids of entities keyed by [`ObjectId`](bson::oid::ObjectId).
    #[derive(Debug)]
    pub enum ObjectIds {}
    /// Ids of entities keyed by strings.
    #[derive(Debug)]
    pub enum StringIds {}
    /// Ids of entities keyed by integers.
    #[derive(Debug)]
    pub enum IntegerIds {}
    /// Ids of entities keyed by [`EntityId`]: any id.
    #[derive(Debug)]
    pub enum AnyIds {}

    macro_rules! id_kinds {
        ($($kind:ty: $($t:ty),*;)*) => {$($(
            impl IdKind for $t {
                type Kind = $kind;
            }
        )*)*};
    }
    id_kinds! {
        ObjectIds: bson::oid::ObjectId;
        StringIds: String;
        IntegerIds: i8, i16, i32, i64, u8, u16, u32;
        AnyIds: EntityId;
    }

    /// What a `relations(...)` mapper may return for a target entity keyed
    /// by ids of kind `K`: one id, an optional id, or several.
    #[diagnostic::on_unimplemented(
        message = "a `relations(...)` mapper returns `{Self}`, which is not an id of the entity it maps to",
        label = "returns `{Self}`",
        note = "return the target entity's id type (its `_id` field's type: here `{K}`), an `Option` of one or a `Vec` of them, or `smache::EntityId`s"
    )]
    pub trait IntoEntityIds<K> {
        fn into_entity_ids(self) -> Vec<EntityId>;
    }

    macro_rules! into_entity_ids {
        ($($kind:ty: $($t:ty),*;)*) => {$($(
            impl IntoEntityIds<$kind> for $t {
                fn into_entity_ids(self) -> Vec<EntityId> {
                    vec![self.to_entity_id()]
                }
            }
            impl IntoEntityIds<$kind> for Option<$t> {
                fn into_entity_ids(self) -> Vec<EntityId> {
                    self.iter().map(IntoEntityId::to_entity_id).collect()
                }
            }
            impl IntoEntityIds<$kind> for Vec<$t> {
                fn into_entity_ids(self) -> Vec<EntityId> {
                    self.iter().map(IntoEntityId::to_entity_id).collect()
                }
            }
        )*)*};
    }
    into_entity_ids! {
        ObjectIds: bson::oid::ObjectId;
        StringIds: String, &str;
        IntegerIds: i8, i16, i32, i64, u8, u16, u32;
        AnyIds: bson::oid::ObjectId, String, &str, i8, i16, i32, i64, u8, u16, u32;
    }

    // `EntityId`s whatever the kind: the escape hatch (one of another kind
    // matches no value).
    impl<K> IntoEntityIds<K> for EntityId {
        fn into_entity_ids(self) -> Vec<EntityId> {
            vec![self]
        }
    }
    impl<K> IntoEntityIds<K> for Option<EntityId> {
        fn into_entity_ids(self) -> Vec<EntityId> {
            self.into_iter().collect()
        }
    }
    impl<K> IntoEntityIds<K> for Vec<EntityId> {
        fn into_entity_ids(self) -> Vec<EntityId> {
            self
        }
    }

    use crate::entity::Entity;
    use std::rc::Rc;
    use std::sync::Arc;

    /// An argument declared with an entity kind.
    #[diagnostic::on_unimplemented(
        message = "this argument is declared as the entity `{E}`, but its type is `{Self}`",
        label = "expected `{E}`, `&{E}`, `Box<{E}>` or `Arc<{E}>`",
        note = "declare the argument as `Raw` to key it by its serialized value instead"
    )]
    pub trait EntityArg<E: Entity> {
        fn entity_ref(&self) -> &E;
    }

    macro_rules! entity_arg {
        ($($wrapper:ty),*) => {$(
            impl<E: Entity> EntityArg<E> for $wrapper {
                fn entity_ref(&self) -> &E {
                    self
                }
            }
        )*};
    }
    entity_arg!(&E, &mut E, Box<E>, Arc<E>, Rc<E>);

    impl<E: Entity> EntityArg<E> for E {
        fn entity_ref(&self) -> &E {
            self
        }
    }

    /// Builds an entity argument from a document an executor loaded.
    #[diagnostic::on_unimplemented(
        message = "this argument is declared as the entity `{E}`, but its type is `{Self}`",
        label = "expected `{E}`, `&{E}`, `Box<{E}>` or `Arc<{E}>`"
    )]
    pub trait FromLoaded<E> {
        fn from_loaded(entity: E) -> Self;
    }

    impl<E: Entity> FromLoaded<E> for E {
        fn from_loaded(entity: E) -> Self {
            entity
        }
    }

    macro_rules! from_loaded {
        ($($wrapper:ident),*) => {$(
            impl<E: Entity> FromLoaded<E> for $wrapper<E> {
                fn from_loaded(entity: E) -> Self {
                    $wrapper::new(entity)
                }
            }
        )*};
    }
    from_loaded!(Box, Arc, Rc);
}
