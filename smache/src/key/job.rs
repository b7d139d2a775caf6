//! A recompute job as the generated code sees it: the inverse of the key
//! encoder in [`super`]. A job names a value by its id
//! (`<name>#<version>:<args>`); [`ArgReader`] turns the arguments back into
//! the function's arguments (entities loaded fresh from MongoDB, raw values
//! from their JSON), and [`Job::report`] is how the call path tells the
//! executor what became of the computation.

use std::sync::Mutex;

use bson::oid::ObjectId;
use serde::de::DeserializeOwned;

use super::CacheKey;
use crate::entity::{Entity, EntityId};
use crate::error::Error;

/// What reading a job's arguments gives.
type Result<T, E = JobError> = std::result::Result<T, E>;

/// Why a job could not run its function: the executor's business (it drops
/// the value, dead-letters the job, or retries), never a caller's.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// An entity argument's document no longer exists: the value is
    /// dropped.
    #[error("the document {id} of collection {collection} no longer exists")]
    EntityGone {
        /// The entity's collection.
        collection: &'static str,
        /// The document's id.
        id: EntityId,
    },
    /// The job's arguments do not match the function's: retrying cannot
    /// help.
    #[error("malformed job: {0}")]
    Malformed(String),
    /// MongoDB (loading an entity) failed: worth a retry.
    #[error(transparent)]
    Store(#[from] Error),
}
use crate::spec::FnSpec;
use crate::sync::lock;

/// One job handed to the generated code of the function it names: a
/// recompute of a stale value, or the computation of a submitted task.
#[derive(Debug)]
pub struct Job {
    mongo: Option<mongodb::Database>,
    /// The value's storage key.
    key: String,
    /// A recompute from this change generation (no lookup, no single
    /// flight, a conditional store); `None` for a submitted task, which
    /// takes the plain call path.
    started: Option<u64>,
    args: String,
    report: Mutex<Report>,
}

/// What became of a job's computation, as the call path reports it.
#[derive(Debug, Default)]
pub(crate) struct Report {
    /// How the recomputed value was stored; `None` when the call did not
    /// store for this job (a submitted task, or a key that did not match).
    pub(crate) outcome: Option<Outcome>,
    /// Why the function's result was not cached, if it was not.
    pub(crate) failure: Option<String>,
}

impl Job {
    /// A job for the value stored at `key`, whose arguments are `args`.
    pub(crate) fn new(
        mongo: Option<mongodb::Database>,
        key: String,
        started: Option<u64>,
        args: String,
    ) -> Job {
        Job {
            mongo,
            key,
            started,
            args,
            report: Mutex::new(Report::default()),
        }
    }

    /// A reader over the job's encoded arguments, in order, for the
    /// function `spec` describes.
    #[must_use]
    pub fn args(&self, spec: &'static FnSpec) -> ArgReader<'_> {
        ArgReader {
            spec,
            mongo: self.mongo.as_ref(),
            all: &self.args,
            rest: &self.args,
            first: true,
            entities: Vec::new(),
        }
    }

    /// The storage key of the value the job is for.
    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    /// The change generation a recompute starts from; `None` for a task.
    pub(crate) fn started(&self) -> Option<u64> {
        self.started
    }

    /// Records what became of the computation.
    pub(crate) fn report(&self, outcome: Option<Outcome>, failure: Option<String>) {
        *lock(&self.report) = Report { outcome, failure };
    }

    /// What the call path reported.
    pub(crate) fn take_report(&self) -> Report {
        std::mem::take(&mut *lock(&self.report))
    }
}

/// What became of storing a computed value (the store's answer, which
/// the call path reports to a job).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The value was stored.
    Stored,
    /// A value computed from newer data was already stored.
    Superseded,
    /// The function returned an error or an unserializable value.
    NotCached,
    /// The store could not be reached.
    Unreachable,
    /// The value is larger than the instance's `max_value_size`.
    TooLarge,
}

/// Decodes a job's arguments; see the key layout on
/// [`CacheKey`](crate::CacheKey#key-scheme). Once every argument is read,
/// [`key`](ArgReader::key) is the cache key they were encoded in.
#[derive(Debug)]
pub struct ArgReader<'a> {
    spec: &'static FnSpec,
    mongo: Option<&'a mongodb::Database>,
    /// All the arguments.
    all: &'a str,
    /// What is left to read.
    rest: &'a str,
    first: bool,
    /// The entity arguments read: collection, and the id's range in `all`.
    entities: Vec<(&'static str, usize, usize)>,
}

