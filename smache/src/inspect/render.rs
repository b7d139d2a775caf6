//! A [`GraphReport`] as text (its `Display`: a tree from the start, up the
//! dependencies and down the dependants), Graphviz dot, or a Mermaid
//! flowchart. Every id is escaped for the format: dot labels are quoted
//! escStrings (`\` and `"` escaped) on synthetic node ids (`n0`, `n1`, …);
//! Mermaid labels are quoted with `#`, `"`, `<`, `>`, `&` and backticks as
//! entity codes (`#35;`, …).

use std::collections::HashSet;
use std::fmt::{self, Write as _};
use std::str::FromStr;
use std::time::SystemTime;

use super::age;
use super::graph::{EdgeKind, Freshness, GraphEdge, GraphNode, GraphReport, NodeKind};
use crate::error::Error;

/// How to print a [`GraphReport`]: see [`GraphReport::format`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum GraphFormat {
    /// A tree from the start: the report's `Display`.
    #[default]
    Text,
    /// Graphviz dot (`dot -Tsvg`).
    Dot,
    /// A Mermaid flowchart (a ```` ```mermaid ```` block in Markdown).
    Mermaid,
}

impl FromStr for GraphFormat {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        match text {
            "text" => Ok(GraphFormat::Text),
            "dot" => Ok(GraphFormat::Dot),
            "mermaid" => Ok(GraphFormat::Mermaid),
            other => Err(Error::Config(format!(
                "no graph format {other:?}: text, dot or mermaid"
            ))),
        }
    }
}

impl fmt::Display for GraphFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GraphFormat::Text => "text",
            GraphFormat::Dot => "dot",
            GraphFormat::Mermaid => "mermaid",
        })
    }
}

impl GraphReport {
    /// The report in `format`.
    #[must_use]
    pub fn format(&self, format: GraphFormat) -> String {
        match format {
            GraphFormat::Text => self.to_string(),
            GraphFormat::Dot => self.dot(),
            GraphFormat::Mermaid => self.mermaid(),
        }
    }

    /// The graph in Graphviz dot: `dot -Tsvg report.dot > graph.svg`.
    /// Edges go from what changes to what it changes; values are filled
    /// by freshness (green fresh, yellow recompute queued or running,
    /// orange stale, red stale with no recompute coming), the start drawn
    /// thick, and what the report leaves out counted in a plain node.
    #[must_use]
    pub fn dot(&self) -> String {
        let mut out = String::from("digraph smache {\n  rankdir=LR;\n");
        out.push_str("  node [shape=box, style=\"rounded,filled\", fillcolor=\"#ffffff\", fontname=\"Helvetica\", fontsize=10];\n");
        out.push_str("  edge [fontname=\"Helvetica\", fontsize=9];\n");
        for (i, node) in self.nodes.iter().enumerate() {
            let (title, detail) = describe(node, self.read_at);
            let (shape, fill) = look(node);
            let _ = write!(
                out,
                "  n{i} [label=\"{}\\n{}\", shape={shape}, fillcolor=\"{fill}\"",
                dot_escape(&title),
                dot_escape(&detail)
            );
            if matches!(node.kind, NodeKind::Gone { .. } | NodeKind::Foreign { .. }) {
                out.push_str(", style=\"rounded,filled,dashed\"");
            }
            if i == 0 {
                out.push_str(", penwidth=2.5");
            }
            out.push_str("];\n");
        }
        for edge in &self.edges {
            let (Some(from), Some(to)) = (self.at(&edge.from), self.at(&edge.to)) else {
                continue;
            };
            let _ = write!(out, "  n{from} -> n{to}");
            match edge.kind {
                EdgeKind::Dependency => out.push_str(";\n"),
                EdgeKind::Alias => out.push_str(" [style=dashed, label=\"alias\"];\n"),
                EdgeKind::Collection => out.push_str(" [style=dashed, label=\"in\"];\n"),
                EdgeKind::Relation => out.push_str(" [style=bold, label=\"relation\"];\n"),
            }
        }
        for [id, label, from, to] in self.notes() {
            let _ = writeln!(
                out,
                "  {id} [shape=plaintext, style=\"\", label=\"{label}\"];\n  {from} -> {to} [style=dotted];"
            );
        }
        if self.truncated {
            let _ = writeln!(
                out,
                "  truncated [shape=plaintext, style=\"\", label=\"(stopped at {} nodes)\"];",
                self.options.max_nodes
            );
        }
        out.push_str("}\n");
        out
    }

