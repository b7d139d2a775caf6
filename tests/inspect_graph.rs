//! `Smache::inspect_graph` and `smache-worker inspect graph`: the graph
//! around a value, a document or a collection, read from real Redis (and,
//! for relations, mapped by a real worker and executor from the Mongo test
//! server), with freshness markers, and bounded for huge fan-outs.

use std::time::{Duration, SystemTime};

use bson::doc;
use bson::oid::ObjectId;
use serde::{Deserialize, Serialize};
use smache::inspect::{EdgeKind, Freshness, GraphOptions, GraphReport, GraphStart, NodeKind};
use smache::{computed, Entity, Smache};
use smache_suite::{mongodb_uri, redis_url, unique, worker_binary, WorkerProcess};

#[derive(Clone, Debug, Serialize, Deserialize, Entity)]
#[entity(collection = "users")]
struct User {
    #[serde(rename = "_id")]
    id: ObjectId,
    name: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, Entity)]
#[entity(collection = "plans")]
struct Plan {
    #[serde(rename = "_id")]
    id: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize, Entity)]
#[entity(collection = "orders")]
struct Order {
    #[serde(rename = "_id")]
    id: ObjectId,
    user_id: ObjectId,
    cents: i64,
}

#[computed(User, name = "g.name")]
async fn name_of(user: &User) -> String {
    user.name.clone()
}

/// Over the user, the `plans` collection, and a nested value.
#[computed(User, sources(Plan), name = "g.badge")]
async fn badge(user: &User) -> String {
    format!("<{}>", name_of(user).await)
}

/// Built on `badge`.
#[computed(User, name = "g.page")]
async fn page(user: &User) -> String {
    format!("page {}", badge(user).await)
}

/// A `mark_stale` value over the nested one.
#[computed(User, refresh = mark_stale, name = "g.headline")]
async fn headline(user: &User) -> String {
    format!("news of {}", name_of(user).await)
}

/// One of many lines of a user: a large fan-out of one document.
#[computed(User, Raw, name = "g.line")]
async fn line(user: &User, n: u32) -> String {
    format!("{} {n}", user.name)
}

/// A relation: a changed order refreshes its user's total.
#[computed(User, relations(Order => |o: &Order| o.user_id), name = "g.spent")]
async fn spent(user: &User) -> i64 {
    let db = Smache::current().mongodb().cloned().expect("a database");
    let mut orders = db
        .collection::<Order>("orders")
        .find(doc! { "user_id": user.id })
        .await
        .expect("find orders");
    let mut total = 0;
    while orders.advance().await.expect("cursor") {
        total += orders.deserialize_current().expect("order").cents;
    }
    total
}

/// A value whose id holds what dot and Mermaid read as markup.
#[computed(User, Raw, name = "g.quote")]
async fn quoted(user: &User, text: &str) -> String {
    format!("{}: {text}", user.name)
}

fn user(name: &str) -> User {
    User {
        id: ObjectId::new(),
        name: name.into(),
    }
}

/// Ages as of a fixed moment, so the text is exact: every value computed
/// 2 s before the report was read, stale for 1 s.
fn pinned(mut report: GraphReport) -> GraphReport {
    let now = report.read_at;
    for node in &mut report.nodes {
        if let NodeKind::Value(value) = &mut node.kind {
            value.computed_at = Some(now - Duration::from_secs(2));
            value.stale_since = value.stale_since.map(|_| now - Duration::from_secs(1));
        }
    }
    report
}

fn edge(report: &GraphReport, from: &str, to: &str) -> Option<EdgeKind> {
    report
        .edges
        .iter()
        .find(|e| e.from == from && e.to == to)
        .map(|e| e.kind)
}

fn freshness(report: &GraphReport, token: &str) -> Freshness {
    match report.node(token).map(|n| &n.kind) {
        Some(NodeKind::Value(value)) => value.freshness,
        other => panic!("{token} is no value: {other:?}\n{report}"),
    }
}