impl ArgReader<'_> {
    /// The cache key of the value the arguments name, as the key encoder
    /// wrote it.
    ///
    /// # Errors
    /// [`JobError::Malformed`] if arguments are left unread (the job does not match
    /// the function).
    pub fn key(self) -> Result<CacheKey> {
        if !self.rest.is_empty() {
            return Err(JobError::Malformed(format!(
                "arguments left after the last one: {:?}",
                self.rest
            )));
        }
        Ok(CacheKey::from_job(self.spec, self.all, self.entities))
    }

    /// Where `rest` starts in `all`.
    fn offset(&self) -> usize {
        self.all.len() - self.rest.len()
    }

    fn separator(&mut self) -> Result<()> {
        if !std::mem::take(&mut self.first) {
            self.rest = self.rest.strip_prefix(':').ok_or_else(|| {
                JobError::Malformed(format!("expected `:` before {:?}", self.rest))
            })?;
        }
        Ok(())
    }

    /// The next argument as an entity id.
    fn entity_id(&mut self) -> Result<EntityId> {
        self.separator()?;
        let malformed = || JobError::Malformed(format!("expected an entity id at {:?}", self.rest));
        let (kind, body) = (self.rest.get(..2).ok_or_else(malformed)?, &self.rest[2..]);
        let (id, used) = match kind {
            "o:" => {
                let hex = body.get(..24).ok_or_else(malformed)?;
                let oid = ObjectId::parse_str(hex).map_err(|_| malformed())?;
                (EntityId::ObjectId(oid), 24)
            }
            "i:" => {
                let end = body.find(':').unwrap_or(body.len());
                let n = body[..end].parse::<i64>().map_err(|_| malformed())?;
                (EntityId::Int(n), end)
            }
            "s:" => {
                let (s, used) = json_prefix::<String>(body).map_err(|_| malformed())?;
                (EntityId::String(s), used)
            }
            _ => return Err(malformed()),
        };
        self.rest = &body[used..];
        Ok(id)
    }

    /// The next argument as the id of an entity of `collection`, noted
    /// for [`key`](Self::key).
    fn entity_arg(&mut self, collection: &'static str) -> Result<EntityId> {
        let start = self.offset() + usize::from(!self.first);
        let id = self.entity_id()?;
        self.entities.push((collection, start, self.offset()));
        Ok(id)
    }

    /// The next argument, an entity, loaded fresh from MongoDB.
    ///
    /// # Errors
    /// [`JobError::EntityGone`] if the document no longer exists; MongoDB
    /// errors.
    pub async fn entity<E: Entity + DeserializeOwned>(&mut self) -> Result<E> {
        let id = self.entity_arg(E::COLLECTION)?;
        let db = self.mongo.ok_or_else(|| {
            Error::Config("executors need a MongoDB database (SmacheBuilder::mongodb)".into())
        })?;
        let found = db
            .collection::<bson::Document>(E::COLLECTION)
            .find_one(bson::doc! { "_id": id.to_bson() })
            .await
            .map_err(Error::from)?;
        let doc = found.ok_or(JobError::EntityGone {
            collection: E::COLLECTION,
            id,
        })?;
        bson::from_document(doc).map_err(|err| {
            JobError::Malformed(format!(
                "a {} document does not deserialize: {err}",
                E::COLLECTION
            ))
        })
    }

    /// The next argument, a raw value.
    ///
    /// # Errors
    /// When the encoded value does not deserialize into `T`.
    pub fn raw<T: DeserializeOwned>(&mut self) -> Result<T> {
        self.separator()?;
        let (value, used) = json_prefix::<T>(self.rest)
            .map_err(|err| JobError::Malformed(format!("a raw argument does not decode: {err}")))?;
        self.rest = &self.rest[used..];
        Ok(value)
    }
}

/// Decodes the JSON value at the start of `text`; returns it and its length.
fn json_prefix<T: DeserializeOwned>(text: &str) -> serde_json::Result<(T, usize)> {
    let mut values = serde_json::Deserializer::from_str(text).into_iter::<T>();
    let value = values.next().unwrap_or_else(|| {
        // An empty input: let serde_json word the error.
        serde_json::from_str::<T>(text)
    })?;
    Ok((value, values.byte_offset()))
}

/// Splits a value id `<name>#<version>:<args>` into `<name>#<version>` and
/// the arguments. Names never contain `#`; they may contain `:`.
pub(crate) fn split_value_id(id: &str) -> Option<(&str, &str)> {
    let hash = id.find('#')?;
    let colon = hash + id[hash..].find(':')?;
    Some((&id[..colon], &id[colon + 1..]))
}

