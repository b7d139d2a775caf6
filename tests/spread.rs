//! A store of several shards on one Redis (#16 step 3, items 3 and 4 of
//! docs/cluster-spread.md): nested reads of a value of another shard write
//! the reading value's edge first, and aliases whose alias, target and
//! aliases live in different shards.
//!
//! Every instance here has 4 shards (`SmacheBuilder::redis_shards`,
//! whatever the pass's `SMACHE_REDIS_SHARDS`). Keys are found from `Smache::storage_key`,
//! `{prefix#<n>}:v:<id>`: the base of a value's shard is what comes before
//! `v:`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::AsyncCommands;
use smache::{computed, CacheKey, Error, Smache};
use smache_suite::{redis_connection, redis_url, unique, Calls, RedisConn};
use tokio::sync::Notify;

static CALLS: Calls = Calls::new();

/// An instance of 4 shards on the tests' Redis.
fn sharded() -> Smache {
    Smache::builder()
        .redis_url(redis_url())
        .prefix(unique("spread"))
        .redis_shards(4)
        .build()
        .unwrap()
}

/// The base of the shard of `key`'s value and its value id.
fn place(smache: &Smache, key: &CacheKey) -> (String, String) {
    let storage = smache.storage_key(key);
    let at = storage.find("}:v:").expect("a value key") + 2;
    let base = storage[..at].to_owned();
    assert!(base.contains('#'), "4 shards: {storage}");
    (base, storage[at + 2..].to_owned())
}

/// The first tag (of `label`) for which `pick` holds.
fn tag_where(label: &str, pick: impl Fn(&str) -> bool) -> String {
    (0..64)
        .map(|_| unique(label))
        .find(|tag| pick(tag))
        .expect("a tag within 64 tries")
}

/// What `leaf` returns, per tag.
static LEAF_DATA: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());
/// A tag, the edge key and member that must exist when `leaf` computes
/// (its reader's edge, written before the leaf is read), and what was
/// found there.
type EdgeCheck = (String, String, String, Option<bool>);
static EDGE_CHECKS: Mutex<Vec<EdgeCheck>> = Mutex::new(Vec::new());
/// A tag, "the trunk read its leaf", "let it go on".
type Gate = (String, Arc<Notify>, Arc<Notify>);
static GATES: Mutex<Vec<Gate>> = Mutex::new(Vec::new());

fn set_leaf(tag: &str, data: &str) {
    let mut leaves = LEAF_DATA.lock().unwrap();
    leaves.retain(|(t, _)| t != tag);
    leaves.push((tag.to_owned(), data.to_owned()));
}

#[computed(Raw)]
async fn leaf(tag: String) -> String {
    CALLS.bump(format!("leaf {tag}"));
    let check = EDGE_CHECKS
        .lock()
        .unwrap()
        .iter()
        .find(|(t, ..)| *t == tag)
        .map(|(_, key, member, _)| (key.clone(), member.clone()));
    if let Some((key, member)) = check {
        let mut conn = redis_connection(&redis_url()).await;
        let there: bool = conn.sismember(&key, &member).await.unwrap();
        for entry in EDGE_CHECKS.lock().unwrap().iter_mut() {
            if entry.0 == tag {
                entry.3 = Some(there);
            }
        }
    }
    let leaves = LEAF_DATA.lock().unwrap();
    leaves.iter().find(|(t, _)| *t == tag).unwrap().1.clone()
}

#[computed(Raw)]
async fn trunk(tag: String) -> String {
    CALLS.bump(format!("trunk {tag}"));
    let leaf = leaf(tag.clone()).await;
    let gate = {
        let mut gates = GATES.lock().unwrap();
        let at = gates.iter().position(|(t, ..)| *t == tag);
        at.map(|at| gates.remove(at))
    };
    if let Some((_, read, release)) = gate {
        read.notify_one();
        release.notified().await;
    }
    format!("<{leaf}>")
}

