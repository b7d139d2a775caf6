//! The job format: a recompute job ([`Job`]) and the decoding of its value
//! id's arguments ([`ArgReader`]), the inverse of the key encoder in
//! [`crate::key`].

use std::sync::Arc;

use bson::oid::ObjectId;
use serde::de::DeserializeOwned;

use crate::call::Target;
use crate::entity::{Entity, EntityId};
use crate::error::{Error, Result};
use crate::instance::Smache;

/// One recompute job, handed to the generated code of the function it names.
#[derive(Debug)]
pub struct Job {
    pub(super) smache: Smache,
    pub(super) target: Arc<Target>,
    pub(super) args: String,
}

impl Job {
    /// A reader over the job's encoded arguments, in order.
    #[must_use]
    pub fn args(&self) -> ArgReader<'_> {
        ArgReader {
            job: self,
            rest: &self.args,
            first: true,
        }
    }

    /// Runs the function's call `fut`, which recomputes and stores the value.
    ///
    /// # Errors
    /// Never fails itself; the outcome is read by the executor.
    pub async fn run<R>(&self, fut: impl std::future::Future<Output = R>) -> Result<()> {
        self.smache.scope(self.target.scope(fut)).await;
        Ok(())
    }

    /// [`run`](Job::run) for synchronous functions.
    ///
    /// # Errors
    /// Never fails itself; the outcome is read by the executor.
    pub fn run_sync<R>(&self, f: impl FnOnce() -> R) -> Result<()> {
        self.smache.scope_sync(|| self.target.scope_sync(f));
        Ok(())
    }
}

/// Decodes a job's arguments; see the key layout in [`crate::key`].
#[derive(Debug)]
pub struct ArgReader<'a> {
    job: &'a Job,
    rest: &'a str,
    first: bool,
}

impl ArgReader<'_> {
    fn separator(&mut self) -> Result<()> {
        if !std::mem::take(&mut self.first) {
            self.rest = self
                .rest
                .strip_prefix(':')
                .ok_or_else(|| Error::Job(format!("expected `:` before {:?}", self.rest)))?;
        }
        Ok(())
    }

    /// The next argument as an entity id.
    fn entity_id(&mut self) -> Result<EntityId> {
        self.separator()?;
        let malformed = || Error::Job(format!("expected an entity id at {:?}", self.rest));
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

    /// The next argument, an entity, loaded fresh from MongoDB.
    ///
    /// # Errors
    /// [`Error::EntityGone`] if the document no longer exists; MongoDB errors.
    pub async fn entity<E: Entity + DeserializeOwned>(&mut self) -> Result<E> {
        let id = self.entity_id()?;
        let db = self.job.smache.mongodb().ok_or_else(|| {
            Error::Config("executors need a MongoDB database (SmacheBuilder::mongodb)".into())
        })?;
        let found = db
            .collection::<bson::Document>(E::COLLECTION)
            .find_one(bson::doc! { "_id": id.to_bson() })
            .await?;
        let doc = found.ok_or(Error::EntityGone {
            collection: E::COLLECTION,
            id,
        })?;
        bson::from_document(doc).map_err(|err| {
            Error::Job(format!(
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
            .map_err(|err| Error::Job(format!("a raw argument does not decode: {err}")))?;
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
    let job = Job {
        smache: Smache::embedded(),
        target: Target::new(String::new(), Some(0)),
        args: args.to_owned(),
    };
    let mut reader = job.args();
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

    #[test]
    fn value_ids_split_after_the_version() {
        assert_eq!(
            split_value_id(r#"app::users::card#2:o:65f000000000000000000001:"en""#),
            Some(("app::users::card#2", r#"o:65f000000000000000000001:"en""#))
        );
        assert_eq!(split_value_id("f#1:"), Some(("f#1", "")));
        assert_eq!(split_value_id("no-version"), None);
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
