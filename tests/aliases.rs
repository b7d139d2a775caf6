//! Aliases: several keys resolve to one cached value. Every behaviour is
//! checked on both stores, Redis and the embedded one.

use smache::{computed, Error, Smache};
use smache_suite::{redis_url, unique, Calls};

static CALLS: Calls = Calls::new();

/// A page by URL; `tag` keeps tests apart in the call counter.
#[computed(Raw, Raw)]
async fn page(tag: &str, url: &str) -> String {
    CALLS.bump(tag);
    format!("<page {url}>")
}

#[computed(Raw, Raw)]
fn other(tag: &str, url: &str) -> String {
    format!("{tag}{url}")
}

fn stores() -> Vec<(&'static str, Smache)> {
    vec![
        (
            "redis",
            Smache::builder()
                .redis_url(redis_url())
                .prefix(unique("alias"))
                .build()
                .unwrap(),
        ),
        (
            "embedded",
            Smache::builder().prefix(unique("alias")).build().unwrap(),
        ),
    ]
}

#[tokio::test]
async fn an_alias_returns_the_targets_value_without_computing() {
    for (store, smache) in stores() {
        let tag = unique("alias-hit");
        assert_eq!(smache.scope(page(&tag, "/new")).await, "<page /new>");
        smache
            .alias(
                &page::key(&tag, "/old").unwrap(),
                &page::key(&tag, "/new").unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(
            smache.scope(page(&tag, "/old")).await,
            "<page /new>",
            "{store}"
        );
        assert_eq!(CALLS.get(&tag), 1, "{store}: the alias did not compute");
        assert!(
            smache
                .is_fresh(&page::key(&tag, "/old").unwrap())
                .await
                .unwrap(),
            "{store}: an alias is as fresh as its target"
        );
    }
}

#[tokio::test]
async fn a_miss_through_an_alias_computes_once_and_stores_the_target() {
    for (store, smache) in stores() {
        let tag = unique("alias-miss");
        smache
            .alias(
                &page::key(&tag, "/a").unwrap(),
                &page::key(&tag, "/b").unwrap(),
            )
            .await
            .unwrap();
        // Computed with the alias's arguments, stored as the target's.
        assert_eq!(smache.scope(page(&tag, "/a")).await, "<page /a>", "{store}");
        assert_eq!(smache.scope(page(&tag, "/b")).await, "<page /a>", "{store}");
        assert_eq!(smache.scope(page(&tag, "/a")).await, "<page /a>", "{store}");
        assert_eq!(CALLS.get(&tag), 1, "{store}");
    }
}

#[tokio::test]
async fn invalidating_the_target_invalidates_its_aliases() {
    for (store, smache) in stores() {
        let tag = unique("alias-inval");
        let (alias, target) = (
            page::key(&tag, "/alias").unwrap(),
            page::key(&tag, "/target").unwrap(),
        );
        smache.scope(page(&tag, "/target")).await;
        smache.alias(&alias, &target).await.unwrap();
        assert!(smache.invalidate(&target).await.unwrap(), "{store}");
        assert!(!smache.is_fresh(&alias).await.unwrap(), "{store}");
        smache.scope(page(&tag, "/alias")).await;
        assert_eq!(CALLS.get(&tag), 2, "{store}: the alias recomputed");
        assert!(smache.is_fresh(&target).await.unwrap(), "{store}");

        // Invalidating the alias removes it: it then has a value of its own.
        assert!(smache.invalidate(&alias).await.unwrap(), "{store}");
        assert_eq!(
            smache.scope(page(&tag, "/alias")).await,
            "<page /alias>",
            "{store}"
        );
        assert_eq!(
            smache.scope(page(&tag, "/target")).await,
            "<page /alias>",
            "{store}: the target kept the value computed through the alias"
        );
        assert_eq!(CALLS.get(&tag), 3, "{store}");
    }
}

#[tokio::test]
async fn chains_collapse_and_cycles_are_rejected() {
    for (store, smache) in stores() {
        let tag = unique("alias-cycle");
        let key = |url: &str| page::key(&tag, url).unwrap();
        smache.scope(page(&tag, "/c")).await;
        // a → b, then b → c: a follows to c.
        smache.alias(&key("/a"), &key("/b")).await.unwrap();
        smache.alias(&key("/b"), &key("/c")).await.unwrap();
        assert_eq!(smache.scope(page(&tag, "/a")).await, "<page /c>", "{store}");
        assert_eq!(CALLS.get(&tag), 1, "{store}");

        for (alias, target) in [("/a", "/a"), ("/c", "/a"), ("/c", "/b")] {
            match smache.alias(&key(alias), &key(target)).await {
                Err(Error::AliasCycle {
                    alias: a,
                    target: t,
                }) => {
                    assert!(a.contains(alias) && t.contains(target), "{store}: {a} {t}");
                }
                other => panic!("{store}: {alias} → {target} must be a cycle, got {other:?}"),
            }
        }
        // A rejected alias changed nothing.
        assert_eq!(smache.scope(page(&tag, "/c")).await, "<page /c>", "{store}");
        assert_eq!(smache.scope(page(&tag, "/a")).await, "<page /c>", "{store}");
        assert_eq!(CALLS.get(&tag), 1, "{store}");
    }
}

#[tokio::test]
async fn aliases_join_values_of_one_function_only() {
    for (store, smache) in stores() {
        let result = smache
            .alias(
                &page::key("t", "/x").unwrap(),
                &other::key("t", "/x").unwrap(),
            )
            .await;
        assert!(
            matches!(&result, Err(Error::Config(message)) if message.contains("same function")),
            "{store}: {result:?}"
        );
    }
}

#[tokio::test]
async fn an_alias_to_a_value_with_hashed_arguments_keeps_them_for_executors() {
    use redis::AsyncCommands;
    let smache = Smache::builder()
        .redis_url(redis_url())
        .prefix(unique("alias-long"))
        .build()
        .unwrap();
    let tag = unique("alias-long");
    let long = format!("/{}", "x".repeat(300));
    let target = page::key(&tag, &long).unwrap();
    assert!(
        target.is_hashed(),
        "over 160 bytes of arguments: the id is a hash"
    );
    smache
        .alias(&page::key(&tag, "/short").unwrap(), &target)
        .await
        .unwrap();
    // A miss through the alias stores the target with its full arguments,
    // which an executor needs to recompute it.
    assert_eq!(smache.scope(page(&tag, "/short")).await, "<page /short>");
    let mut conn = smache_suite::redis_connection(&redis_url()).await;
    let args: Option<String> = conn.hget(smache.storage_key(&target), "a").await.unwrap();
    assert_eq!(args.as_deref(), Some(target.args()));
}
