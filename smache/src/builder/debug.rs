//! What a [`SmacheBuilder`] shows of itself: every setting, and never a
//! secret (a Redis URL or client is named, not printed).

use std::fmt;

use super::connect::RedisSource;
use super::SmacheBuilder;

impl fmt::Debug for SmacheBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redis = self.redis.as_ref().map_or("none", RedisSource::redacted);
        f.debug_struct("SmacheBuilder")
            .field("redis", &redis)
            .field("mongodb", &self.mongo.as_ref().map(mongodb::Database::name))
            .field("prefix", &self.prefix)
            .field("default_ttl", &self.default_ttl)
            .field("op_timeout", &self.op_timeout)
            .field("max_stale", &self.max_stale)
            .field("compute_lease", &self.compute_lease)
            .field("memory_capacity", &self.memory_capacity)
            .field("local_cache_capacity", &self.local_cache_capacity)
            .field("redis_shards", &self.redis_shards)
            .field("executor", &self.executor)
            .field("task_retention", &self.task_retention)
            .field("retry", &self.retry)
            .field("executor_concurrency", &self.executor_concurrency)
            .field("orphan_timeout", &self.orphan_timeout)
            .field("value_store", &self.value_store)
            .field("values_collection", &self.values_collection)
            .field("max_value_size", &self.max_value_size)
            .field("expect_worker_within", &self.expect_worker_within)
            .field("callbacks", &self.callbacks.keys().collect::<Vec<_>>())
            .finish()
    }
}
