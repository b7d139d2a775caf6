//! The graph report's types: how far it reaches and what it found.
//! [`Smache::inspect_graph`](crate::Smache::inspect_graph) builds it from a
//! [`GraphStart`] (`start.rs`) by a walk (`walk.rs`); `render.rs` prints it
//! as text, Graphviz dot or Mermaid.

use std::fmt;
use std::time::SystemTime;

use super::start::GraphStart;

/// How far a graph report reaches. Consuming builders over public fields:
///
/// ```
/// let options = smache::inspect::GraphOptions::default().limit(20).depth(2);
/// assert_eq!((options.limit, options.depth, options.max_nodes), (20, 2, 500));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct GraphOptions {
    /// The most dependants shown of one node (and dependencies, aliases,
    /// relation targets); the others are counted ("… and 12,345 more"),
    /// never read. Default 50.
    pub limit: usize,
    /// How many edges away from the start the walk goes, up the
    /// dependencies and down the dependants. Default 3.
    pub depth: usize,
    /// The most nodes of one report; past it the walk stops and the
    /// report says so. Default 500.
    pub max_nodes: usize,
}

impl Default for GraphOptions {
    fn default() -> Self {
        GraphOptions {
            limit: 50,
            depth: 3,
            max_nodes: 500,
        }
    }
}

impl GraphOptions {
    /// Sets [`limit`](Self::limit).
    #[must_use]
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// Sets [`depth`](Self::depth).
    #[must_use]
    pub fn depth(mut self, depth: usize) -> Self {
        self.depth = depth;
        self
    }

    /// Sets [`max_nodes`](Self::max_nodes) (at least 1).
    #[must_use]
    pub fn max_nodes(mut self, max_nodes: usize) -> Self {
        self.max_nodes = max_nodes.max(1);
        self
    }
}

/// The dependency graph around a start; see
/// [`Smache::inspect_graph`](crate::Smache::inspect_graph). `Display` prints
/// it as text; [`dot`](Self::dot) and [`mermaid`](Self::mermaid) as graphs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GraphReport {
    /// Where it starts.
    pub start: GraphStart,
    /// How far it reaches.
    pub options: GraphOptions,
    /// The nodes: the start first, then in the order the walk met them.
    pub nodes: Vec<GraphNode>,
    /// The edges, each from what changes to what it changes.
    pub edges: Vec<GraphEdge>,
    /// When it was read (Redis's clock): ages are counted from it.
    pub read_at: SystemTime,
    /// Whether the walk stopped at [`GraphOptions::max_nodes`].
    pub truncated: bool,
}

impl GraphReport {
    /// The node of `token`, if the report has it.
    #[must_use]
    pub fn node(&self, token: &str) -> Option<&GraphNode> {
        self.nodes.iter().find(|node| node.token == token)
    }

    /// The edges from `token` to what depends on it.
    pub fn edges_from<'a>(&'a self, token: &'a str) -> impl Iterator<Item = &'a GraphEdge> {
        self.edges.iter().filter(move |edge| edge.from == token)
    }

    /// The edges to `token` from what it depends on.
    pub fn edges_to<'a>(&'a self, token: &'a str) -> impl Iterator<Item = &'a GraphEdge> {
        self.edges.iter().filter(move |edge| edge.to == token)
    }
}

/// One node of a [`GraphReport`]: a value, an alias, a document, a
/// collection or a relation.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GraphNode {
    /// Its token: `v:<value id>` (a value or an alias),
    /// `e:<collection>:<id key>`, `c:<collection>`, or for a relation
    /// `rel:<function>|<collection>[:<id key>]`.
    pub token: String,
    /// What it is, and how it stands.
    pub kind: NodeKind,
    /// How many edges from the start the walk met it.
    pub depth: usize,
    /// How many values depend on it (its reverse set `r:<token>`); for a
    /// relation, how many entities the document maps to.
    pub dependants: u64,
    /// How many of its dependants (aliases, relations, relation targets)
    /// the report leaves out: past the limit, the depth or the node bound.
    pub dependants_left_out: u64,
    /// How many tokens a value depends on (its field `f`).
    pub dependencies: u64,
    /// How many of those the report leaves out.
    pub dependencies_left_out: u64,
}