/// A tag whose trunk and leaf live in different shards (`across`) or in
/// the same one.
fn trunk_and_leaf(smache: &Smache, across: bool) -> String {
    tag_where("nested", |tag| {
        let (trunk_base, _) = place(smache, &trunk::key(tag.to_owned()).unwrap());
        let (leaf_base, _) = place(smache, &leaf::key(tag.to_owned()).unwrap());
        (trunk_base != leaf_base) == across
    })
}

async fn members(conn: &mut RedisConn, key: &str) -> Vec<String> {
    let mut members: Vec<String> = conn.smembers(key).await.unwrap();
    members.sort();
    members
}

/// A value's dependencies: field `f` of its hash, each ended by NUL.
async fn dependencies(conn: &mut RedisConn, smache: &Smache, key: &CacheKey) -> Vec<String> {
    let f: Option<String> = conn.hget(smache.storage_key(key), "f").await.unwrap();
    let mut tokens: Vec<String> = f
        .unwrap_or_default()
        .split_terminator('\0')
        .map(str::to_owned)
        .collect();
    tokens.sort();
    tokens
}

#[tokio::test]
async fn a_nested_value_of_another_shard_is_read_after_the_edge_and_stored_fresh() {
    let smache = sharded();
    let mut conn = redis_connection(&redis_url()).await;
    for across in [true, false] {
        let tag = trunk_and_leaf(&smache, across);
        let (trunk_key, leaf_key) = (
            trunk::key(tag.clone()).unwrap(),
            leaf::key(tag.clone()).unwrap(),
        );
        let (trunk_base, trunk_id) = place(&smache, &trunk_key);
        let (leaf_base, leaf_id) = place(&smache, &leaf_key);
        let edge = format!("{trunk_base}r:v:{leaf_id}");
        set_leaf(&tag, "one");
        EDGE_CHECKS
            .lock()
            .unwrap()
            .push((tag.clone(), edge.clone(), trunk_id.clone(), None));

        assert_eq!(smache.scope(trunk(tag.clone())).await, "<one>");
        let found = EDGE_CHECKS
            .lock()
            .unwrap()
            .iter()
            .find(|(t, ..)| *t == tag)
            .and_then(|(.., found)| *found);
        if across {
            assert_eq!(
                found,
                Some(true),
                "the trunk's edge on the leaf is in the trunk's shard before the leaf is read"
            );
        } else {
            // Same shard: no edge first (store.lua checks the read).
            assert_eq!(found, Some(false), "no extra round trip in one shard");
        }
        assert!(
            smache.is_fresh(&trunk_key).await.unwrap(),
            "across shards: {across}: stored fresh, not stale"
        );
        assert!(smache.is_fresh(&leaf_key).await.unwrap());
        // The edge is the trunk's dependency like any other: in its own
        // shard's reverse set and in its `f`.
        assert_eq!(members(&mut conn, &edge).await, vec![trunk_id.clone()]);
        assert!(dependencies(&mut conn, &smache, &trunk_key)
            .await
            .contains(&format!("v:{leaf_id}")));
        if across {
            let elsewhere = format!("{leaf_base}r:v:{leaf_id}");
            assert!(
                members(&mut conn, &elsewhere).await.is_empty(),
                "no edge in the leaf's shard"
            );
        }
        // Hits from now on.
        assert_eq!(smache.scope(trunk(tag.clone())).await, "<one>");
        assert_eq!(CALLS.get(&format!("trunk {tag}")), 1);
        assert_eq!(CALLS.get(&format!("leaf {tag}")), 1);
    }
}

