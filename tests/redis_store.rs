//! `#[computed]` functions against a real Redis: caching, keys, TTL,
//! invalidation, errors, bad data and outages (the shared suite in
//! `store_suite/`), with values kept in Redis.

mod store_suite;

/// An instance builder on the Redis at `url`, values kept in Redis.
fn builder(url: impl Into<String>) -> smache::SmacheBuilder {
    smache::Smache::builder().redis_url(url)
}
