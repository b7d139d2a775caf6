//! Values kept in MongoDB (`store = mongo`, or `ValueStore::Mongo` for a
//! whole instance): the shared store suite (`store_suite/`) passes with
//! every value in MongoDB, and the tests below check where things are.

use bson::doc;
use redis::AsyncCommands;
use smache::{computed, Smache, ValueStore};
use smache_suite::layout::Layout;
use smache_suite::{mongo_database, redis_connection, redis_url, unique, Calls};

mod store_suite;

/// The database the values of this test binary go to.
const DATABASE: &str = "smache_mongo_store_tests";

/// An instance builder on the Redis at `url`, values kept in MongoDB.
fn builder(url: impl Into<String>) -> smache::SmacheBuilder {
    Smache::builder()
        .redis_url(url)
        .mongodb_database(mongo_database(DATABASE))
        .value_store(ValueStore::Mongo)
}

static CALLS: Calls = Calls::new();

#[computed(Raw, Raw, store = mongo)]
async fn big(tag: &str, n: usize) -> Vec<u64> {
    CALLS.bump(tag);
    (0..n as u64).collect()
}

#[computed(Raw, Raw)]
async fn small(tag: &str, n: u32) -> u32 {
    CALLS.bump(tag);
    n
}

async fn redis_data(key: &str) -> Vec<u8> {
    let mut conn = redis_connection(&redis_url()).await;
    conn.hget(key, "d").await.unwrap()
}

#[tokio::test]
async fn the_value_is_in_mongodb_and_redis_keeps_a_reference() {
    let tag = unique("where");
    let smache = builder(redis_url()).prefix(unique("mv")).build().unwrap();
    let value = smache.scope(big(&tag, 10_000)).await;
    assert_eq!(value.len(), 10_000);
    let key = smache.storage_key(&big::key(&tag, 10_000).unwrap());

    // Redis: the 12-byte header, flagged, a 32-byte digest and the
    // document's 12-byte id.
    let reference = redis_data(&key).await;
    assert_eq!(reference.len(), 56, "a reference, not the value");
    assert_eq!(&reference[..3], b"sm\x01");
    assert_eq!(reference[3] & 1, 1, "the reference flag");

    // MongoDB: one document per computation, with the whole envelope.
    let values = mongo_database(DATABASE).collection::<bson::Document>("smache_values");
    let stored = values
        .find_one(doc! { "k": &key })
        .await
        .unwrap()
        .expect("the value's document");
    let document = bson::oid::ObjectId::from_bytes(reference[44..].try_into().unwrap());
    assert_eq!(
        stored.get_str("_id").unwrap(),
        format!("{key}@{}", document.to_hex())
    );
    let envelope = stored.get_binary_generic("d").unwrap();
    assert!(envelope.len() > 10_000, "{} bytes", envelope.len());
    assert!(!stored.contains_key("exp"), "no ttl: kept until replaced");
    let indexes = values.list_index_names().await.unwrap();
    assert!(
        indexes.iter().any(|name| name == "smache_exp"),
        "the TTL index: {indexes:?}"
    );

    // A hit reads it back without computing.
    assert_eq!(smache.scope(big(&tag, 10_000)).await, value);
    assert_eq!(CALLS.get(&tag), 1);
}

#[tokio::test]
async fn store_mongo_on_one_function_leaves_the_others_in_redis() {
    let tag = unique("mixed");
    // A Redis-valued instance: only `big` says `store = mongo`.
    let smache = Smache::builder()
        .redis_url(redis_url())
        .mongodb_database(mongo_database(DATABASE))
        .prefix(unique("mixed"))
        .build()
        .unwrap();
    smache.scope(big(&tag, 3)).await;
    smache.scope(small(&tag, 3)).await;
    let big_data = redis_data(&smache.storage_key(&big::key(&tag, 3).unwrap())).await;
    let small_data = redis_data(&smache.storage_key(&small::key(&tag, 3).unwrap())).await;
    assert_eq!(big_data[3] & 1, 1, "big is a reference");
    assert_eq!(small_data[3] & 1, 0, "small is inline");
    assert_eq!(smache.scope(big(&tag, 3)).await, vec![0, 1, 2]);
    assert_eq!(smache.scope(small(&tag, 3)).await, 3);
    assert_eq!(CALLS.get(&tag), 2);
}

#[tokio::test]
async fn a_reference_whose_document_is_gone_is_recomputed() {
    let tag = unique("gone");
    let smache = builder(redis_url()).prefix(unique("mv")).build().unwrap();
    smache.scope(big(&tag, 5)).await;
    let key = smache.storage_key(&big::key(&tag, 5).unwrap());
    let values = mongo_database(DATABASE).collection::<bson::Document>("smache_values");
    values.delete_many(doc! { "k": &key }).await.unwrap();
    assert_eq!(smache.scope(big(&tag, 5)).await, vec![0, 1, 2, 3, 4]);
    assert_eq!(CALLS.get(&tag), 2, "recomputed");
    assert_eq!(smache.scope(big(&tag, 5)).await, vec![0, 1, 2, 3, 4]);
    assert_eq!(CALLS.get(&tag), 2, "and cached again");
}

