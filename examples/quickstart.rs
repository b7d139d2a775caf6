//! The README's first command: `cargo run --example quickstart`.
//!
//! A slow function becomes a cached value. With no configuration it uses
//! the embedded in-process store, so this runs anywhere; set
//! `SMACHE_REDIS_URL=redis://127.0.0.1:6379/` to cache in Redis instead.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use smache::bson::oid::ObjectId;
use smache::{computed, Entity, Smache};

#[derive(Serialize, Deserialize, Entity)]
#[entity(collection = "users")]
struct User {
    #[serde(rename = "_id")]
    id: ObjectId,
    first: String,
    last: String,
}

/// Pretend this is expensive: it reads other collections, renders, etc.
#[computed(User, Raw, ttl = "10m")]
async fn display_name(user: &User, greeting: &str) -> String {
    tokio::time::sleep(Duration::from_millis(500)).await;
    format!("{greeting}, {} {}!", user.first, user.last)
}

#[tokio::main]
async fn main() -> Result<(), smache::Error> {
    let smache = Smache::global();
    println!(
        "smache store: {:?}, prefix {:?}",
        smache.backend(),
        smache.prefix()
    );

    let ada = User {
        id: ObjectId::new(),
        first: "Ada".into(),
        last: "Lovelace".into(),
    };
    for attempt in ["first call (computes)", "second call (cached)"] {
        let started = Instant::now();
        let name = display_name(&ada, "Hello").await;
        println!("{attempt:<22} {name:<24} {:>9.3?}", started.elapsed());
    }
    println!(
        "cached under {}",
        smache.storage_key(&display_name::key(&ada, "Hello")?)
    );
    Ok(())
}
