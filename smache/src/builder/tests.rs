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
