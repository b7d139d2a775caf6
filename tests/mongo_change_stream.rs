//! Change streams, `find_one` and `count_documents` through the `mongodb`
//! driver, against the server in `SMACHE_TEST_MONGODB_URI`.
//!
//! `./scripts/test.sh` points that at the test-only Mongo server
//! (`tests/mongo-test-server`); these tests must pass unchanged against a
//! real replica set too. Set `SMACHE_TEST_REAL_MONGODB=1` then, to skip the
//! one test that needs the test server's `smacheTestForgetHistory` command.
//!
//! Every test uses a database of its own, so they can run in parallel, and
//! every wait for a change event is bounded: a missing event fails the test
//! instead of hanging it.

use std::time::Duration;

use bson::{doc, Document};
use futures::StreamExt;
use mongodb::change_stream::event::{ChangeStreamEvent, OperationType, ResumeToken};
use mongodb::change_stream::ChangeStream;
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::FullDocumentType;
use mongodb::{Client, Collection, Database};
use smache_suite::{mongodb_uri, unique};

/// How long a test waits for one change event.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

type Events = ChangeStream<ChangeStreamEvent<Document>>;

async fn connect() -> Client {
    let uri = mongodb_uri();
    Client::with_uri_str(&uri)
        .await
        .unwrap_or_else(|err| panic!("cannot connect to {uri}: {err}"))
}

/// A database no other test uses, on a fresh client.
async fn fresh_database(label: &str) -> (Client, Database) {
    let client = connect().await;
    let database = client.database(&unique(label));
    (client, database)
}

async fn next_event(stream: &mut Events) -> ChangeStreamEvent<Document> {
    tokio::time::timeout(EVENT_TIMEOUT, stream.next())
        .await
        .expect("no change event within the timeout")
        .expect("the change stream ended")
        .expect("the change stream failed")
}

/// Closes `client`; every cursor and stream of it must be dropped first.
async fn shutdown(client: Client) {
    tokio::time::timeout(EVENT_TIMEOUT, client.shutdown())
        .await
        .expect("client shutdown timed out (is a stream or cursor still alive?)");
}

fn coll_of(event: &ChangeStreamEvent<Document>) -> Option<&str> {
    event.ns.as_ref().and_then(|ns| ns.coll.as_deref())
}

/// The server code of a command error, if `err` is one.
fn command_code(err: &mongodb::error::Error) -> Option<i32> {
    match *err.kind {
        ErrorKind::Command(ref command) => Some(command.code),
        _ => None,
    }
}

#[tokio::test]
async fn insert_update_delete_arrive_in_order() {
    let (_client, database) = fresh_database("cs-order").await;
    let items: Collection<Document> = database.collection("items");
    let mut stream = items
        .watch()
        .full_document(FullDocumentType::UpdateLookup)
        .await
        .expect("open the change stream");

    items
        .insert_one(doc! { "_id": 1, "name": "first", "tags": ["a"] })
        .await
        .unwrap();
    let insert = next_event(&mut stream).await;
    assert_eq!(insert.operation_type, OperationType::Insert);
    assert_eq!(insert.document_key, Some(doc! { "_id": 1 }));
    assert_eq!(
        insert.full_document,
        Some(doc! { "_id": 1, "name": "first", "tags": ["a"] })
    );
    let ns = insert.ns.as_ref().expect("insert has ns");
    assert_eq!(ns.db, database.name());
    assert_eq!(ns.coll.as_deref(), Some("items"));
    assert!(insert.cluster_time.is_some(), "insert has clusterTime");
    assert!(insert.wall_time.is_some(), "insert has wallTime");

    items
        .update_one(doc! { "_id": 1 }, doc! { "$set": { "name": "second" } })
        .await
        .unwrap();
    let update = next_event(&mut stream).await;
    assert_eq!(update.operation_type, OperationType::Update);
    assert_eq!(update.document_key, Some(doc! { "_id": 1 }));
    assert_eq!(
        update.full_document,
        Some(doc! { "_id": 1, "name": "second", "tags": ["a"] }),
        "updateLookup shows the document after the update"
    );
    let description = update.update_description.expect("update has a description");
    assert_eq!(description.updated_fields, doc! { "name": "second" });
    assert!(description.removed_fields.is_empty());

    items.delete_one(doc! { "_id": 1 }).await.unwrap();
    let delete = next_event(&mut stream).await;
    assert_eq!(delete.operation_type, OperationType::Delete);
    assert_eq!(delete.document_key, Some(doc! { "_id": 1 }));
    assert_eq!(delete.full_document, None);
}

