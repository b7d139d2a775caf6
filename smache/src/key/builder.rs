//! [`KeyBuilder`]: a [`CacheKey`] built argument by argument, as the
//! generated code calls it, each `Raw` argument written the way its type's
//! [`RawKind`] says (see `scalar`).

use serde::Serialize;

use super::scalar::{self, AsJson, AsScalar};
use super::{spare, CacheKey, MAX_ARGS_LEN, MAX_ENTITY_ID_LEN};
use crate::entity::Entity;
use crate::error::{Error, Result};
use crate::spec::FnSpec;

/// serde_json's output appended to a `String`: it writes whole UTF-8
/// fragments (checked all the same: anything else fails the argument).
struct Utf8Sink<'a>(&'a mut String);

impl std::io::Write for Utf8Sink<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = std::str::from_utf8(buf)
            .map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidData, err))?;
        self.0.push_str(text);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Builds a [`CacheKey`] argument by argument. Used by the generated code.
#[doc(hidden)]
#[derive(Debug)]
pub struct KeyBuilder {
    spec: &'static FnSpec,
    pub(super) path: String,
    pub(super) args_at: usize,
    entities: Vec<(&'static str, usize, usize)>,
    first: bool,
    /// Boxed: the builder is moved by value at every step, and an
    /// `Error` would make it twice as large.
    error: Option<Box<Error>>,
}

impl KeyBuilder {
    #[must_use]
    #[inline]
    pub fn new(spec: &'static FnSpec) -> Self {
        let head = spec.head();
        let mut path = spare::take(head.len() + 40);
        path.push_str(head);
        let args_at = path.len();
        KeyBuilder {
            spec,
            path,
            args_at,
            entities: Vec::new(),
            first: true,
            error: None,
        }
    }

    #[inline]
    fn separator(&mut self) {
        if !std::mem::take(&mut self.first) {
            self.path.push(':');
        }
    }

    /// Adds an entity argument, keyed by its id.
    #[must_use]
    pub fn entity<E: Entity + ?Sized>(mut self, entity: &E) -> Self {
        self.separator();
        let start = self.path.len();
        entity.id().write_key(&mut self.path);
        self.entities.push((E::COLLECTION, start, self.path.len()));
        self
    }

    /// Adds a raw argument, keyed by its JSON form (serde_json's).
    #[must_use]
    #[inline]
    pub fn raw<T: Serialize + ?Sized>(self, value: &T) -> Self {
        self.raw_as(value, AsJson)
    }

    /// [`raw`](Self::raw), written as `kind` says: the generated code's
    /// call, with the kind its [`RawProbe`] picked for the argument's type.
    #[must_use]
    #[inline]
    pub fn raw_as<T: Serialize + ?Sized, K: RawKind>(mut self, value: &T, kind: K) -> Self {
        self.separator();
        if self.error.is_none() {
            kind.write(&mut self, value);
        }
        self
    }

    /// serde_json writes the argument (once). Out of line, so that the
    /// scalar path stays small enough to inline.
    #[inline(never)]
    fn raw_json<T: Serialize + ?Sized>(&mut self, value: &T) {
        let at = self.path.len();
        if let Err(err) = serde_json::to_writer(Utf8Sink(&mut self.path), value) {
            self.path.truncate(at);
            self.error = Some(Box::new(Error::Serialize {
                what: "argument",
                message: err.to_string(),
            }));
        }
    }

    /// The finished key; the first argument's serialization error, or
    /// [`Error::KeyTooLong`] past [`MAX_ENTITY_ID_LEN`] or [`MAX_ARGS_LEN`].
    #[inline]
    pub fn finish(self) -> Result<CacheKey> {
        if let Some(err) = self.error {
            return Err(*err);
        }
        if let Some(len) = self
            .entities
            .iter()
            .map(|(_, start, end)| end - start)
            .find(|len| *len > MAX_ENTITY_ID_LEN)
        {
            return Err(Error::KeyTooLong {
                what: "an entity id",
                len,
                max: MAX_ENTITY_ID_LEN,
            });
        }
        let len = self.path.len() - self.args_at;
        if len > MAX_ARGS_LEN {
            return Err(Error::KeyTooLong {
                what: "the arguments",
                len,
                max: MAX_ARGS_LEN,
            });
        }
        Ok(CacheKey {
            spec: self.spec,
            path: self.path,
            args_at: self.args_at,
            entities: self.entities,
        })
    }
}

/// How [`KeyBuilder::raw_as`] writes an argument: [`AsScalar`] or
/// [`AsJson`]. Used by the generated code.
#[doc(hidden)]
pub trait RawKind: Copy {
    /// Appends `value`'s JSON form to the key being built.
    fn write<T: Serialize + ?Sized>(self, builder: &mut KeyBuilder, value: &T);
}

impl RawKind for AsScalar {
    #[inline]
    fn write<T: Serialize + ?Sized>(self, builder: &mut KeyBuilder, value: &T) {
        // Never refused for the types that pick this kind; if it were,
        // serde_json writes it (their `Serialize` is pure).
        if scalar::write(&mut builder.path, value).is_err() {
            builder.raw_json(value);
        }
    }
}

impl RawKind for AsJson {
    #[inline]
    fn write<T: Serialize + ?Sized>(self, builder: &mut KeyBuilder, value: &T) {
        builder.raw_json(value);
    }
}