#[tokio::test]
async fn invalidating_lets_the_documents_expire() {
    let tag = unique("forget");
    let smache = builder(redis_url()).prefix(unique("mv")).build().unwrap();
    smache.scope(big(&tag, 2)).await;
    let key = big::key(&tag, 2).unwrap();
    assert!(smache.invalidate(&key).await.unwrap());
    let values = mongo_database(DATABASE).collection::<bson::Document>("smache_values");
    let stored = values
        .find_one(doc! { "k": smache.storage_key(&key) })
        .await
        .unwrap()
        .expect("kept a little while for readers in flight");
    assert!(stored.get_datetime("exp").is_ok(), "then it expires");
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, smache::Entity)]
#[entity(collection = "authors")]
struct Author {
    #[serde(rename = "_id")]
    id: bson::oid::ObjectId,
    name: String,
}

#[computed(Author, store = mongo)]
async fn byline(author: &Author) -> String {
    format!("by {}", author.name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_refreshes_a_value_kept_in_mongodb() {
    let database = unique("mongo_refresh");
    let db = mongo_database(&database);
    let smache = Smache::builder()
        .redis_url(redis_url())
        .mongodb_database(db.clone())
        .prefix(unique("mv-refresh"))
        .build()
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(smache::worker::run_until(
        smache.clone(),
        smache::worker::WorkerOptions::default(),
        async move {
            let _ = stopped.await;
        },
    ));
    let executor = smache::executor::spawn(&smache);
    let authors = db.collection::<Author>("authors");
    let mut author = Author {
        id: bson::oid::ObjectId::new(),
        name: "Ada".into(),
    };
    authors.insert_one(&author).await.unwrap();
    assert_eq!(smache.scope(byline(&author)).await, "by Ada");
    let key = byline::key(&author).unwrap();
    let storage = smache.storage_key(&key);
    // Let the worker start watching before the change.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;

    authors
        .update_one(
            doc! { "_id": author.id },
            doc! { "$set": { "name": "Grace" } },
        )
        .await
        .unwrap();
    author.name = "Grace".into();
    let fresh = smache_suite::eventually(std::time::Duration::from_secs(10), || {
        let smache = smache.clone();
        let author = author.clone();
        async move { smache.scope(byline(&author)).await == "by Grace" }
    })
    .await;
    assert!(fresh, "the executor stored the new value in MongoDB");
    // The replaced document is left to expire; the new one has none.
    let values = db.collection::<bson::Document>("smache_values");
    let mut docs = Vec::new();
    let mut cursor = values.find(doc! { "k": &storage }).await.unwrap();
    while cursor.advance().await.unwrap() {
        docs.push(cursor.deserialize_current().unwrap());
    }
    docs.sort_by_key(|doc| doc.get_i64("w").unwrap_or(0));
    assert!(docs.len() >= 2, "{docs:?}");
    assert!(docs[0].get_datetime("exp").is_ok(), "the old one expires");
    assert!(
        !docs.last().unwrap().contains_key("exp"),
        "the new one stays"
    );

    executor.shutdown().await.unwrap();
    let _ = stop.send(());
    worker.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_task_of_a_value_kept_in_mongodb_keeps_only_a_reference_in_redis() {
    let tag = unique("task");
    let prefix = unique("mv-task");
    let smache = builder(redis_url())
        .prefix(&prefix)
        .run_executor()
        .build()
        .unwrap();
    let task = match smache.scope(big::submit(&tag, 30_000)).await.unwrap() {
        smache::Submitted::Pending(task) => task,
        smache::Submitted::Ready(_) => panic!("a cold key gives a task"),
    };
    let value = task.wait().await.unwrap();
    assert_eq!(value.len(), 30_000);
    let layout = Layout::of(&smache).await;
    let mut conn = redis_connection(&redis_url()).await;
    let result: Vec<u8> = conn.hget(layout.task_key(task.id()), "r").await.unwrap();
    assert_eq!(
        result.len(),
        56,
        "the task holds a reference, not the value"
    );
    // Its copy in MongoDB outlives the value's own document.
    assert!(smache
        .invalidate(&big::key(&tag, 30_000).unwrap())
        .await
        .unwrap());
    let copy = mongo_database(DATABASE)
        .collection::<bson::Document>("smache_values")
        .find_one(doc! { "_id": layout.task_key(task.id()) })
        .await
        .unwrap()
        .expect("the task's copy");
    assert!(copy.get_datetime("exp").is_ok(), "kept as long as the task");
    assert_eq!(
        smache.task::<Vec<u64>>(task.id()).await.unwrap(),
        smache::TaskStatus::Done(value)
    );
    smache.stop_executor().await.unwrap();
}