#[tokio::test]
async fn resuming_on_a_new_client_sees_exactly_the_missed_writes() {
    let (client, database) = fresh_database("cs-resume").await;
    let name = database.name().to_owned();
    let items: Collection<Document> = database.collection("items");
    let mut stream = items.watch().await.expect("open the change stream");
    items.insert_one(doc! { "_id": "seen" }).await.unwrap();
    let seen = next_event(&mut stream).await;
    assert_eq!(seen.document_key, Some(doc! { "_id": "seen" }));
    let token: ResumeToken = stream.resume_token().expect("a resume token");
    drop(stream);
    shutdown(client).await;

    // Written while nobody watches.
    let (writer, _) = fresh_database("cs-resume-writer").await;
    let missed: Collection<Document> = writer.database(&name).collection("items");
    missed.insert_one(doc! { "_id": "a" }).await.unwrap();
    missed.insert_one(doc! { "_id": "b" }).await.unwrap();
    missed
        .update_one(doc! { "_id": "a" }, doc! { "$set": { "n": 1 } })
        .await
        .unwrap();
    shutdown(writer).await;

    // What happened after the token; each round adds its own marker write.
    let mut expected = vec![
        (OperationType::Insert, "a".to_owned()),
        (OperationType::Insert, "b".to_owned()),
        (OperationType::Update, "a".to_owned()),
    ];
    for start_after in [false, true] {
        let client = connect().await;
        let items: Collection<Document> = client.database(&name).collection("items");
        let watch = items.watch();
        let watch = if start_after {
            watch.start_after(token.clone())
        } else {
            watch.resume_after(token.clone())
        };
        let mut stream = watch.await.expect("resume the change stream");
        for (operation, id) in &expected {
            let event = next_event(&mut stream).await;
            assert_eq!(
                &event.operation_type, operation,
                "start_after: {start_after}"
            );
            assert_eq!(event.document_key, Some(doc! { "_id": id }));
        }
        // Nothing else happened: the next event is the next write.
        let marker = format!("marker-{start_after}");
        items.insert_one(doc! { "_id": &marker }).await.unwrap();
        let event = next_event(&mut stream).await;
        assert_eq!(event.document_key, Some(doc! { "_id": &marker }));
        expected.push((OperationType::Insert, marker));
        drop(stream);
        shutdown(client).await;
    }
}

#[tokio::test]
async fn database_watch_filters_on_the_collection() {
    let (_client, database) = fresh_database("cs-database").await;
    let mut stream = database
        .watch()
        .pipeline([doc! { "$match": { "ns.coll": "wanted" } }])
        .await
        .expect("open the database change stream");
    let wanted: Collection<Document> = database.collection("wanted");
    let other: Collection<Document> = database.collection("other");
    wanted.insert_one(doc! { "_id": 1 }).await.unwrap();
    other.insert_one(doc! { "_id": 1 }).await.unwrap();
    other
        .update_one(doc! { "_id": 1 }, doc! { "$set": { "x": 1 } })
        .await
        .unwrap();
    wanted
        .replace_one(doc! { "_id": 1 }, doc! { "y": 2 })
        .await
        .unwrap();
    wanted.insert_one(doc! { "_id": 2 }).await.unwrap();

    let first = next_event(&mut stream).await;
    assert_eq!(first.operation_type, OperationType::Insert);
    assert_eq!(coll_of(&first), Some("wanted"));
    assert_eq!(first.document_key, Some(doc! { "_id": 1 }));
    let second = next_event(&mut stream).await;
    assert_eq!(second.operation_type, OperationType::Replace);
    assert_eq!(coll_of(&second), Some("wanted"));
    assert_eq!(second.full_document, Some(doc! { "_id": 1, "y": 2 }));
    let third = next_event(&mut stream).await;
    assert_eq!(third.operation_type, OperationType::Insert);
    assert_eq!(coll_of(&third), Some("wanted"));
    assert_eq!(third.document_key, Some(doc! { "_id": 2 }));
}

