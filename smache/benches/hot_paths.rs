//! Micro-benchmarks of the CPU work on every call: building a cache key
//! and encoding / decoding a stored envelope. The end-to-end numbers
//! (hits, misses, refreshes against real servers) are `smache-bench`'s.
//!
//! ```text
//! cargo bench -p smache --bench hot_paths
//! ```

use std::hint::black_box;

use bson::oid::ObjectId;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use serde::{Deserialize, Serialize};
use smache::__private::{envelope_decode, envelope_encode};
use smache::{computed, Entity};

#[derive(Clone, Debug, Serialize, Deserialize, Entity)]
#[entity(collection = "users")]
struct User {
    #[serde(rename = "_id")]
    id: ObjectId,
    name: String,
}

#[computed(User, Raw)]
async fn greeting(user: &User, language: &str) -> String {
    format!("{language}: {}", user.name)
}

#[computed(Raw, Raw)]
fn report(title: &str, lines: &[String]) -> usize {
    title.len() + lines.len()
}

/// A typical small cached record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Card {
    id: u64,
    name: String,
    tags: Vec<String>,
    score: f64,
    active: bool,
}

fn keys(c: &mut Criterion) {
    let user = User {
        id: ObjectId::new(),
        name: "Ada".into(),
    };
    let short: Vec<String> = vec!["a".into(), "b".into()];
    // Over MAX_INLINE_ARGS: the stored key holds a SHA-256 of the arguments.
    let long: Vec<String> = (0..40).map(|i| format!("line {i}")).collect();
    let mut group = c.benchmark_group("key");
    group.bench_function("entity + raw str", |b| {
        b.iter(|| greeting::key(black_box(&user), black_box("en")))
    });
    group.bench_function("two raw, short", |b| {
        b.iter(|| report::key(black_box("q3"), black_box(&short[..])))
    });
    group.bench_function("two raw, hashed (> 160 B)", |b| {
        b.iter(|| report::key(black_box("q3"), black_box(&long[..])))
    });
    group.finish();
}

fn envelopes(c: &mut Criterion) {
    let card = Card {
        id: 42,
        name: "Ada Lovelace".into(),
        tags: vec!["math".into(), "engines".into()],
        score: 9.5,
        active: true,
    };
    let mut group = c.benchmark_group("envelope");
    for size in [100usize, 10 * 1024] {
        let text = "x".repeat(size);
        let bytes = envelope_encode(&text, 1).expect("encodes");
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("encode string", size), &text, |b, t| {
            b.iter(|| envelope_encode(black_box(t), 1))
        });
        group.bench_with_input(BenchmarkId::new("decode string", size), &bytes, |b, d| {
            b.iter(|| envelope_decode::<String>(black_box(d)))
        });
    }
    group.throughput(Throughput::Elements(1));
    let bytes = envelope_encode(&card, 1).expect("encodes");
    group.bench_function("encode struct", |b| {
        b.iter(|| envelope_encode(black_box(&card), 1))
    });
    group.bench_function("decode struct", |b| {
        b.iter(|| envelope_decode::<Card>(black_box(&bytes)))
    });
    group.finish();
}

/// `size` bytes of text, cached.
#[computed(Raw)]
fn text(size: usize) -> String {
    "smache bench value; ".chars().cycle().take(size).collect()
}

/// A hit of the embedded store beside a `moka` get of the same `String`,
/// and the parts of the hit: building the key, decoding the envelope.
fn hits(c: &mut Criterion) {
    let smache = smache::Smache::builder()
        .prefix("hot-paths")
        .build()
        .expect("the embedded store");
    let mut group = c.benchmark_group("hit");
    for size in [100usize, 10 * 1024] {
        let value = smache.scope_sync(|| text(size));
        let moka: moka::sync::Cache<usize, String> = moka::sync::Cache::new(1_000);
        moka.insert(size, value.clone());
        let bytes = envelope_encode(&value, 1).expect("encodes");
        group.bench_function(BenchmarkId::new("smache embedded", size), |b| {
            b.iter(|| smache.scope_sync(|| text(black_box(size))))
        });
        group.bench_function(BenchmarkId::new("moka get", size), |b| {
            b.iter(|| moka.get(&black_box(size)))
        });
        group.bench_function(BenchmarkId::new("key", size), |b| {
            b.iter(|| text::key(black_box(size)))
        });
        group.bench_function(BenchmarkId::new("decode", size), |b| {
            b.iter(|| envelope_decode::<String>(black_box(&bytes)))
        });
        group.bench_function(BenchmarkId::new("clone", size), |b| {
            b.iter(|| black_box(&value).clone())
        });
    }
    group.finish();
}

criterion_group!(benches, keys, envelopes, hits);
criterion_main!(benches);