    /// The graph as a Mermaid flowchart (paste it in a ```` ```mermaid ````
    /// block, or `mmdc -i graph.mmd -o graph.svg`); drawn as
    /// [`dot`](Self::dot) draws it.
    #[must_use]
    pub fn mermaid(&self) -> String {
        let mut out = String::from("flowchart LR\n");
        let mut classes: Vec<(&str, Vec<String>)> = Vec::new();
        let mut class =
            |name: &'static str, id: String| match classes.iter_mut().find(|(c, _)| *c == name) {
                Some((_, ids)) => ids.push(id),
                None => classes.push((name, vec![id])),
            };
        for (i, node) in self.nodes.iter().enumerate() {
            let (title, detail) = describe(node, self.read_at);
            let label = format!("{}<br>{}", mermaid_escape(&title), mermaid_escape(&detail));
            let (open, close) = match node.kind {
                NodeKind::Document { .. } => ("([\"", "\"])"),
                NodeKind::Collection { .. } => ("[(\"", "\")]"),
                NodeKind::Relation { .. } => ("{{\"", "\"}}"),
                _ => ("[\"", "\"]"),
            };
            let _ = writeln!(out, "  n{i}{open}{label}{close}");
            class(state(node), format!("n{i}"));
        }
        for edge in &self.edges {
            let (Some(from), Some(to)) = (self.at(&edge.from), self.at(&edge.to)) else {
                continue;
            };
            let arrow = match edge.kind {
                EdgeKind::Dependency => "-->",
                EdgeKind::Alias => "-. alias .->",
                EdgeKind::Collection => "-. in .->",
                EdgeKind::Relation => "== relation ==>",
            };
            let _ = writeln!(out, "  n{from} {arrow} n{to}");
        }
        for [id, label, from, to] in self.notes() {
            let label = mermaid_escape(&label);
            let _ = writeln!(out, "  {id}[\"{label}\"]\n  {from} -.-> {to}");
            class("more", id);
        }
        for (name, fill, stroke) in CLASSES {
            if let Some((_, ids)) = classes.iter().find(|(c, _)| *c == name) {
                let _ = writeln!(out, "  classDef {name} fill:{fill},stroke:{stroke}");
                let _ = writeln!(out, "  class {} {name}", ids.join(","));
            }
        }
        if !self.nodes.is_empty() {
            out.push_str("  style n0 stroke-width:3px\n");
        }
        out
    }

    /// The "… more" notes of what the report leaves out, node by node, as
    /// `[id, label, from, to]` (the note's edge from what changes to what
    /// it changes): below a node (`n3_more`) its dependants left out, above
    /// it (`n3_deps`) its dependencies.
    fn notes(&self) -> Vec<[String; 4]> {
        let mut notes = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            if node.dependants_left_out > 0 {
                let (id, shown) = (format!("n{i}_more"), self.edges_from(&node.token).count());
                let label = more(node.dependants_left_out, shown);
                notes.push([id.clone(), label, format!("n{i}"), id]);
            }
            if node.dependencies_left_out > 0 {
                let (id, shown) = (format!("n{i}_deps"), self.edges_to(&node.token).count());
                let label = more(node.dependencies_left_out, shown);
                notes.push([id.clone(), label, id, format!("n{i}")]);
            }
        }
        notes
    }

    /// The index of `token`'s node: its id in dot and Mermaid is `n<index>`.
    fn at(&self, token: &str) -> Option<usize> {
        self.nodes.iter().position(|node| node.token == token)
    }

    /// Prints the tree below `node` (`up`: its dependencies) after
    /// `prefix`, each node in full once, later as "(see above)".
    fn tree(
        &self,
        f: &mut fmt::Formatter<'_>,
        node: &GraphNode,
        up: bool,
        prefix: &str,
        printed: &mut HashSet<String>,
    ) -> fmt::Result {
        let edges: Vec<&GraphEdge> = if up {
            self.edges_to(&node.token).collect()
        } else {
            self.edges_from(&node.token).collect()
        };
        let left_out = if up {
            node.dependencies_left_out
        } else {
            node.dependants_left_out
        };
        // The node's own dependants, what is left out of them, then its
        // collection (a document's).
        let (edges, collection): (Vec<&GraphEdge>, Vec<&GraphEdge>) = edges
            .into_iter()
            .partition(|edge| edge.kind != EdgeKind::Collection);
        let shown = edges.len();
        let mut items: Vec<Option<&GraphEdge>> = edges.into_iter().map(Some).collect();
        if left_out > 0 {
            items.push(None);
        }
        items.extend(collection.into_iter().map(Some));
        let count = items.len();
        for (i, item) in items.into_iter().enumerate() {
            let last = i + 1 == count;
            let branch = if last { "└─ " } else { "├─ " };
            let Some(edge) = item else {
                writeln!(f, "{prefix}{branch}{}", more(left_out, shown))?;
                continue;
            };
            let token = if up { &edge.from } else { &edge.to };
            let Some(child) = self.node(token) else {
                continue;
            };
            let (title, detail) = describe(child, self.read_at);
            if !printed.insert(child.token.clone()) {
                writeln!(f, "{prefix}{branch}{title}  (see above)")?;
                continue;
            }
            writeln!(f, "{prefix}{branch}{title}  {detail}")?;
            let deeper = format!("{prefix}{}", if last { "   " } else { "│  " });
            self.tree(f, child, up, &deeper, printed)?;
        }
        Ok(())
    }
}