/// How the test stores the leaf anew while its trunk computes.
#[derive(Clone, Copy, Debug)]
enum Anew {
    /// Invalidated (its dependants told in every shard) and computed again.
    Invalidate,
    /// Marked stale and recomputed by a reader; the fan-out of its store to
    /// the trunk's shard simulated (an executor's job, not in this branch).
    Recompute,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nested_value_of_another_shard_stored_anew_while_its_reader_computes_leaves_it_stale() {
    for anew in [Anew::Invalidate, Anew::Recompute] {
        let smache = sharded();
        let mut conn = redis_connection(&redis_url()).await;
        let tag = trunk_and_leaf(&smache, true);
        let (trunk_key, leaf_key) = (
            trunk::key(tag.clone()).unwrap(),
            leaf::key(tag.clone()).unwrap(),
        );
        let (trunk_base, trunk_id) = place(&smache, &trunk_key);
        let (_, leaf_id) = place(&smache, &leaf_key);
        set_leaf(&tag, "old");
        let (read, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        GATES
            .lock()
            .unwrap()
            .push((tag.clone(), Arc::clone(&read), Arc::clone(&release)));
        let computing = tokio::spawn({
            let (smache, tag) = (smache.clone(), tag.clone());
            async move { smache.scope(trunk(tag)).await }
        });
        tokio::time::timeout(Duration::from_secs(10), read.notified())
            .await
            .expect("the trunk read its leaf");

        set_leaf(&tag, "new");
        match anew {
            Anew::Invalidate => assert!(smache.invalidate(&leaf_key).await.unwrap()),
            Anew::Recompute => {
                let _: () = conn
                    .hincr(smache.storage_key(&leaf_key), "g", 1)
                    .await
                    .unwrap();
            }
        }
        assert_eq!(smache.scope(leaf(tag.clone())).await, "new");
        if let Anew::Recompute = anew {
            smache_suite::layout::touch(&mut conn, &trunk_base, &format!("v:{leaf_id}")).await;
        }
        assert!(smache.is_fresh(&leaf_key).await.unwrap());

        release.notify_one();
        assert_eq!(computing.await.unwrap(), "<old>", "{anew:?}");
        assert!(
            !smache.is_fresh(&trunk_key).await.unwrap(),
            "{anew:?}: a trunk computed from the leaf's old value is stale"
        );
        // Its recompute is queued in its own shard.
        let jobs: redis::streams::StreamRangeReply =
            conn.xrange_all(format!("{trunk_base}jobs")).await.unwrap();
        assert!(
            jobs.ids
                .iter()
                .any(|job| job.get::<String>("id").as_deref() == Some(trunk_id.as_str())),
            "{anew:?}: the trunk's recompute is queued"
        );
    }
}

/// A page by URL; `tag` keeps tests apart in the call counter.
#[computed(Raw, Raw)]
async fn page(tag: &str, url: &str) -> String {
    CALLS.bump(tag);
    format!("<page {url}>")
}

/// A value built on a page (through an alias, say).
#[computed(Raw, Raw)]
async fn frame(tag: &str, url: &str) -> String {
    CALLS.bump(format!("frame {tag}"));
    format!("[{}]", page(tag, url).await)
}

/// A tag whose pages at `urls` live in pairwise different shards.
fn pages_apart(smache: &Smache, urls: &[&str]) -> String {
    tag_where("alias", |tag| {
        let mut bases: Vec<String> = urls
            .iter()
            .map(|url| place(smache, &page::key(tag, url).unwrap()).0)
            .collect();
        bases.sort();
        bases.dedup();
        bases.len() == urls.len()
    })
}

#[tokio::test]
async fn an_alias_reads_its_target_in_another_shard() {
    let smache = sharded();
    let mut conn = redis_connection(&redis_url()).await;
    let tag = pages_apart(&smache, &["/old", "/new"]);
    let key = |url: &str| page::key(&tag, url).unwrap();
    assert_eq!(smache.scope(page(&tag, "/new")).await, "<page /new>");
    assert_eq!(smache.scope(page(&tag, "/old")).await, "<page /old>");
    smache.alias(&key("/old"), &key("/new")).await.unwrap();

    assert_eq!(smache.scope(page(&tag, "/old")).await, "<page /new>");
    assert_eq!(CALLS.get(&tag), 2, "read through the alias, not computed");
    assert!(smache.is_fresh(&key("/old")).await.unwrap());
    let (old_base, old_id) = place(&smache, &key("/old"));
    let (new_base, new_id) = place(&smache, &key("/new"));
    let link: Option<String> = conn
        .hget(smache.storage_key(&key("/old")), "l")
        .await
        .unwrap();
    assert_eq!(link.as_deref(), Some(new_id.as_str()));
    assert_eq!(
        members(&mut conn, &format!("{new_base}al:{new_id}")).await,
        vec![old_id.clone()],
        "the target's set, in the target's shard"
    );
    let stray: bool = conn.exists(format!("{old_base}al:{new_id}")).await.unwrap();
    assert!(!stray, "nothing in the alias's shard");

    // A miss through the alias computes once and stores the target.
    assert!(smache.invalidate(&key("/new")).await.unwrap());
    assert!(!smache.is_fresh(&key("/old")).await.unwrap());
    assert_eq!(smache.scope(page(&tag, "/old")).await, "<page /old>");
    assert_eq!(smache.scope(page(&tag, "/new")).await, "<page /old>");
    assert_eq!(CALLS.get(&tag), 3);

    // Dropping the alias leaves the target's set, across shards.
    assert!(smache.invalidate(&key("/old")).await.unwrap());
    assert!(members(&mut conn, &format!("{new_base}al:{new_id}"))
        .await
        .is_empty());
    assert_eq!(smache.scope(page(&tag, "/old")).await, "<page /old>");
    assert_eq!(CALLS.get(&tag), 4, "a value of its own again");
}

#[tokio::test]
async fn aliases_across_shards_collapse_chains_and_reject_cycles() {
    let smache = sharded();
    let mut conn = redis_connection(&redis_url()).await;
    let tag = pages_apart(&smache, &["/a", "/b", "/c"]);
    let key = |url: &str| page::key(&tag, url).unwrap();
    smache.scope(page(&tag, "/c")).await;
    // a → b, then b → c: a is re-pointed to c, in its own shard.
    smache.alias(&key("/a"), &key("/b")).await.unwrap();
    smache.alias(&key("/b"), &key("/c")).await.unwrap();
    let (_, c_id) = place(&smache, &key("/c"));
    let (b_base, b_id) = place(&smache, &key("/b"));
    let (c_base, _) = place(&smache, &key("/c"));
    let (_, a_id) = place(&smache, &key("/a"));
    for url in ["/a", "/b"] {
        let link: Option<String> = conn.hget(smache.storage_key(&key(url)), "l").await.unwrap();
        assert_eq!(link.as_deref(), Some(c_id.as_str()), "{url} names c");
    }
    let mut both = vec![a_id.clone(), b_id.clone()];
    both.sort();
    assert_eq!(
        members(&mut conn, &format!("{c_base}al:{c_id}")).await,
        both
    );
    assert!(
        members(&mut conn, &format!("{b_base}al:{b_id}"))
            .await
            .is_empty(),
        "b's set is emptied once a is re-pointed"
    );
    assert_eq!(smache.scope(page(&tag, "/a")).await, "<page /c>");
    assert_eq!(smache.scope(page(&tag, "/b")).await, "<page /c>");
    assert_eq!(CALLS.get(&tag), 1);

    for (alias, target) in [("/a", "/a"), ("/c", "/a"), ("/c", "/b")] {
        match smache.alias(&key(alias), &key(target)).await {
            Err(Error::AliasCycle { .. }) => {}
            other => panic!("{alias} → {target} must be a cycle, got {other:?}"),
        }
    }
    // A rejected alias changed nothing.
    assert_eq!(smache.scope(page(&tag, "/c")).await, "<page /c>");
    assert_eq!(smache.scope(page(&tag, "/a")).await, "<page /c>");
    assert_eq!(CALLS.get(&tag), 1);
}

#[tokio::test]
async fn dropping_an_aliased_target_tells_the_values_read_through_the_alias() {
    let smache = sharded();
    // The frame, the alias and the target in three different shards.
    let tag = tag_where("alias-drop", |tag| {
        let mut bases = vec![
            place(&smache, &frame::key(tag, "/old").unwrap()).0,
            place(&smache, &page::key(tag, "/old").unwrap()).0,
            place(&smache, &page::key(tag, "/new").unwrap()).0,
        ];
        bases.sort();
        bases.dedup();
        bases.len() == 3
    });
    let key = |url: &str| page::key(&tag, url).unwrap();
    smache.scope(page(&tag, "/new")).await;
    smache.alias(&key("/old"), &key("/new")).await.unwrap();
    let frame_key = frame::key(&tag, "/old").unwrap();
    assert_eq!(smache.scope(frame(&tag, "/old")).await, "[<page /new>]");
    assert!(smache.is_fresh(&frame_key).await.unwrap());

    assert!(smache.invalidate(&key("/new")).await.unwrap());
    assert!(
        !smache.is_fresh(&frame_key).await.unwrap(),
        "the frame, in a third shard, is told its target went"
    );
}

#[tokio::test]
async fn a_crash_after_the_first_alias_step_leaves_only_a_harmless_member() {
    let smache = sharded();
    let mut conn = redis_connection(&redis_url()).await;
    let tag = pages_apart(&smache, &["/a", "/t", "/u"]);
    let key = |url: &str| page::key(&tag, url).unwrap();
    assert_eq!(smache.scope(page(&tag, "/a")).await, "<page /a>");
    assert_eq!(smache.scope(page(&tag, "/t")).await, "<page /t>");
    let (_, a_id) = place(&smache, &key("/a"));
    let (t_base, t_id) = place(&smache, &key("/t"));
    // Step 1 of a → t only (the process died after it): a is registered
    // in t's set, but is still a value of its own.
    let _: i64 = conn
        .sadd(format!("{t_base}al:{t_id}"), &a_id)
        .await
        .unwrap();

    assert_eq!(smache.scope(page(&tag, "/a")).await, "<page /a>");
    assert!(smache.is_fresh(&key("/a")).await.unwrap());
    // t made an alias of u: only the members that name t follow it.
    smache.alias(&key("/t"), &key("/u")).await.unwrap();
    let link: Option<String> = conn
        .hget(smache.storage_key(&key("/a")), "l")
        .await
        .unwrap();
    assert_eq!(link, None, "a is not re-pointed: it never named t");
    assert_eq!(smache.scope(page(&tag, "/a")).await, "<page /a>");
    assert_eq!(smache.scope(page(&tag, "/t")).await, "<page /t>");
    assert_eq!(
        CALLS.get(&tag),
        3,
        "t's alias computed u once, from t's arguments"
    );
    assert!(
        members(&mut conn, &format!("{t_base}al:{t_id}"))
            .await
            .is_empty(),
        "the stray member went with t's set"
    );

    // The alias made again, whole: idempotent.
    smache.alias(&key("/a"), &key("/u")).await.unwrap();
    smache.alias(&key("/a"), &key("/u")).await.unwrap();
    assert_eq!(smache.scope(page(&tag, "/a")).await, "<page /t>");
    assert_eq!(CALLS.get(&tag), 3);
}

/// What `gated_leaf` waits on, per tag: "the leaf read its data", "go on".
static LEAF_GATES: Mutex<Vec<Gate>> = Mutex::new(Vec::new());

/// `leaf`, held after reading its data while a gate is set for its tag.
#[computed(Raw)]
async fn gated_leaf(tag: String) -> String {
    let data = LEAF_DATA
        .lock()
        .unwrap()
        .iter()
        .find(|(t, _)| *t == tag)
        .unwrap()
        .1
        .clone();
    let gate = {
        let mut gates = LEAF_GATES.lock().unwrap();
        let at = gates.iter().position(|(t, ..)| *t == tag);
        at.map(|at| gates.remove(at))
    };
    if let Some((_, read, release)) = gate {
        read.notify_one();
        release.notified().await;
    }
    data
}

#[computed(Raw)]
async fn gated_trunk(tag: String) -> String {
    format!("<{}>", gated_leaf(tag).await)
}

/// A nested call of a value of another shard that finds a computation of
/// it already in flight in this process does not take that computation's
/// result: it may have read its data before this caller's edge existed,
/// and a store of the value in between (here by another process) told no
/// one. It reads the value again, now that its edge is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nested_call_of_another_shard_that_follows_an_older_flight_reads_the_value_again() {
    let smache = sharded();
    // Another process of the instance: flights of its own.
    let other = Smache::builder()
        .redis_url(redis_url())
        .prefix(smache.prefix())
        .redis_shards(4)
        .build()
        .unwrap();
    let tag = tag_where("follow", |tag| {
        let (trunk_base, _) = place(&smache, &gated_trunk::key(tag.to_owned()).unwrap());
        let (leaf_base, _) = place(&smache, &gated_leaf::key(tag.to_owned()).unwrap());
        trunk_base != leaf_base
    });
    let (trunk_key, leaf_key) = (
        gated_trunk::key(tag.clone()).unwrap(),
        gated_leaf::key(tag.clone()).unwrap(),
    );
    let (trunk_base, trunk_id) = place(&smache, &trunk_key);
    let (_, leaf_id) = place(&smache, &leaf_key);
    set_leaf(&tag, "old");

    // A caller of the leaf computes it from the old data, and is held.
    let (read, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    LEAF_GATES
        .lock()
        .unwrap()
        .push((tag.clone(), Arc::clone(&read), Arc::clone(&release)));
    let pilot = tokio::spawn({
        let (smache, tag) = (smache.clone(), tag.clone());
        async move { smache.scope(gated_leaf(tag)).await }
    });
    tokio::time::timeout(Duration::from_secs(10), read.notified())
        .await
        .expect("the leaf read its data");

    // Meanwhile the data changes (its change generation bumped, as a
    // change does), the held computation's lease runs out, and another
    // process computes the leaf from the new data and stores it.
    set_leaf(&tag, "new");
    let leaf_storage = smache.storage_key(&leaf_key);
    let mut conn = redis_connection(&redis_url()).await;
    let _: () = conn.hincr(&leaf_storage, "g", 1).await.unwrap();
    let _: () = conn.hdel(&leaf_storage, &["c", "cx"]).await.unwrap();
    assert_eq!(other.scope(gated_leaf(tag.clone())).await, "new");
    assert!(other.is_fresh(&leaf_key).await.unwrap());

    // Now the trunk computes here: its edge on the leaf is written, then
    // its nested call finds the held computation of the leaf in flight.
    let trunk = tokio::spawn({
        let (smache, tag) = (smache.clone(), tag.clone());
        async move { smache.scope(gated_trunk(tag)).await }
    });
    let edge = format!("{trunk_base}r:v:{leaf_id}");
    assert!(
        smache_suite::eventually(Duration::from_secs(10), || {
            let (mut conn, edge, trunk_id) = (conn.clone(), edge.clone(), trunk_id.clone());
            async move { conn.sismember(&edge, &trunk_id).await.unwrap() }
        })
        .await,
        "the trunk's edge is written first"
    );
    // (It joins the flight right after: give it the time to.)
    tokio::time::sleep(Duration::from_millis(300)).await;
    release.notify_one();
    assert_eq!(
        pilot.await.unwrap(),
        "old",
        "the held caller gets what it computed"
    );
    // (Not stored over the newer value: it started from an older change.)
    assert_eq!(other.scope(gated_leaf(tag.clone())).await, "new");

    let served = trunk.await.unwrap();
    assert_eq!(served, "<new>", "the trunk read the leaf again");
    assert!(smache.is_fresh(&trunk_key).await.unwrap());
    assert_eq!(smache.scope(gated_trunk(tag.clone())).await, "<new>");
}
