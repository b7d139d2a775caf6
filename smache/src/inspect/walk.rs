//! The walk behind [`Smache::inspect_graph`]: breadth first from the start,
//! up a value's dependencies and down the dependants, reading one level of
//! tokens at a time through the store (`RedisStore::read_graph`), which
//! never reads more than the limit of one set.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, UNIX_EPOCH};

use super::graph::{
    EdgeKind, Freshness, GraphEdge, GraphNode, GraphOptions, GraphReport, NodeKind, ValueNode,
};
use super::start::GraphStart;
use crate::error::{Error, Result};
use crate::instance::Smache;
use crate::store::keys::split_document;
use crate::store::{RedisStore, Store, TokenRead, ValueFields, ValueRead};

impl Smache {
    /// Reports the dependency graph around a value, a document or a
    /// collection: what a value depends on, what depends on it or on a
    /// document, each value with its version, freshness, pending job and
    /// computed-at time. Bounded: at most
    /// [`limit`](GraphOptions::limit) members of a set are read (the rest
    /// counted), [`depth`](GraphOptions::depth) edges from the start,
    /// [`max_nodes`](GraphOptions::max_nodes) in all. `smache-worker
    /// inspect graph` prints it.
    ///
    /// ```no_run
    /// # use smache::{computed, inspect::GraphOptions, Smache};
    /// #[computed(Raw)]
    /// async fn price(sku: &str) -> u64 {
    ///     42
    /// }
    ///
    /// # async fn run(smache: Smache) -> Result<(), smache::Error> {
    /// let report = smache.inspect_graph(&price::key("x1")?, GraphOptions::default()).await?;
    /// println!("{report}"); // text; report.dot() and report.mermaid() draw it
    /// let users = smache.inspect_graph("users/65f000000000000000000001".parse::<smache::inspect::GraphStart>()?, GraphOptions::default().limit(10)).await?;
    /// for node in &users.nodes {
    ///     println!("{} ({} dependants)", node.token, node.dependants);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`Error::Config`] without the Redis store; [`Error::Redis`] if Redis
    /// cannot be read.
    pub async fn inspect_graph(
        &self,
        start: impl Into<GraphStart>,
        options: GraphOptions,
    ) -> Result<GraphReport> {
        let Store::Redis(store) = &self.inner.store else {
            return Err(Error::Config("inspect needs the Redis store".into()));
        };
        let start = start.into();
        let mut walk = Walk {
            options,
            nodes: Vec::new(),
            index: HashMap::new(),
            edges: HashSet::new(),
            order: Vec::new(),
            reads: HashMap::new(),
            expanded: HashSet::new(),
            truncated: false,
            now_ms: 0,
        };
        walk.run(store, &start).await?;
        Ok(GraphReport {
            start,
            options,
            nodes: walk.nodes,
            edges: walk.order,
            read_at: UNIX_EPOCH + Duration::from_millis(walk.now_ms),
            truncated: walk.truncated,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Dir {
    /// To what a value depends on.
    Up,
    /// To what depends on a token.
    Down,
}

struct Walk {
    options: GraphOptions,
    nodes: Vec<GraphNode>,
    index: HashMap<String, usize>,
    edges: HashSet<GraphEdge>,
    order: Vec<GraphEdge>,
    reads: HashMap<String, TokenRead>,
    expanded: HashSet<(String, Dir)>,
    truncated: bool,
    now_ms: u64,
}

impl Walk {
    async fn run(&mut self, store: &RedisStore, start: &GraphStart) -> Result<()> {
        let root = start.token();
        self.meet(&root, 0);
        let mut frontier = Vec::new();
        if let GraphStart::Value(_) = start {
            frontier.push((root.clone(), Dir::Up, 0));
        }
        frontier.push((root.clone(), Dir::Down, 0));
        while !frontier.is_empty() {
            let mut unread: Vec<String> = Vec::new();
            for (token, ..) in &frontier {
                if !token.starts_with("rel:")
                    && !self.reads.contains_key(token)
                    && !unread.contains(token)
                {
                    unread.push(token.clone());
                }
            }
            if !unread.is_empty() {
                let (now_ms, reads) = store.read_graph(&unread, self.options.limit).await?;
                self.now_ms = now_ms;
                for (token, read) in unread.into_iter().zip(reads) {
                    self.settle(&token, &read);
                    self.reads.insert(token, read);
                }
            }
            let mut next = Vec::new();
            for (token, dir, depth) in frontier {
                if self.expanded.insert((token.clone(), dir)) {
                    self.expand(&token, &root, dir, depth, &mut next);
                }
            }
            frontier = next;
        }
        Ok(())
    }

    /// The node of `token`, added at `depth` if new; `None` past
    /// `max_nodes`.
    fn meet(&mut self, token: &str, depth: usize) -> Option<usize> {
        if let Some(at) = self.index.get(token) {
            return Some(*at);
        }
        if self.nodes.len() >= self.options.max_nodes {
            self.truncated = true;
            return None;
        }
        let kind = if let Some(id) = token.strip_prefix("v:") {
            NodeKind::Gone { id: id.to_owned() }
        } else if let Some(rest) = token.strip_prefix("e:") {
            let (collection, id) = split_document(token).unwrap_or((rest, ""));
            NodeKind::Document {
                collection: collection.to_owned(),
                id: id.to_owned(),
            }
        } else if let Some(name) = token.strip_prefix("c:") {
            NodeKind::Collection {
                name: name.to_owned(),
            }
        } else {
            // A relation (`rel:…`): its caller says what it maps to.
            NodeKind::Relation {
                function: String::new(),
                collection: String::new(),
                document: None,
                targets: Vec::new(),
            }
        };
        self.nodes.push(GraphNode {
            token: token.to_owned(),
            kind,
            depth,
            dependants: 0,
            dependants_left_out: 0,
            dependencies: 0,
            dependencies_left_out: 0,
        });
        self.index.insert(token.to_owned(), self.nodes.len() - 1);
        Some(self.nodes.len() - 1)
    }

    /// Adds the edge `from` → `to`, meeting whichever end is new at
    /// `depth`; false if it could not be added (past `max_nodes`).
    fn link(&mut self, from: &str, to: &str, kind: EdgeKind, depth: usize) -> bool {
        if self.meet(from, depth).is_none() || self.meet(to, depth).is_none() {
            return false;
        }
        let edge = GraphEdge {
            from: from.to_owned(),
            to: to.to_owned(),
            kind,
        };
        if self.edges.insert(edge.clone()) {
            self.order.push(edge);
        }
        true
    }

    fn node(&mut self, token: &str) -> &mut GraphNode {
        &mut self.nodes[self.index[token]]
    }

    /// Records what was read of a node.
    fn settle(&mut self, token: &str, read: &TokenRead) {
        let now_ms = self.now_ms;
        let node = self.node(token);
        node.dependants = read.dependants.total;
        let Some(id) = token.strip_prefix("v:") else {
            return;
        };
        let id = id.to_owned();
        node.kind = match &read.value {
            None | Some(ValueRead::Gone) => NodeKind::Gone { id },
            Some(ValueRead::Foreign(redis_type)) => NodeKind::Foreign {
                id,
                redis_type: redis_type.clone(),
            },
            Some(ValueRead::Alias { target }) => NodeKind::Alias {
                id,
                target: target.clone(),
            },
            Some(ValueRead::Value(fields)) => {
                node.dependencies = fields.dependencies.total;
                NodeKind::Value(value_node(id, fields, now_ms))
            }
        };
    }

    /// Follows the edges of `token` in direction `dir`, queueing what it
    /// meets in `next`.
    fn expand(
        &mut self,
        token: &str,
        root: &str,
        dir: Dir,
        depth: usize,
        next: &mut Vec<(String, Dir, usize)>,
    ) {
        let Some(read) = self.reads.remove(token) else {
            return;
        };
        let at_bound = depth >= self.options.depth;
        match dir {
            Dir::Down => {
                self.down(token, &read, depth, at_bound, next);
                if token == root {
                    if let Some((collection, _)) = split_document(token) {
                        // A change of the document is one in its
                        // collection: what depends on that, too.
                        let coll = format!("c:{collection}");
                        if self.link(token, &coll, EdgeKind::Collection, depth) {
                            next.push((coll, Dir::Down, depth));
                        }
                    }
                }
            }
            Dir::Up => match &read.value {
                Some(ValueRead::Value(fields)) => {
                    let deps = &fields.dependencies;
                    let mut left_out = deps.total.saturating_sub(deps.some.len() as u64);
                    if at_bound {
                        left_out = deps.total;
                    } else {
                        for dep in &deps.some {
                            if self.link(dep, token, EdgeKind::Dependency, depth + 1) {
                                next.push((dep.clone(), Dir::Up, depth + 1));
                            } else {
                                left_out += 1;
                            }
                        }
                    }
                    self.node(token).dependencies_left_out = left_out;
                }
                Some(ValueRead::Alias { target }) => {
                    // The alias reads its target: the same value, so the
                    // same depth.
                    let target = format!("v:{target}");
                    if self.link(&target, token, EdgeKind::Alias, depth) {
                        next.push((target, Dir::Up, depth));
                    }
                }
                _ => {}
            },
        }
        self.reads.insert(token.to_owned(), read);
    }

    fn down(
        &mut self,
        token: &str,
        read: &TokenRead,
        depth: usize,
        at_bound: bool,
        next: &mut Vec<(String, Dir, usize)>,
    ) {
        let mut children: Vec<(String, EdgeKind)> = read
            .dependants
            .some
            .iter()
            .map(|id| (format!("v:{id}"), EdgeKind::Dependency))
            .collect();
        let mut total = read.dependants.total;
        if let Some(ValueRead::Value(fields)) = &read.value {
            children.extend(
                fields
                    .aliases
                    .some
                    .iter()
                    .map(|id| (format!("v:{id}"), EdgeKind::Alias)),
            );
            total += fields.aliases.total;
        }
        total += read.relations;
        if at_bound {
            self.node(token).dependants_left_out = total;
            return;
        }
        let mut shown = 0;
        for (child, kind) in children {
            if self.link(token, &child, kind, depth + 1) {
                shown += 1;
                next.push((child, Dir::Down, depth + 1));
            }
        }
        let document = split_document(token);
        let collection =
            document.map_or_else(|| token.strip_prefix("c:").unwrap_or_default(), |(c, _)| c);
        for relation in &read.mapped {
            let rel = match document {
                Some((coll, key)) => format!("rel:{}|{coll}:{key}", relation.head),
                None => format!("rel:{}|{collection}", relation.head),
            };
            if !self.link(token, &rel, EdgeKind::Relation, depth + 1) {
                continue;
            }
            shown += 1;
            let targets = &relation.targets;
            let node = self.node(&rel);
            node.kind = NodeKind::Relation {
                function: relation.head.clone(),
                collection: collection.to_owned(),
                document: document.map(|(_, key)| key.to_owned()),
                targets: targets.some.clone(),
            };
            node.dependants = targets.total;
            // The targets past the limit; those read are named, each
            // linked to its value where one is stored.
            let mut left_out = targets.total.saturating_sub(targets.some.len() as u64);
            for id in relation.values.iter().flatten() {
                let value = format!("v:{id}");
                if self.link(&rel, &value, EdgeKind::Relation, depth + 1) {
                    next.push((value, Dir::Down, depth + 1));
                } else {
                    left_out += 1;
                }
            }
            self.node(&rel).dependants_left_out = left_out;
        }
        self.node(token).dependants_left_out = total.saturating_sub(shown);
    }
}

/// How a value stands, from its hash's fields.
fn value_node(id: String, fields: &ValueFields, now_ms: u64) -> ValueNode {
    let function = crate::key::split_value_id(&id)
        .map_or(id.as_str(), |(head, _)| head)
        .to_owned();
    let stale = fields.generation > fields.computed_from;
    let stale_at = fields.stale_at_ms.filter(|at| *at > 0);
    let freshness = if fields.size == 0 {
        Freshness::NoValue
    } else if !stale {
        Freshness::Fresh
    } else if fields.queued {
        Freshness::Pending
    } else if fields.stale_at_ms == Some(0) {
        Freshness::StaleNoRecompute
    } else if fields
        .recompute_started_ms
        .zip(stale_at)
        .is_some_and(|(started, at)| started >= at)
    {
        Freshness::Recomputing
    } else {
        Freshness::Stale
    };
    let at = |ms: u64| UNIX_EPOCH + Duration::from_millis(ms);
    ValueNode {
        id,
        function,
        version: fields.version,
        freshness,
        computed_at: fields.header.map(|(ms, _)| at(ms)),
        stale_since: stale.then_some(stale_at).flatten().map(at),
        expired: fields.expires_ms.is_some_and(|end| end <= now_ms),
        task: fields.task.clone(),
        computing: fields.lease.as_ref().is_some_and(|(_, end)| *end > now_ms),
        mark_stale: fields.mark_stale,
        in_mongodb: fields.header.is_some_and(|(_, reference)| reference),
        size: fields.size,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn freshness(fields: ValueFields) -> Freshness {
        value_node("app::f#1:1".into(), &fields, 10_000).freshness
    }

    fn stored(g: u64, w: u64) -> ValueFields {
        ValueFields {
            version: Some(3),
            generation: g,
            computed_from: w,
            size: 20,
            stale_at_ms: (g > w).then_some(5_000),
            ..ValueFields::default()
        }
    }

    #[test]
    fn freshness_follows_the_scripts_fields() {
        assert_eq!(freshness(stored(2, 2)), Freshness::Fresh);
        assert_eq!(
            freshness(ValueFields {
                queued: true,
                ..stored(3, 2)
            }),
            Freshness::Pending
        );
        assert_eq!(
            freshness(ValueFields {
                recompute_started_ms: Some(6_000),
                ..stored(3, 2)
            }),
            Freshness::Recomputing
        );
        // A recompute that started before it went stale again is not this one.
        assert_eq!(
            freshness(ValueFields {
                recompute_started_ms: Some(4_000),
                mark_stale: true,
                ..stored(3, 2)
            }),
            Freshness::Stale
        );
        assert_eq!(
            freshness(ValueFields {
                stale_at_ms: Some(0),
                ..stored(3, 2)
            }),
            Freshness::StaleNoRecompute
        );
        assert_eq!(freshness(ValueFields::default()), Freshness::NoValue);

        let node = value_node(
            "app::f#1:1".into(),
            &ValueFields {
                expires_ms: Some(9_000),
                lease: Some(("me".into(), 11_000)),
                header: Some((1_000, true)),
                ..stored(3, 2)
            },
            10_000,
        );
        assert_eq!(node.function, "app::f#1");
        assert!(node.expired && node.computing && node.in_mongodb);
        assert_eq!(node.stale_since, Some(UNIX_EPOCH + Duration::from_secs(5)));
        assert_eq!(node.computed_at, Some(UNIX_EPOCH + Duration::from_secs(1)));
    }
}