/// What [`crate::__private::decode_job`] runs: every decoder a job's
/// value id meets, on arbitrary input. Never panics.
pub(crate) fn decode_for_fuzzing(id: &str) -> usize {
    let Some((_, args)) = split_value_id(id) else {
        return 0;
    };
    for segment in args.split(':') {
        let _ = EntityId::from_key(segment);
    }
    static FUZZED: FnSpec = FnSpec::__new("fuzz", 1, 0, &[]);
    let job = Job::new(None, String::new(), Some(0), args.to_owned());
    let mut reader = job.args(&FUZZED);
    let mut decoded = 0;
    loop {
        if reader.rest.is_empty() && !reader.first {
            return decoded;
        }
        let before = reader.rest;
        let first = reader.first;
        if reader.entity_id().is_ok() {
            decoded += 1;
            continue;
        }
        reader.rest = before;
        reader.first = first;
        if reader.raw::<serde_json::Value>().is_err() {
            return decoded;
        }
        decoded += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KeyBuilder;
    use crate::spec::ArgKind;
    use crate::store::keys;

    #[test]
    fn value_ids_split_after_the_version() {
        assert_eq!(
            split_value_id(r#"app::users::card#2:o:65f000000000000000000001:"en""#),
            Some(("app::users::card#2", r#"o:65f000000000000000000001:"en""#))
        );
        assert_eq!(split_value_id("f#1:"), Some(("f#1", "")));
        assert_eq!(split_value_id("no-version"), None);
    }

    struct Doc(EntityId);

    impl Entity for Doc {
        const COLLECTION: &'static str = "docs";
        type Id = EntityId;
        fn id(&self) -> EntityId {
            self.0.clone()
        }
    }

    static SPEC: FnSpec = FnSpec::__new(
        "app::mixed",
        4,
        0,
        &[
            ArgKind::Entity { collection: "docs" },
            ArgKind::Raw,
            ArgKind::Entity { collection: "docs" },
            ArgKind::Raw,
            ArgKind::Entity { collection: "docs" },
        ],
    );

    /// Every argument the encoder writes, the reader gives back: the job
    /// format is the key format read the other way.
    #[test]
    fn what_the_key_encoder_writes_the_job_reader_reads_back() {
        let oid = ObjectId::parse_str("65f000000000000000000001").unwrap();
        let cases: Vec<(
            EntityId,
            serde_json::Value,
            EntityId,
            serde_json::Value,
            EntityId,
        )> = vec![
            (
                EntityId::ObjectId(oid),
                serde_json::json!("en"),
                EntityId::Int(-42),
                serde_json::json!({"a": [1, 2, "x:y"], "b": null}),
                EntityId::String("with \"quotes\" and : colons".into()),
            ),
            (
                EntityId::String(String::new()),
                serde_json::json!(3.5),
                EntityId::Int(i64::MAX),
                serde_json::json!([]),
                EntityId::ObjectId(oid),
            ),
        ];
        for (a, b, c, d, e) in cases {
            let key = KeyBuilder::new(&SPEC)
                .entity(&Doc(a.clone()))
                .raw(&b)
                .entity(&Doc(c.clone()))
                .raw(&d)
                .entity(&Doc(e.clone()))
                .finish()
                .unwrap();
            let id = key.to_string();
            let (head, args) = split_value_id(&id).unwrap();
            assert_eq!(head, "app::mixed#4");
            let job = Job::new(None, String::new(), None, args.to_owned());
            let mut reader = job.args(&SPEC);
            assert_eq!(reader.entity_arg("docs").unwrap(), a);
            assert_eq!(reader.raw::<serde_json::Value>().unwrap(), b);
            assert_eq!(reader.entity_arg("docs").unwrap(), c);
            assert_eq!(reader.raw::<serde_json::Value>().unwrap(), d);
            assert_eq!(reader.entity_arg("docs").unwrap(), e);
            let read = reader.key().unwrap();
            assert_eq!(read, key, "{id}");
            assert_eq!(keys::static_deps(&read), keys::static_deps(&key));
            assert_eq!(read.value_id(), key.value_id());
        }
    }

    #[test]
    fn a_job_with_arguments_left_over_is_an_error() {
        let job = Job::new(None, String::new(), None, r#""en":3"#.to_owned());
        let mut reader = job.args(&SPEC);
        assert_eq!(reader.raw::<String>().unwrap(), "en");
        assert!(matches!(reader.key(), Err(JobError::Malformed(_))));
    }

    #[test]
    fn job_ids_decode_without_panicking_whatever_they_hold() {
        assert_eq!(
            decode_for_fuzzing(r#"app::card#2:o:65f000000000000000000001:"en":3"#),
            3
        );
        assert_eq!(decode_for_fuzzing(r#"f#1:i:-4:s:"a:\"b""#), 2);
        for odd in [
            "",
            "#",
            "#:",
            "f#1:",
            "f#1::",
            "f#1:o:",
            "f#1:o:zz",
            "f#1:o:65f00000000000000000000",
            "f#1:i:99999999999999999999999",
            "f#1:s:\"unterminated",
            "f#1:s:",
            "é#1:s:\"é\":ö",
            "f#1:[1,2",
            "f#1:{\"a\":1}:x",
            "f#1:\u{0}",
        ] {
            let _ = decode_for_fuzzing(odd);
        }
    }

    /// Inputs the fuzz target `job` found or that once broke a decoder
    /// (one file each in fuzz/regressions/job).
    #[test]
    fn fuzz_regressions_of_job_ids_stay_fixed() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions/job");
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let bytes = std::fs::read(entry.path()).unwrap();
            let _ = decode_for_fuzzing(&String::from_utf8_lossy(&bytes));
        }
    }
}
