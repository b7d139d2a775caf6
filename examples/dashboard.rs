//! Users, orders and a dashboard value that stays fresh by itself.
//!
//! Needs Redis and a MongoDB with change streams (a replica set, or the
//! Mongo test server): `./scripts/with-servers.sh cargo run --example dashboard`
//! starts both on loopback and runs this. It runs the whole deployment in
//! one process — the worker that follows the change stream and an executor
//! that recomputes — which in production are separate processes (see the
//! README's deployment picture).

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use smache::bson::doc;
use smache::bson::oid::ObjectId;
use smache::{computed, Entity, Smache};

#[derive(Clone, Debug, Serialize, Deserialize, Entity)]
#[entity(collection = "users")]
struct User {
    #[serde(rename = "_id")]
    id: ObjectId,
    name: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, Entity)]
#[entity(collection = "orders")]
struct Order {
    #[serde(rename = "_id")]
    id: ObjectId,
    user_id: ObjectId,
    cents: i64,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Dashboard {
    greeting: String,
    orders: usize,
    spent_cents: i64,
}

/// Refreshed when the user changes, and when any of their orders does.
#[computed(User, relations(Order => |o: &Order| o.user_id))]
async fn dashboard(user: &User) -> Dashboard {
    let db = Smache::current()
        .mongodb()
        .cloned()
        .expect("configured with MongoDB");
    let mut cursor = db
        .collection::<Order>("orders")
        .find(doc! { "user_id": user.id })
        .await
        .expect("orders");
    let (mut orders, mut spent_cents) = (0, 0);
    while cursor.advance().await.expect("orders") {
        orders += 1;
        spent_cents += cursor.deserialize_current().expect("an order").cents;
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // pretend it is expensive
    Dashboard {
        greeting: format!("Welcome back, {}", user.name),
        orders,
        spent_cents,
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter("smache=warn")
        .init();
    let (Ok(redis_url), Ok(mongodb_uri)) = (
        std::env::var("SMACHE_REDIS_URL"),
        std::env::var("SMACHE_MONGODB_URI"),
    ) else {
        eprintln!("set SMACHE_REDIS_URL and SMACHE_MONGODB_URI, or run:\n  ./scripts/with-servers.sh cargo run --example dashboard");
        std::process::exit(2);
    };
    let client = smache::mongodb::Client::with_uri_str(&mongodb_uri).await?;
    let database = format!("dashboard_example_{}", ObjectId::new().to_hex());
    let smache = Smache::builder()
        .redis_url(redis_url)
        .mongodb(&client, &database)
        .prefix(format!("dashboard-{}", ObjectId::new().to_hex()))
        .build()?;
    smache.clone().install()?;

    // The background half: a worker and an executor (usually elsewhere).
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(smache::worker::run_until(
        smache.clone(),
        smache::worker::WorkerOptions::default(),
        async move {
            let _ = stopped.await;
        },
    ));
    let executor = smache::executor::spawn(&smache);

    let db = client.database(&database);
    let ada = User {
        id: ObjectId::new(),
        name: "Ada".into(),
    };
    db.collection::<User>("users").insert_one(&ada).await?;
    db.collection::<Order>("orders")
        .insert_one(Order {
            id: ObjectId::new(),
            user_id: ada.id,
            cents: 1250,
        })
        .await?;

    let timed = |label: &'static str| {
        let ada = ada.clone();
        async move {
            let started = Instant::now();
            let value = dashboard(&ada).await;
            println!("{label:<34} {:>9.3?}  {value:?}", started.elapsed());
            value
        }
    };
    timed("first call (computes)").await;
    timed("second call (cached)").await;

    println!("-- a new order is placed for Ada (a write to MongoDB, nothing else)");
    db.collection::<Order>("orders")
        .insert_one(Order {
            id: ObjectId::new(),
            user_id: ada.id,
            cents: 4000,
        })
        .await?;
    let changed_at = Instant::now();
    loop {
        let value = dashboard(&ada).await;
        if value.orders == 2 {
            println!(
                "refreshed in the background after {:.1?}; no caller computed it",
                changed_at.elapsed()
            );
            break;
        }
        if changed_at.elapsed() > Duration::from_secs(20) {
            return Err("the dashboard was not refreshed within 20 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    timed("next call (cached, fresh)").await;

    let _ = stop.send(());
    worker.await??;
    executor.shutdown().await?;
    db.drop().await?;
    Ok(())
}