impl fmt::Display for GraphReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(root) = self.nodes.first() else {
            return writeln!(f, "nothing at {}", self.start);
        };
        let (title, detail) = describe(root, self.read_at);
        writeln!(f, "{title}  {detail}")?;
        let mut printed = HashSet::from([root.token.clone()]);
        if self.edges_to(&root.token).next().is_some() || root.dependencies_left_out > 0 {
            writeln!(f, "  depends on")?;
            self.tree(f, root, true, "  ", &mut printed)?;
        }
        if self.edges_from(&root.token).next().is_some() || root.dependants_left_out > 0 {
            writeln!(f, "  depended on by")?;
            self.tree(f, root, false, "  ", &mut printed)?;
        }
        if self.truncated {
            writeln!(
                f,
                "(stopped at {} nodes: more are left out)",
                self.options.max_nodes
            )?;
        }
        Ok(())
    }
}

/// "… and 12,345 more" (after `shown` others), or "… 12,345 more".
fn more(left_out: u64, shown: usize) -> String {
    if shown > 0 {
        format!("… and {} more", thousands(left_out))
    } else {
        format!("… {} more", thousands(left_out))
    }
}

/// `n` with a comma every three digits.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

fn plural(n: u64, what: &str) -> String {
    let s = if n == 1 { "" } else { "s" };
    format!("{} {what}{s}", thousands(n))
}

/// A node's title (what it is) and detail (how it stands), as of `now`.
fn describe(node: &GraphNode, now: SystemTime) -> (String, String) {
    let ago = |at: SystemTime| age(now.duration_since(at).unwrap_or_default());
    match &node.kind {
        NodeKind::Value(value) => {
            let mut parts = Vec::new();
            if let Some(version) = value.version {
                parts.push(format!("v{version}"));
            }
            let since = value
                .stale_since
                .map(|at| format!(" for {}", ago(at)))
                .unwrap_or_default();
            parts.push(match value.freshness {
                Freshness::Fresh | Freshness::NoValue | Freshness::StaleNoRecompute => {
                    value.freshness.to_string()
                }
                Freshness::Pending => format!("stale{since}, recompute queued"),
                Freshness::Recomputing => format!("stale{since}, recompute running"),
                Freshness::Stale => format!("stale{since}, recomputed by its next call"),
            });
            if value.expired {
                parts.push("past its TTL".into());
            }
            if value.computing {
                parts.push("being computed".into());
            }
            if let Some(task) = &value.task {
                parts.push(format!("task {task} pending"));
            }
            if let Some(at) = value.computed_at {
                parts.push(format!("computed {} ago", ago(at)));
            }
            if value.in_mongodb {
                parts.push("kept in MongoDB".into());
            }
            (format!("value {}", value.id), parts.join(", "))
        }
        NodeKind::Alias { id, target } => (format!("alias {id}"), format!("of {target}")),
        NodeKind::Document { collection, id } => (
            format!("document {collection}/{id}"),
            plural(node.dependants, "dependant"),
        ),
        NodeKind::Collection { name } => (
            format!("collection {name}"),
            plural(node.dependants, "dependant"),
        ),
        NodeKind::Relation {
            function,
            collection,
            document,
            targets,
        } => {
            let detail = match document {
                None => format!("maps each changed document of {collection}"),
                Some(_) if targets.is_empty() => "maps it to nothing recorded".to_owned(),
                // Those past the limit are counted as left out.
                Some(_) => format!("maps it to {}", targets.join(", ")),
            };
            (format!("relation {function}"), detail)
        }
        NodeKind::Gone { id } => (
            format!("value {id}"),
            "gone (expired or dropped)".to_owned(),
        ),
        NodeKind::Foreign { id, redis_type } => (
            format!("value {id}"),
            format!("not a smache value (a Redis {redis_type})"),
        ),
    }
}

