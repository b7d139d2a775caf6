//! Building instances: from the environment, from an existing Redis
//! connection manager, and the process-wide default.
//!
//! One test per concern in its own binary, since the environment and the
//! process-wide default are process state.

use smache::{computed, Backend, Smache};
use smache_suite::{mongodb_uri, redis_url, unique};

#[computed(Raw)]
async fn echo(x: String) -> String {
    x
}

#[tokio::test]
async fn configuration_sources() {
    // 1. Nothing set: the embedded store.
    for var in [
        "SMACHE_REDIS_URL",
        "SMACHE_MONGODB_URI",
        "SMACHE_PREFIX",
        "SMACHE_MONGODB_DATABASE",
    ] {
        std::env::remove_var(var);
    }
    let smache = Smache::from_env().unwrap();
    assert_eq!(smache.backend(), Backend::Embedded);
    assert!(smache.mongodb().is_none());

    // 2. The environment.
    let prefix = unique("env");
    std::env::set_var("SMACHE_REDIS_URL", redis_url());
    std::env::set_var("SMACHE_MONGODB_URI", mongodb_uri());
    std::env::set_var("SMACHE_MONGODB_DATABASE", "smache_env_test");
    std::env::set_var("SMACHE_PREFIX", &prefix);
    let smache = Smache::from_env().unwrap();
    assert_eq!(smache.backend(), Backend::Redis);
    assert_eq!(smache.prefix(), prefix);
    assert_eq!(smache.mongodb().unwrap().name(), "smache_env_test");
    assert_eq!(smache.scope(echo("env".into())).await, "env");
    assert!(smache
        .is_fresh(&echo::key("env".into()).unwrap())
        .await
        .unwrap());

    // 3. The process-wide default is built from the environment on first use,
    //    and cannot be replaced afterwards.
    assert_eq!(echo("global".into()).await, "global");
    assert_eq!(Smache::global().prefix(), prefix);
    assert!(Smache::global()
        .is_fresh(&echo::key("global".into()).unwrap())
        .await
        .unwrap());
    let late = Smache::builder().prefix("late").build().unwrap();
    assert!(matches!(
        late.install(),
        Err(smache::Error::AlreadyInstalled)
    ));

    // 4. A bad URL in the environment is a configuration error.
    std::env::set_var("SMACHE_REDIS_URL", "http://nope");
    assert!(matches!(Smache::from_env(), Err(smache::Error::Config(_))));

    // 4b. A shard count that is not one is a configuration error naming
    // the variable, not a silent single shard (its keys would be where no
    // other process of the instance looks).
    std::env::set_var("SMACHE_REDIS_URL", redis_url());
    let shards = std::env::var("SMACHE_REDIS_SHARDS").ok();
    for bad in ["0", "lots", "1025", "-4"] {
        std::env::set_var("SMACHE_REDIS_SHARDS", bad);
        let err = Smache::from_env().unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, smache::Error::Config(_)), "{bad}: {message}");
        assert!(message.contains("SMACHE_REDIS_SHARDS"), "{bad}: {message}");
    }
    std::env::remove_var("SMACHE_REDIS_SHARDS");
    assert!(Smache::from_env().is_ok());
    // (The count this pass runs at, for what follows.)
    if let Some(shards) = shards {
        std::env::set_var("SMACHE_REDIS_SHARDS", shards);
        assert!(Smache::from_env().is_ok());
    }

    // 5. An existing connection manager (of one server: not on a cluster).
    if smache_suite::on_cluster() {
        return;
    }
    let client = redis::Client::open(redis_url()).unwrap();
    let manager = redis::aio::ConnectionManager::new(client).await.unwrap();
    let smache = Smache::builder()
        .redis_connection(manager)
        .prefix(unique("cm"))
        .build()
        .unwrap();
    assert_eq!(smache.scope(echo("cm".into())).await, "cm");
    assert!(smache
        .is_fresh(&echo::key("cm".into()).unwrap())
        .await
        .unwrap());
}

