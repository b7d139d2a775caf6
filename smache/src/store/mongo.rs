//! Values kept in MongoDB (`store = mongo`), beside the Redis store.
//!
//! Redis stays the arbiter: it holds the value hash (versions, change
//! generations, leases), the graph, and in place of the envelope a
//! reference (the envelope's header and a digest of the value, see
//! [`crate::envelope::reference`]). MongoDB holds the envelopes, one
//! immutable document per computation:
//!
//! ```text
//! { _id: "<value key>@<generation>", k: "<value key>", w: <generation>,
//!   d: <envelope>, exp: <date, when it may be deleted> }
//! ```
//!
//! The document is written first, then the reference in Redis (whose
//! script refuses a value older than the stored one); a hit reads the hash,
//! then the document of the generation it names. Replaced documents are
//! not deleted at once but given an `exp` a little ahead, so that a reader
//! who just read the old reference still finds them; a TTL index on `exp`
//! deletes them, and the values of functions with a time-to-live.

use std::time::Duration;

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

fn id(key: &str, generation: u64) -> String {
    format!("{key}@{generation}")
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

    /// Writes the envelope computed from `generation`; it expires after
    /// twice `ttl` (like the Redis key), or never.
    pub(crate) async fn put(
        &self,
        key: &str,
        generation_: u64,
        envelope: &[u8],
        ttl: Option<Duration>,
    ) -> Result<()> {
        self.ensure_indexes().await?;
        let mut set = doc! {
            "k": key,
            "w": generation(generation_),
            "d": Binary { subtype: BinarySubtype::Generic, bytes: envelope.to_vec() },
        };
        let mut update = doc! {};
        match ttl.filter(|ttl| !ttl.is_zero()) {
            Some(ttl) => {
                set.insert("exp", at(ttl.saturating_mul(2)));
            }
            None => {
                update.insert("$unset", doc! { "exp": "" });
            }
        }
        update.insert("$set", set);
        self.values
            .update_one(doc! { "_id": id(key, generation_) }, update)
            .upsert(true)
            .await?;
        Ok(())
    }

    /// The envelope computed from `generation`, if it is kept.
    pub(crate) async fn get(&self, key: &str, generation_: u64) -> Result<Option<Vec<u8>>> {
        let found = self
            .values
            .find_one(doc! { "_id": id(key, generation_) })
            .await?;
        Ok(found.and_then(|doc| match doc.get("d") {
            Some(bson::Bson::Binary(binary)) => Some(binary.bytes.clone()),
            _ => None,
        }))
    }

    /// Lets the documents of generations before `generation` expire soon:
    /// a newer value replaced them.
    pub(crate) async fn retire(&self, key: &str, generation_: u64) -> Result<()> {
        self.values
            .update_many(
                doc! { "k": key, "w": { "$lt": generation(generation_) } },
                doc! { "$set": { "exp": at(GRACE) } },
            )
            .await?;
        Ok(())
    }

    /// Deletes the document of a computation Redis refused (a newer value
    /// was stored first).
    pub(crate) async fn discard(&self, key: &str, generation_: u64) -> Result<()> {
        self.values
            .delete_one(doc! { "_id": id(key, generation_) })
            .await?;
        Ok(())
    }

    /// Lets every document of a removed value expire soon.
    pub(crate) async fn forget(&self, key: &str) -> Result<()> {
        self.values
            .update_many(doc! { "k": key }, doc! { "$set": { "exp": at(GRACE) } })
            .await?;
        Ok(())
    }
}
