//! Every `#[computed]` function linked into this process, by stable name,
//! so an executor can turn a recompute job back into a call.
//!
//! The macro submits one [`Registration`] per function with `inventory`;
//! a job names the function by `name#version`, and only a function
//! registered under exactly that name and version can run it.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use once_cell::sync::Lazy;

use crate::entity::EntityId;
use crate::error::Result;
use crate::key::{Job, JobError};
use crate::spec::FnSpec;

/// A boxed future that need not be `Send`: jobs run on a blocking thread
/// of their own, so the user's function may hold non-`Send` state.
#[doc(hidden)]
pub type LocalBoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// Decodes a job's arguments and calls the function's body with them,
/// through the call path (which reports to the job what became of it).
#[doc(hidden)]
pub(crate) type Recompute = for<'a> fn(&'a Job) -> LocalBoxFuture<'a, Result<(), JobError>>;

/// Maps a changed document of a related collection to entity ids.
#[doc(hidden)]
pub(crate) type MapRelated = fn(bson::Document) -> Result<Vec<EntityId>>;

/// One `relations(Source => mapper)` of a function.
#[derive(Debug)]
#[doc(hidden)]
pub struct Relation {
    pub(crate) source: &'static str,
    pub(crate) target: &'static str,
    pub(crate) map: MapRelated,
}

impl Relation {
    /// Used by the generated code.
    #[doc(hidden)]
    #[must_use]
    pub const fn new(source: &'static str, target: &'static str, map: MapRelated) -> Self {
        Relation {
            source,
            target,
            map,
        }
    }
}

/// One registered `#[computed]` function.
#[derive(Debug)]
#[doc(hidden)]
pub struct Registration {
    pub(crate) spec: &'static FnSpec,
    pub(crate) recompute: Recompute,
    pub(crate) relations: &'static [Relation],
}

impl Registration {
    /// Used by the generated code.
    #[doc(hidden)]
    #[must_use]
    pub const fn new(spec: &'static FnSpec, recompute: Recompute) -> Self {
        Registration {
            spec,
            recompute,
            relations: &[],
        }
    }

    /// Used by the generated code.
    #[doc(hidden)]
    #[must_use]
    pub const fn with_relations(mut self, relations: &'static [Relation]) -> Self {
        self.relations = relations;
        self
    }
}

inventory::collect!(Registration);

/// Keyed by `name#version`, the head of every value id.
static BY_NAME: Lazy<HashMap<String, &'static Registration>> = Lazy::new(|| {
    let mut map = HashMap::new();
    for registration in inventory::iter::<Registration> {
        let spec = registration.spec;
        let head = format!("{}#{}", spec.name(), spec.version());
        if map.insert(head, registration).is_some() {
            tracing::error!(
                name = spec.name(),
                version = spec.version(),
                "smache: two #[computed] functions share a name and version; jobs may run either"
            );
        }
    }
    map
});

/// The function registered under `head` (`name#version`).
pub(crate) fn find(head: &str) -> Option<&'static Registration> {
    BY_NAME.get(head).copied()
}

/// The `name#version` of every registered function, as jobs name them.
pub(crate) fn heads() -> impl Iterator<Item = &'static str> {
    BY_NAME.keys().map(String::as_str)
}
