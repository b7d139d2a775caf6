//! The builder's checks of its configuration.

use super::*;

#[test]
fn prefixes_are_validated() {
    assert!(Smache::builder().prefix("ok-1.a:b/c").build().is_ok());
    for bad in ["", "a{b", "a}b", "a b", &"x".repeat(65)] {
        let err = Smache::builder().prefix(bad).build().unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{bad:?}");
    }
}

#[test]
fn bad_redis_urls_are_config_errors_without_secrets() {
    let err = Smache::builder()
        .redis_url("http://user:hunter2@example")
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)));
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[test]
fn tls_redis_urls_are_accepted() {
    let smache = Smache::builder()
        .redis_url("rediss://user:hunter2@redis.example:6380/0")
        .build()
        .expect("rediss:// is a valid Redis URL");
    assert_eq!(smache.backend(), crate::Backend::Redis);
    assert!(!format!("{smache:?}").contains("hunter2"));
}

#[test]
fn debug_output_redacts_urls() {
    let builder = Smache::builder().redis_url("redis://:hunter2@localhost/");
    let debug = format!("{builder:?}");
    assert!(!debug.contains("hunter2"), "{debug}");
    let smache = builder.build().unwrap();
    assert!(!format!("{smache:?}").contains("hunter2"));
}

#[test]
fn shard_counts_out_of_range_are_config_errors() {
    let url = "redis://127.0.0.1:6379/";
    for count in [1, 4, 48, 1024] {
        let built = Smache::builder().redis_url(url).redis_shards(count).build();
        assert!(built.is_ok(), "{count}");
    }
    for count in [0, 1025] {
        let err = Smache::builder()
            .redis_url(url)
            .redis_shards(count)
            .build()
            .unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{count}");
        assert!(err.to_string().contains("redis_shards"), "{err}");
    }
}

#[test]
fn a_redis_cluster_spreads_over_48_shards_by_default_and_one_server_keeps_one() {
    // The environment's count overrides the default (the test command's
    // later passes set it): nothing to check then.
    if std::env::var_os("SMACHE_REDIS_SHARDS").is_some() {
        return;
    }
    let shards = |url: &str, given: Option<usize>| {
        let store = connect::store(
            Some(RedisSource::Url(url.to_owned())),
            0,
            0,
            given,
            Duration::from_secs(1),
            "smache",
        )
        .unwrap();
        match store {
            crate::store::Store::Redis(redis) => redis.shard_count(),
            _ => unreachable!("a Redis URL makes a Redis store"),
        }
    };
    let cluster = "redis+cluster://127.0.0.1:7000,127.0.0.1:7001";
    assert_eq!(shards(cluster, None), connect::CLUSTER_SHARDS);
    assert_eq!(connect::CLUSTER_SHARDS, 48);
    assert_eq!(
        shards("redis://127.0.0.1:7000,redis://127.0.0.1:7001", None),
        48
    );
    assert_eq!(shards(cluster, Some(1)), 1);
    assert_eq!(shards("redis://127.0.0.1:6379/", None), 1);
    assert_eq!(shards("redis://127.0.0.1:6379/", Some(4)), 4);
}