/// Each class of node (see [`state`]) with its fill and stroke, in the
/// order Mermaid's `classDef`s are written; `more` is the "… more" note.
const CLASSES: [(&str, &str, &str); 7] = [
    ("fresh", "#d9f2d9", "#3c763d"),
    ("pending", "#fff2cc", "#b8860b"),
    ("stale", "#ffd9b3", "#b35900"),
    ("nocompute", "#f4cccc", "#990000"),
    ("none", "#eeeeee", "#888888,stroke-dasharray:3 3"),
    ("token", "#e8eefc", "#4a5f8f"),
    ("more", "none", "none"),
];

/// A node's dot shape and fill.
fn look(node: &GraphNode) -> (&'static str, &'static str) {
    let state = state(node);
    let fill = CLASSES
        .iter()
        .find(|(name, ..)| *name == state)
        .map_or("#eeeeee", |(_, fill, _)| fill);
    let shape = match node.kind {
        NodeKind::Document { .. } => "ellipse",
        NodeKind::Collection { .. } => "folder",
        NodeKind::Relation { .. } => "hexagon",
        _ => "box",
    };
    (shape, fill)
}

/// A node's class: fresh, pending, stale, nocompute, none or token.
fn state(node: &GraphNode) -> &'static str {
    match &node.kind {
        NodeKind::Value(value) => match value.freshness {
            Freshness::Fresh => "fresh",
            Freshness::Pending | Freshness::Recomputing => "pending",
            Freshness::Stale => "stale",
            Freshness::StaleNoRecompute => "nocompute",
            _ => "none",
        },
        NodeKind::Document { .. } | NodeKind::Collection { .. } | NodeKind::Relation { .. } => {
            "token"
        }
        _ => "none",
    }
}

/// `text` inside a dot quoted escString: `\` and `"` escaped (so no `\N`,
/// `\G`, `\l`… sequence is read from an id), line breaks as `\n`.
pub(crate) fn dot_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

/// `text` inside a Mermaid quoted label: the characters Mermaid reads as
/// markup or entity codes (`#`, `"`, `<`, `>`, `&`, backtick) and control
/// characters as decimal entity codes (`#35;`).
pub(crate) fn mermaid_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            c if c.is_control() || matches!(c, '#' | '"' | '<' | '>' | '&' | '`') => {
                let _ = write!(out, "#{};", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_escaped_for_each_format() {
        let id = r#"app::card#1:s:"a\"b [c]":{"k":"<v>"}"#;
        assert_eq!(
            dot_escape(id),
            r#"app::card#1:s:\"a\\\"b [c]\":{\"k\":\"<v>\"}"#
        );
        let mermaid = mermaid_escape(id);
        assert_eq!(
            mermaid,
            r"app::card#35;1:s:#34;a\#34;b [c]#34;:{#34;k#34;:#34;#60;v#62;#34;}"
        );
        assert!(!mermaid.contains('"'));
        assert_eq!(mermaid_escape("a`b&c\u{7}"), "a#96;b#38;c#7;");
    }

    #[test]
    fn counts_read_at_a_glance() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(12_345), "12,345");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(more(150, 50), "… and 150 more");
        assert_eq!(more(3, 0), "… 3 more");
        assert_eq!(plural(1, "dependant"), "1 dependant");
    }
}