#[test]
fn an_invalid_redis_url_says_the_expected_form_and_not_the_url() {
    for url in [
        "localhost:6379",
        "http://user:hunter2@cache:6379/",
        "redis+cluster://user:hunter2@",
        "redis+cluster://user:hunter2@a:1,b:port",
        "redis://user:hunter2@a:1,http://b:2",
    ] {
        let err = Smache::builder().redis_url(url).build().unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, smache::Error::Config(_)), "{message}");
        assert!(
            message.contains("expected redis://[user:password@]host[:port][/db]"),
            "{message}"
        );
        assert!(!message.contains("hunter2"), "{message}");
    }
}

static COUNTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[computed(Raw)]
async fn counted(x: String) -> String {
    COUNTED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    x
}

fn computations() -> usize {
    COUNTED.load(std::sync::atomic::Ordering::SeqCst)
}

/// Every process of an instance spreads its keys over one shard count: the
/// first records it in Redis; a process with another count does not use
/// the store (its values would miss the worker's signals) and computes
/// every value directly, until an operator makes the record agree with it.
#[tokio::test]
async fn a_process_with_another_shard_count_than_the_instance_computes_directly_until_they_agree() {
    use redis::AsyncCommands;
    use std::time::Duration;
    let prefix = unique("count");
    let config = format!("{{{prefix}}}:config");
    let instance = |shards| {
        Smache::builder()
            .redis_url(redis_url())
            .prefix(&prefix)
            .redis_shards(shards)
            .build()
            .unwrap()
    };
    let mut redis = smache_suite::redis_connection(&redis_url()).await;
    let recorded = |redis: &mut smache_suite::RedisConn| {
        let config = config.clone();
        let mut redis = redis.clone();
        async move {
            redis
                .hget::<_, _, Option<String>>(&config, "shards")
                .await
                .unwrap()
        }
    };

    // The first process records its count, and caches.
    let first = instance(2);
    let before = computations();
    for _ in 0..2 {
        assert_eq!(first.scope(counted("first".into())).await, "first");
    }
    assert_eq!(computations() - before, 1, "computed once, then cached");
    assert_eq!(recorded(&mut redis).await.as_deref(), Some("2"));

    // A process with another count computes every call, and says why.
    let other = instance(3);
    let before = computations();
    for _ in 0..2 {
        assert_eq!(other.scope(counted("other".into())).await, "other");
    }
    assert_eq!(computations() - before, 2, "computed directly, each call");
    let key = counted::key("other".into()).unwrap();
    match other.is_fresh(&key).await {
        Err(smache::Error::ShardCountMismatch {
            configured,
            recorded,
            ..
        }) => assert_eq!((configured, recorded.as_str()), (3, "2")),
        other => panic!("expected the shard count refused, got {other:?}"),
    }
    let message = other.is_fresh(&key).await.unwrap_err().to_string();
    assert!(message.contains("SMACHE_REDIS_SHARDS"), "{message}");
    assert_eq!(recorded(&mut redis).await.as_deref(), Some("2"), "kept");
    // The first is not disturbed.
    let before = computations();
    assert_eq!(first.scope(counted("first".into())).await, "first");
    assert_eq!(computations(), before);

    // An operator sets the record to the other count: within a recheck,
    // the other process uses the store and the first stops.
    let () = redis.hset(&config, "shards", 3).await.unwrap();
    let first_key = counted::key("first".into()).unwrap();
    let agreed = smache_suite::eventually(Duration::from_secs(25), || async {
        other.is_fresh(&key).await.is_ok()
            && matches!(
                first.is_fresh(&first_key).await,
                Err(smache::Error::ShardCountMismatch { configured: 2, .. })
            )
    })
    .await;
    assert!(agreed, "the rechecks took the new record");
    let before = computations();
    for _ in 0..2 {
        assert_eq!(other.scope(counted("other".into())).await, "other");
    }
    assert_eq!(computations() - before, 1, "the other caches now");

    // The record lost (a FLUSHALL, say): a process records its count again.
    let () = redis.hdel(&config, "shards").await.unwrap();
    let again = smache_suite::eventually(Duration::from_secs(25), || {
        let recorded = recorded(&mut redis);
        async move { recorded.await.is_some() }
    })
    .await;
    assert!(again, "recorded again");
}