/// What a [`GraphNode`] is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeKind {
    /// A stored value (or one being computed for the first time).
    Value(ValueNode),
    /// An alias: a key that reads the value `target` (see
    /// [`Smache::alias`](crate::Smache::alias)).
    Alias {
        /// The alias's value id.
        id: String,
        /// The value id it stands for.
        target: String,
    },
    /// A document.
    Document {
        /// Its collection.
        collection: String,
        /// Its id as keys write it (`o:<hex>`, `i:<n>`, `s:"<string>"`).
        id: String,
    },
    /// A whole collection: `sources(...)` values depend on it, and a
    /// change of any of its documents is a change in it.
    Collection {
        /// Its name.
        name: String,
    },
    /// A function with `relations(...)` on a collection: a changed
    /// document of it is mapped to the entities whose values it refreshes.
    Relation {
        /// `<name>#<version>`.
        function: String,
        /// The related collection.
        collection: String,
        /// The document (its id key), when the report starts from one:
        /// then the node's edges go to the values of the entities it
        /// mapped to at its last change smache saw (the values of the
        /// function taking that entity alone, `<function>:<id key>`).
        document: Option<String>,
        /// The id keys it mapped to (at most the limit).
        targets: Vec<String>,
    },
    /// A value id met in a reverse set or a dependency whose key is gone
    /// (expired or dropped): its edges go as its dependencies change.
    Gone {
        /// The value id.
        id: String,
    },
    /// A value key holding something other than a smache hash.
    Foreign {
        /// The value id.
        id: String,
        /// The Redis type it holds.
        redis_type: String,
    },
}

/// How a stored value stands.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ValueNode {
    /// Its value id.
    pub id: String,
    /// Its function, `<name>#<version>`.
    pub function: String,
    /// The value version (it increases at each store); `None` before the
    /// first.
    pub version: Option<u64>,
    /// Fresh, stale, and what comes of it.
    pub freshness: Freshness,
    /// When it was computed (the computing process's clock); `None` with
    /// no value, or for one over 1 MiB (its envelope is not read).
    pub computed_at: Option<SystemTime>,
    /// When it went stale (Redis's clock), when known.
    pub stale_since: Option<SystemTime>,
    /// Whether it is past its time-to-live (its next read refreshes it).
    pub expired: bool,
    /// The submitted task pending for it, if any.
    pub task: Option<String>,
    /// Whether a caller holds its compute lease now.
    pub computing: bool,
    /// Whether its function is `refresh = mark_stale`.
    pub mark_stale: bool,
    /// Whether the value is kept in MongoDB (`store = mongo`).
    pub in_mongodb: bool,
    /// The size of what Redis holds of it (its envelope, or the reference
    /// to one in MongoDB), bytes.
    pub size: u64,
}

/// Whether a value is fresh, and if not, what comes of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Freshness {
    /// Nothing it depends on changed since it was computed.
    Fresh,
    /// Stale, its recompute job queued for an executor.
    Pending,
    /// Stale, its recompute running (started after it went stale).
    Recomputing,
    /// Stale with no job: its next call recomputes it (the values of a
    /// `refresh = mark_stale` function).
    Stale,
    /// Stale with no recompute coming (past `max_fanout`, a related
    /// document whose earlier targets are unknown, or a job given up): its
    /// next reader recomputes it rather than being served it.
    StaleNoRecompute,
    /// No value stored yet: a first computation records its known edges
    /// before it stores.
    NoValue,
}

impl fmt::Display for Freshness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Freshness::Fresh => "fresh",
            Freshness::Pending => "stale, recompute queued",
            Freshness::Recomputing => "stale, recompute running",
            Freshness::Stale => "stale, recomputed by its next call",
            Freshness::StaleNoRecompute => "stale, no recompute coming (its next read recomputes)",
            Freshness::NoValue => "no value yet",
        })
    }
}

/// An edge of a [`GraphReport`]: a change of `from` changes `to`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct GraphEdge {
    /// The token of what changes.
    pub from: String,
    /// The token of what it changes.
    pub to: String,
    /// Why.
    pub kind: EdgeKind,
}

/// Why a change of an edge's `from` changes its `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EdgeKind {
    /// `to` depends on `from` (read it: an entity argument, a source, a
    /// nested value).
    Dependency,
    /// `to` is an alias of the value `from`.
    Alias,
    /// `from` is a document of the collection `to`.
    Collection,
    /// A relation: from the related document (or collection) to the
    /// function's relation, and from it to the values it maps to.
    Relation,
}
