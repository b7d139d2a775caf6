//! Values kept in MongoDB (`store = mongo`), beside the Redis store.
//!
//! Redis stays the arbiter: it holds the value hash (versions, change
//! generations, leases), the graph, and in place of the envelope a
//! reference (the envelope's header, a digest of the value and the id of
//! its document, see [`crate::envelope::reference`]). MongoDB holds the
//! envelopes, one immutable document per computation:
//!
//! ```text
//! { _id: "<value key>@<ObjectId>", k: "<value key>", w: <generation>,
//!   d: <envelope>, exp: <date, when it may be deleted> }
//! ```
//!
//! The document is written first, then the reference in Redis (whose
//! script refuses a value older than the stored one); a hit reads the hash,
//! then the document it names. A refused document is deleted; replaced
//! ones are given an `exp` a little ahead, so that a reader who just read
//! the old reference still finds them; a TTL index on `exp` deletes them,
//! and the values of functions with a time-to-live. A finished task whose
//! value is kept here gets a copy of its own (`_id` the task's key), kept
//! as long as the task.

use std::time::Duration;

use bson::oid::ObjectId;
use bson::spec::BinarySubtype;
use bson::{doc, Binary, DateTime, Document};
use mongodb::options::IndexOptions;
use mongodb::{Collection, IndexModel};
use tokio::sync::OnceCell;

use crate::error::Result;

/// How long a replaced value stays readable.
const GRACE: Duration = Duration::from_secs(60);

/// The collection values are kept in by default.
pub const DEFAULT_VALUES_COLLECTION: &str = "smache_values";

pub(crate) struct MongoValues {
    values: Collection<Document>,
    indexed: OnceCell<()>,
}

impl std::fmt::Debug for MongoValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoValues")
            .field("collection", &self.values.name())
            .finish_non_exhaustive()
    }
}

fn id(key: &str, oid: &ObjectId) -> String {
    format!("{key}@{}", oid.to_hex())
}

fn at(from_now: Duration) -> DateTime {
    let ms = crate::envelope::now_ms()
        .saturating_add(u64::try_from(from_now.as_millis()).unwrap_or(u64::MAX));
    DateTime::from_millis(i64::try_from(ms).unwrap_or(i64::MAX))
}

fn generation(w: u64) -> i64 {
    i64::try_from(w).unwrap_or(i64::MAX)
}

impl MongoValues {
    pub(crate) fn new(values: Collection<Document>) -> Self {
        MongoValues {
            values,
            indexed: OnceCell::new(),
        }
    }

    /// The TTL index on `exp` and the index on `k`, made once per instance.
    async fn ensure_indexes(&self) -> Result<()> {
        self.indexed
            .get_or_try_init(|| async {
                let ttl = IndexModel::builder()
                    .keys(doc! { "exp": 1 })
                    .options(
                        IndexOptions::builder()
                            .name("smache_exp".to_owned())
                            .expire_after(Duration::ZERO)
                            .build(),
                    )
                    .build();
                let by_key = IndexModel::builder()
                    .keys(doc! { "k": 1, "w": 1 })
                    .options(
                        IndexOptions::builder()
                            .name("smache_k_w".to_owned())
                            .build(),
                    )
                    .build();
                self.values.create_indexes([ttl, by_key]).await?;
                Ok(())
            })
            .await
            .map(|_| ())
    }

    /// Writes the envelope computed from `generation` as a new document;
    /// it expires after twice `ttl` (like the Redis key), or never. Returns
    /// the document's id, for the reference.
    pub(crate) async fn put(
        &self,
        key: &str,
        generation_: u64,
        envelope: &[u8],
        ttl: Option<Duration>,
    ) -> Result<ObjectId> {
        self.ensure_indexes().await?;
        let oid = ObjectId::new();
        let mut document = doc! {
            "_id": id(key, &oid),
            "k": key,
            "w": generation(generation_),
            "d": binary(envelope),
        };
        if let Some(ttl) = ttl.filter(|ttl| !ttl.is_zero()) {
            document.insert("exp", at(ttl.saturating_mul(2)));
        }
        self.values.insert_one(document).await?;
        Ok(oid)
    }

    /// The envelope of document `oid` of `key`, if it is kept.
    pub(crate) async fn get(&self, key: &str, oid: &ObjectId) -> Result<Option<Vec<u8>>> {
        self.get_by_id(&id(key, oid)).await
    }

    async fn get_by_id(&self, id: &str) -> Result<Option<Vec<u8>>> {
        let found = self.values.find_one(doc! { "_id": id }).await?;
        Ok(found.and_then(|doc| match doc.get("d") {
            Some(bson::Bson::Binary(binary)) => Some(binary.bytes.clone()),
            _ => None,
        }))
    }

    /// Lets the other documents of `key` computed from `generation` or
    /// before expire soon: document `kept` replaced them.
    pub(crate) async fn retire(&self, key: &str, kept: &ObjectId, generation_: u64) -> Result<()> {
        self.values
            .update_many(
                doc! {
                    "k": key,
                    "_id": { "$ne": id(key, kept) },
                    "w": { "$lte": generation(generation_) },
                },
                doc! { "$set": { "exp": at(GRACE) } },
            )
            .await?;
        Ok(())
    }

    /// Deletes the document of a computation Redis refused (a newer value
    /// was stored first).
    pub(crate) async fn discard(&self, key: &str, oid: &ObjectId) -> Result<()> {
        self.values.delete_one(doc! { "_id": id(key, oid) }).await?;
        Ok(())
    }

    /// Lets every document of a removed value expire soon.
    pub(crate) async fn forget(&self, key: &str) -> Result<()> {
        self.values
            .update_many(doc! { "k": key }, doc! { "$set": { "exp": at(GRACE) } })
            .await?;
        Ok(())
    }

    /// Keeps a copy of a finished task's value for as long as the task.
    pub(crate) async fn keep_for_task(
        &self,
        task_key: &str,
        envelope: &[u8],
        retention: Duration,
    ) -> Result<()> {
        self.ensure_indexes().await?;
        self.values
            .update_one(
                doc! { "_id": task_key },
                doc! { "$set": { "d": binary(envelope), "exp": at(retention.saturating_add(GRACE)) } },
            )
            .upsert(true)
            .await?;
        Ok(())
    }

    /// A finished task's copy of its value.
    pub(crate) async fn task_value(&self, task_key: &str) -> Result<Option<Vec<u8>>> {
        self.get_by_id(task_key).await
    }
}

fn binary(bytes: &[u8]) -> Binary {
    Binary {
        subtype: BinarySubtype::Generic,
        bytes: bytes.to_vec(),
    }
}