#[tokio::test]
async fn resuming_after_forgotten_history_fails_with_code_286() {
    if std::env::var_os("SMACHE_TEST_REAL_MONGODB").is_some() {
        eprintln!("skipped: smacheTestForgetHistory exists on the test server only");
        return;
    }
    let (client, database) = fresh_database("cs-history").await;
    let items: Collection<Document> = database.collection("items");
    let mut stream = items.watch().await.expect("open the change stream");
    items.insert_one(doc! { "_id": 1 }).await.unwrap();
    next_event(&mut stream).await;
    let token = stream.resume_token().expect("a resume token");

    // Only this test's database: other tests run in parallel.
    client
        .database("admin")
        .run_command(doc! { "smacheTestForgetHistory": 1, "db": database.name() })
        .await
        .expect("smacheTestForgetHistory");

    let err = items
        .watch()
        .resume_after(token)
        .await
        .expect_err("resuming from a forgotten token must fail");
    assert_eq!(command_code(&err), Some(286), "{err}");

    // The stream that was open when history went is lost as well...
    let outcome = tokio::time::timeout(EVENT_TIMEOUT, stream.next())
        .await
        .expect("the open stream must fail, not wait");
    let err = outcome
        .expect("the open stream must fail, not end")
        .expect_err("the open stream must fail");
    assert_eq!(command_code(&err), Some(286), "{err}");

    // ...while a stream opened afterwards works.
    let mut fresh = items.watch().await.expect("open a new change stream");
    items.insert_one(doc! { "_id": 2 }).await.unwrap();
    let event = next_event(&mut fresh).await;
    assert_eq!(event.document_key, Some(doc! { "_id": 2 }));
}

#[tokio::test]
async fn find_one_and_count_documents_work() {
    let (_client, database) = fresh_database("crud").await;
    let items: Collection<Document> = database.collection("items");
    items
        .insert_many([
            doc! { "_id": 1, "k": 1 },
            doc! { "_id": 2, "k": 2 },
            doc! { "_id": 3, "k": 3 },
        ])
        .await
        .unwrap();

    let found = items.find_one(doc! { "_id": 2 }).await.unwrap();
    assert_eq!(found, Some(doc! { "_id": 2, "k": 2 }));
    let missing = items.find_one(doc! { "_id": 9 }).await.unwrap();
    assert_eq!(missing, None);
    assert_eq!(items.count_documents(doc! {}).await.unwrap(), 3);
    assert_eq!(
        items
            .count_documents(doc! { "k": { "$gte": 2 } })
            .await
            .unwrap(),
        2
    );
    // Several batches: getMore on a plain cursor.
    let all: Vec<Document> = items
        .find(doc! {})
        .batch_size(1)
        .await
        .unwrap()
        .map(|document| document.unwrap())
        .collect()
        .await;
    assert_eq!(all.len(), 3);

    let err = items
        .insert_one(doc! { "_id": 1 })
        .await
        .expect_err("duplicate _id");
    match *err.kind {
        ErrorKind::Write(WriteFailure::WriteError(ref write)) => assert_eq!(write.code, 11000),
        ref other => panic!("expected a duplicate key write error, got {other:?}"),
    }
}