/// Runs `smache-worker inspect graph ARGS… --redis-url … --prefix …`.
fn cli(prefix: &str, args: &[&str]) -> String {
    let output = std::process::Command::new(worker_binary())
        .args(["inspect", "graph"])
        .args(args)
        .args(["--redis-url", &redis_url(), "--prefix", prefix])
        .env_remove("SMACHE_REDIS_URL")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Checks that `dot` is a well-formed digraph of `nodes` nodes and `edges`
/// edges between them (by structure: no Graphviz needed).
fn assert_dot(dot: &str, nodes: usize, edges: usize) {
    assert!(dot.starts_with("digraph smache {\n"), "{dot}");
    assert!(dot.ends_with("}\n"), "{dot}");
    let body: Vec<&str> = dot.lines().skip(1).filter(|l| *l != "}").collect();
    for line in &body {
        assert!(line.ends_with(';'), "every statement ends: {line}");
        // Quotes come in pairs once the escaped ones are left out.
        let unescaped = line.replace("\\\\", "").replace("\\\"", "");
        assert_eq!(unescaped.matches('"').count() % 2, 0, "{line}");
    }
    // Graph nodes are `n<index>`; `n<index>_more`/`_deps` count what is
    // left out.
    let is_node = |word: &str| {
        word.strip_prefix('n')
            .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
    };
    let words = |line: &&str| {
        line.split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let declared = body
        .iter()
        .map(words)
        .filter(|w| is_node(&w[0]) && w[1].starts_with("[label="))
        .count();
    assert_eq!(declared, nodes, "{dot}");
    let linked = body
        .iter()
        .map(words)
        .filter(|w| {
            w.len() >= 3 && is_node(&w[0]) && w[1] == "->" && is_node(w[2].trim_end_matches(';'))
        })
        .count();
    assert_eq!(linked, edges, "{dot}");
}

#[tokio::test]
async fn a_values_graph_shows_its_dependencies_dependants_and_aliases_with_their_freshness() {
    let prefix = unique("graph");
    let smache = Smache::builder()
        .redis_url(redis_url())
        .prefix(&prefix)
        .build()
        .unwrap();
    let (ada, old) = (user("Ada"), user("Ada (old account)"));
    smache.scope(page(&ada)).await;
    smache.scope(headline(&ada)).await;
    let badge_key = badge::key(&ada).unwrap();
    smache
        .alias(&badge::key(&old).unwrap(), &badge_key)
        .await
        .unwrap();
    // The nested value dropped and computed again: `badge` is stale with
    // its recompute queued (no executor runs here), `headline` (mark_stale)
    // stale for its next call; `page` still fresh.
    smache
        .invalidate(&name_of::key(&ada).unwrap())
        .await
        .unwrap();
    smache.scope(name_of(&ada)).await;

    // (`name_of` is v2: a dropped value's version goes on, see drop.lua.)
    let (a, o) = (ada.id.to_hex(), old.id.to_hex());
    let report = smache
        .inspect_graph(&badge_key, GraphOptions::default())
        .await
        .unwrap();
    let root = format!("v:g.badge#1:o:{a}");
    assert_eq!(report.nodes[0].token, root);
    assert_eq!(freshness(&report, &root), Freshness::Pending);
    assert_eq!(
        freshness(&report, &format!("v:g.name#1:o:{a}")),
        Freshness::Fresh
    );
    assert_eq!(
        freshness(&report, &format!("v:g.page#1:o:{a}")),
        Freshness::Fresh
    );
    assert_eq!(
        edge(
            &report,
            &format!("v:g.badge#1:o:{a}"),
            &format!("v:g.badge#1:o:{o}")
        ),
        Some(EdgeKind::Alias)
    );
    assert_eq!(edge(&report, "c:plans", &root), Some(EdgeKind::Dependency));
    let text = pinned(report.clone()).to_string();
    assert_eq!(
        text,
        format!(
            "\
value g.badge#1:o:{a}  v1, stale for 1 s, recompute queued, computed 2 s ago
  depends on
  ├─ collection plans  1 dependant
  ├─ document users/o:{a}  4 dependants
  └─ value g.name#1:o:{a}  v2, fresh, computed 2 s ago
     └─ document users/o:{a}  (see above)
  depended on by
  ├─ value g.page#1:o:{a}  v1, fresh, computed 2 s ago
  └─ alias g.badge#1:o:{o}  of g.badge#1:o:{a}
"
        ),
        "{text}"
    );
    // Dot: the six nodes and their six edges.
    let dot = report.dot();
    assert_dot(&dot, 6, 6);
    assert!(
        dot.contains(&format!(
            "n0 [label=\"value g.badge#1:o:{a}\\nv1, stale for"
        )),
        "{dot}"
    );
    assert!(
        dot.contains("fillcolor=\"#fff2cc\", penwidth=2.5"),
        "queued: yellow\n{dot}"
    );
    assert!(dot.contains("[style=dashed, label=\"alias\"]"), "{dot}");

    // From the document: every value over it, transitively, its
    // collection, and the `mark_stale` value stale for its next call.
    let report = smache
        .inspect_graph(
            GraphStart::document("users", ada.id),
            GraphOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        freshness(&report, &format!("v:g.headline#1:o:{a}")),
        Freshness::Stale
    );
    let text = pinned(report).to_string();
    assert_eq!(
        text,
        format!(
            "\
document users/o:{a}  4 dependants
  depended on by
  ├─ value g.badge#1:o:{a}  v1, stale for 1 s, recompute queued, computed 2 s ago
  │  ├─ value g.page#1:o:{a}  v1, fresh, computed 2 s ago
  │  └─ alias g.badge#1:o:{o}  of g.badge#1:o:{a}
  ├─ value g.headline#1:o:{a}  v1, stale for 1 s, recomputed by its next call, computed 2 s ago
  ├─ value g.name#1:o:{a}  v2, fresh, computed 2 s ago
  │  ├─ value g.badge#1:o:{a}  (see above)
  │  └─ value g.headline#1:o:{a}  (see above)
  ├─ value g.page#1:o:{a}  (see above)
  └─ collection users  0 dependants
"
        ),
        "{text}"
    );

    // Through the alias: it reads its target, and what that depends on, a
    // level deep.
    let report = smache
        .inspect_graph(&badge::key(&old).unwrap(), GraphOptions::default().depth(1))
        .await
        .unwrap();
    let text = pinned(report).to_string();
    assert_eq!(
        text,
        format!(
            "\
alias g.badge#1:o:{o}  of g.badge#1:o:{a}
  depends on
  └─ value g.badge#1:o:{a}  v1, stale for 1 s, recompute queued, computed 2 s ago
     ├─ collection plans  1 dependant
     ├─ document users/o:{a}  4 dependants
     └─ value g.name#1:o:{a}  v2, fresh, computed 2 s ago
        └─ … 1 more
"
        ),
        "past the depth: counted\n{text}"
    );

    // The command line: the same report, from the value id `inspect jobs`
    // shows; dot and mermaid on request.
    let stdout = cli(&prefix, &[&format!("g.badge#1:o:{a}")]);
    assert!(
        stdout.starts_with(&format!("value g.badge#1:o:{a}  v1, stale for ")),
        "{stdout}"
    );
    assert!(stdout.contains("recompute queued"), "{stdout}");
    assert!(
        stdout.contains(&format!("  └─ alias g.badge#1:o:{o}  of g.badge#1:o:{a}\n")),
        "{stdout}"
    );
    assert_dot(
        &cli(&prefix, &[&format!("users/{a}"), "--format", "dot"]),
        7,
        9,
    );
    let mermaid = cli(&prefix, &["plans", "--format", "mermaid"]);
    assert!(mermaid.starts_with("flowchart LR\n"), "{mermaid}");
    assert!(
        mermaid.contains(&format!(
            "  n1[\"value g.badge#35;1:o:{a}<br>v1, stale for "
        )),
        "{mermaid}"
    );
    assert!(mermaid.contains("  n0 --> n1\n"), "{mermaid}");
    assert!(mermaid.contains("  n1 --> n2\n"), "{mermaid}");
}

#[tokio::test]
async fn ids_with_quotes_brackets_and_hashes_are_escaped_in_dot_and_mermaid() {
    let prefix = unique("graph-quote");
    let smache = Smache::builder()
        .redis_url(redis_url())
        .prefix(&prefix)
        .build()
        .unwrap();
    let ada = user("Ada");
    let text = r#"say "hi" [x] {y} (z) <b>&amp; #1; `c` \ end"#;
    smache.scope(quoted(&ada, text)).await;
    let key = quoted::key(&ada, text).unwrap();
    let id = key.to_string();
    assert!(
        id.ends_with(r#":"say \"hi\" [x] {y} (z) <b>&amp; #1; `c` \\ end""#),
        "{id}"
    );
    let report = smache
        .inspect_graph(&key, GraphOptions::default())
        .await
        .unwrap();

    let dot = report.dot();
    assert_dot(&dot, 2, 1);
    let escaped =
        r#"value g.quote#1:o:{a}:\"say \\\"hi\\\" [x] {y} (z) <b>&amp; #1; `c` \\\\ end\"\n"#;
    let escaped = escaped.replace("{a}", &ada.id.to_hex());
    assert!(
        dot.contains(&format!("n0 [label=\"{escaped}")),
        "{escaped}\n{dot}"
    );

    let mermaid = report.mermaid();
    let line = mermaid.lines().find(|l| l.starts_with("  n0[")).unwrap();
    assert_eq!(
        line.matches('"').count(),
        2,
        "only the label's own quotes: {line}"
    );
    assert!(
        line.starts_with(&format!(
            "  n0[\"value g.quote#35;1:o:{}:#34;say \\#34;hi\\#34; [x] {{y}} (z) #60;b#62;#38;amp; #35;1; #96;c#96; \\\\ end#34;<br>v1, fresh, computed ",
            ada.id.to_hex()
        )),
        "{line}"
    );

    // The id as printed reads back: the command line finds the same value.
    let stdout = cli(&prefix, &[&id, "--format", "dot"]);
    assert_dot(&stdout, 2, 1);
    assert!(
        stdout.contains(&format!("n0 [label=\"{escaped}")),
        "{stdout}"
    );
}

#[tokio::test]
async fn a_huge_fan_out_is_counted_not_read() {
    let prefix = unique("graph-fan");
    let smache = Smache::builder()
        .redis_url(redis_url())
        .prefix(&prefix)
        .build()
        .unwrap();
    let ada = user("Ada");
    for n in 0..200 {
        smache.scope(line(&ada, n)).await;
    }
    let start = GraphStart::document("users", ada.id);
    let report = smache
        .inspect_graph(start.clone(), GraphOptions::default().limit(50))
        .await
        .unwrap();
    let root = &report.nodes[0];
    assert_eq!((root.dependants, root.dependants_left_out), (200, 150));
    assert_eq!(
        report.edges_from(&root.token).count(),
        51,
        "50 and the collection"
    );
    let text = report.to_string();
    assert!(text.starts_with("document users/o:"), "{text}");
    assert!(text.contains("200 dependants\n"), "{text}");
    assert!(
        text.ends_with("  ├─ … and 150 more\n  └─ collection users  0 dependants\n"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 2 + 50 + 1 + 1, "{text}");
    assert!(report.mermaid().contains("n0_more[\"… and 150 more\"]"));
    assert!(report.dot().contains("label=\"… and 150 more\""));

    // Depth 0: the start alone, all its dependants counted.
    let report = smache
        .inspect_graph(start.clone(), GraphOptions::default().depth(0))
        .await
        .unwrap();
    assert_eq!(report.nodes[0].dependants_left_out, 200);
    // The node bound stops the walk, and says so.
    let report = smache
        .inspect_graph(start, GraphOptions::default().max_nodes(10))
        .await
        .unwrap();
    assert_eq!(report.nodes.len(), 10);
    assert!(report.truncated);
    assert!(report
        .to_string()
        .ends_with("(stopped at 10 nodes: more are left out)\n"));

    let stdout = cli(&prefix, &[&format!("users/{}", ada.id), "--limit", "5"]);
    assert!(stdout.contains("\n  ├─ … and 195 more\n"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_related_document_shows_the_values_its_relation_maps_it_to() {
    let database = unique("graph").replace('-', "_");
    let prefix = unique("graph-rel");
    let client = mongodb::Client::with_uri_str(mongodb_uri()).await.unwrap();
    let smache = Smache::builder()
        .redis_url(redis_url())
        .mongodb(&client, &database)
        .prefix(&prefix)
        .run_executor()
        .build()
        .unwrap();
    let db = client.database(&database);
    let ada = user("Ada");
    db.collection::<User>("users")
        .insert_one(&ada)
        .await
        .unwrap();
    let mut worker = WorkerProcess::start(&redis_url(), &mongodb_uri(), &database, &prefix);
    worker.wait_watching(Duration::from_secs(20)).await;
    assert_eq!(smache.scope(spent(&ada)).await, 0);

    // The worker sees the order, an executor maps it to Ada and refreshes
    // her total, recording the mapping.
    let order = Order {
        id: ObjectId::new(),
        user_id: ada.id,
        cents: 250,
    };
    db.collection::<Order>("orders")
        .insert_one(&order)
        .await
        .unwrap();
    let key = spent::key(&ada).unwrap();
    let deadline = SystemTime::now() + Duration::from_secs(20);
    while smache.scope(spent(&ada)).await != 250 || !smache.is_fresh(&key).await.unwrap() {
        assert!(SystemTime::now() < deadline, "{}", worker.log());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    let (a, o) = (ada.id.to_hex(), order.id.to_hex());
    let report = smache
        .inspect_graph(
            format!("orders/{o}").parse::<GraphStart>().unwrap(),
            GraphOptions::default(),
        )
        .await
        .unwrap();
    let relation = format!("rel:g.spent#1|orders:o:{o}");
    let value = format!("v:g.spent#1:o:{a}");
    assert_eq!(
        edge(&report, &format!("e:orders:o:{o}"), &relation),
        Some(EdgeKind::Relation)
    );
    assert_eq!(edge(&report, &relation, &value), Some(EdgeKind::Relation));
    assert_eq!(
        edge(&report, &format!("e:orders:o:{o}"), "c:orders"),
        Some(EdgeKind::Collection)
    );
    assert_eq!(freshness(&report, &value), Freshness::Fresh);
    let text = pinned(report).to_string();
    assert_eq!(
        text,
        format!(
            "\
document orders/o:{o}  0 dependants
  depended on by
  ├─ relation g.spent#1  maps it to o:{a}
  │  └─ value g.spent#1:o:{a}  v2, fresh, computed 2 s ago
  └─ collection orders  0 dependants
     └─ relation g.spent#1  maps each changed document of orders
"
        ),
        "{text}"
    );
    smache.stop_executor().await.unwrap();
    assert!(worker.terminate(), "{}", worker.log());
    let _ = db.drop().await;
}
