//! Operable from the first hour: what the worker prints and logs, how
//! workers announce themselves, and what an application says when none
//! serves it.

use std::time::Duration;

use bson::oid::ObjectId;
use serde::{Deserialize, Serialize};
use smache::{computed, Entity, Smache};
use smache_suite::{
    capture_logs, eventually, mongo_database, mongodb_uri, redis_connection, redis_url, unique,
    worker_binary, RedisServer, WorkerProcess,
};

/// `smache-worker` with `args` and none of the `SMACHE_*` variables set;
/// its exit code and what it printed (stdout, then stderr).
fn worker_cli(args: &[&str]) -> (Option<i32>, String) {
    let mut command = std::process::Command::new(worker_binary());
    command.args(args);
    for (var, _) in std::env::vars() {
        if var.starts_with("SMACHE_") {
            command.env_remove(var);
        }
    }
    let output = command.output().expect("run smache-worker");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), printed)
}

#[test]
fn smache_worker_help_names_its_variables_without_showing_them_empty() {
    for args in [
        &["--help"][..],
        &["inspect", "--help"],
        &["ready", "--help"],
    ] {
        let (code, help) = worker_cli(args);
        assert_eq!(code, Some(0), "{help}");
        // An unset variable reads as `[env: SMACHE_PREFIX=]`, as if set
        // to "": the values are not shown at all.
        assert!(!help.contains("=]"), "{args:?}\n{help}");
    }
    let (_, help) = worker_cli(&["--help"]);
    for shown in [
        "[env: SMACHE_REDIS_URL]",
        "[env: SMACHE_PREFIX] [default: smache]",
        "[env: SMACHE_WORKER_LEASE_SECS] [default: 10]",
        "[env: SMACHE_LOG] [default: info]",
    ] {
        assert!(help.contains(shown), "{shown}\n{help}");
    }
}

/// The first start of a worker on an empty Redis is the normal case: it
/// logs no warning, and writes no colour codes to a log that is a file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_start_logs_no_warning_and_no_colour_codes() {
    let redis = RedisServer::start();
    let database = unique("ops_first").replace('-', "_");
    let prefix = unique("ops-first");
    let mut worker = WorkerProcess::start(&redis.url(), &mongodb_uri(), &database, &prefix);
    worker.wait_watching(Duration::from_secs(20)).await;
    assert!(worker.terminate(), "{}", worker.log());
    let log = worker.log();
    assert!(!log.contains('\u{1b}'), "colour codes in a file:\n{log}");
    assert!(
        log.contains("marked the values stored before it watched stale"),
        "{log}"
    );
    let warnings: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("WARN") || line.contains("ERROR"))
        .collect();
    assert!(warnings.is_empty(), "{warnings:#?}\n{log}");
}

#[derive(Clone, Debug, Serialize, Deserialize, Entity)]
#[entity(collection = "users")]
struct User {
    #[serde(rename = "_id")]
    id: ObjectId,
    name: String,
}

#[computed(User)]
async fn greeting(user: &User) -> String {
    format!("hello {}", user.name)
}

fn user(name: &str) -> User {
    User {
        id: ObjectId::new(),
        name: name.into(),
    }
}

fn redis_only(redis_url: &str, prefix: &str) -> Smache {
    Smache::builder()
        .redis_url(redis_url)
        .prefix(prefix)
        .build()
        .unwrap()
}

/// A watching worker and a standby announce themselves: `inspect workers`
/// (and the head of `inspect jobs`) shows the database each follows, which
/// one watches, the collections it saw changes in and its lag. One that
/// stops takes its record away; one that dies drops out within twice its
/// lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_announce_what_they_watch_and_drop_out_when_they_die() {
    let redis_url = redis_url();
    let database = unique("ops_roster").replace('-', "_");
    let prefix = unique("ops-roster");
    let db = mongo_database(&database);
    let smache = redis_only(&redis_url, &prefix);
    // Foreign data where the workers announce themselves reads as none,
    // and the first heartbeat replaces it.
    let mut conn = redis_connection(&redis_url).await;
    let () = redis::cmd("SET")
        .arg(format!("{{{prefix}}}:workers"))
        .arg("not a hash")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(smache.inspect_workers().await.unwrap().workers.is_empty());
    let mut watcher = WorkerProcess::start(&redis_url, &mongodb_uri(), &database, &prefix);
    watcher.wait_watching(Duration::from_secs(20)).await;
    let mut standby = WorkerProcess::start(&redis_url, &mongodb_uri(), &database, &prefix);
    db.collection::<User>("users")
        .insert_one(user("Ada"))
        .await
        .unwrap();

    let seen = eventually(Duration::from_secs(15), || async {
        let report = smache.inspect_workers().await.unwrap();
        report.workers.len() == 2
            && report.workers[0].watching
            && !report.workers[1].watching
            && report.workers[0].collections == [("users".to_owned(), 1)]
            && report.workers[0].lag.is_some()
    })
    .await;
    let report = smache.inspect_workers().await.unwrap();
    assert!(seen, "{report}\n{}", watcher.log());
    assert!(report.workers.iter().all(|w| w.database == database));
    let lag = report.workers[0].lag.unwrap();
    assert!(lag < Duration::from_secs(10), "{lag:?}");
    eprintln!("{report}");

    let (code, printed) = worker_cli(&[
        "inspect",
        "workers",
        "--redis-url",
        &redis_url,
        "--prefix",
        &prefix,
    ]);
    assert_eq!(code, Some(0), "{printed}");
    assert!(printed.contains("2 live, 1 watching"), "{printed}");
    assert!(printed.contains(&database), "{printed}");
    assert!(printed.contains("1 (users 1)"), "{printed}");
    let jobs = smache.inspect_jobs().await.unwrap().to_string();
    assert!(
        jobs.contains(&format!("workers: 1 watching (database {database}, lag"))
            && jobs.contains("1 standing by"),
        "{jobs}"
    );

    // Stopped: its record goes at once.
    assert!(standby.terminate(), "{}", standby.log());
    let report = smache.inspect_workers().await.unwrap();
    assert_eq!(report.workers.len(), 1, "{report}");
    // Killed: it drops out within twice its lease (2 s here).
    watcher.kill();
    let gone = eventually(Duration::from_secs(10), || async {
        smache.inspect_workers().await.unwrap().workers.is_empty()
    })
    .await;
    let report = smache.inspect_workers().await.unwrap();
    assert!(gone, "{report}");
    assert!(report.to_string().contains("NONE live"), "{report}");
    assert!(report.depended_on.is_empty(), "no value stored: {report}");
    let _ = db.drop().await;
}

/// An application whose workers follow another database, or use another
/// prefix, logs one warning saying what it expected and what it found,
/// and an info line once a worker that serves it appears. One that a
/// worker serves says nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_no_worker_serves_warns_once_and_says_when_one_appears() {
    let logs = capture_logs("smache=info");
    let redis_url = redis_url();
    let (ours, theirs) = (
        unique("ops_ours").replace('-', "_"),
        unique("ops_theirs").replace('-', "_"),
    );
    let (prefix, other_prefix) = (unique("ops-app"), unique("ops-other"));
    // A worker of our prefix on their database, and one of our database
    // under another prefix: neither serves us.
    let mut wrong_db = WorkerProcess::start(&redis_url, &mongodb_uri(), &theirs, &prefix);
    let mut wrong_prefix = WorkerProcess::start(&redis_url, &mongodb_uri(), &ours, &other_prefix);
    wrong_db.wait_watching(Duration::from_secs(20)).await;
    wrong_prefix.wait_watching(Duration::from_secs(20)).await;

    let within = Duration::from_secs(1);
    let app = |prefix: &str| {
        Smache::builder()
            .redis_url(&redis_url)
            .mongodb_database(mongo_database(&ours))
            .prefix(prefix)
            .expect_worker_within(Some(within))
            .build()
            .unwrap()
    };
    let unserved = app(&prefix);
    // Served from the start: the worker of our database, other prefix.
    let served = app(&other_prefix);
    let warnings = |prefix: &str| -> Vec<String> {
        logs.lines()
            .into_iter()
            .filter(|line| line.contains(" WARN ") && line.contains(&format!("prefix={prefix}")))
            .collect()
    };
    let started = std::time::Instant::now();
    let warned = eventually(Duration::from_secs(20), || async {
        unserved.scope(greeting(&user("Ada"))).await;
        served.scope(greeting(&user("Ada"))).await;
        !warnings(&prefix).is_empty()
    })
    .await;
    assert!(warned, "{:#?}", logs.lines());
    eprintln!("warned after {:?}", started.elapsed());
    let warning = warnings(&prefix).remove(0);
    eprintln!("{warning}");
    for said in [
        format!("no smache-worker follows database `{ours}` for prefix `{prefix}`"),
        format!("(database `{theirs}`)"),
        format!("`{other_prefix}` (database `{ours}`)"),
        format!("smache-worker --prefix {prefix} --database {ours}"),
    ] {
        assert!(warning.contains(&said), "{said}\n{warning}");
    }
    // Once: more stores and checks say nothing more.
    for _ in 0..10 {
        unserved.scope(greeting(&user("Grace"))).await;
        served.scope(greeting(&user("Grace"))).await;
        tokio::time::sleep(within / 4).await;
    }
    assert_eq!(warnings(&prefix).len(), 1, "{:#?}", logs.lines());

    let mut right = WorkerProcess::start(&redis_url, &mongodb_uri(), &ours, &prefix);
    let appeared = eventually(Duration::from_secs(20), || async {
        unserved.scope(greeting(&user("Alan"))).await;
        logs.lines().iter().any(|line| {
            line.contains(" INFO ")
                && line.contains(&format!("prefix={prefix}"))
                && line.contains("serves this instance now")
        })
    })
    .await;
    assert!(appeared, "{:#?}\n{}", logs.lines(), right.log());
    assert_eq!(warnings(&prefix).len(), 1, "{:#?}", logs.lines());
    assert!(
        warnings(&other_prefix).is_empty(),
        "a served instance says nothing: {:#?}",
        logs.lines()
    );

    for worker in [&mut wrong_db, &mut wrong_prefix, &mut right] {
        assert!(worker.terminate(), "{}", worker.log());
    }
    let _ = mongo_database(&ours).drop().await;
    let _ = mongo_database(&theirs).drop().await;
}

/// Redis goes away for a few seconds under an application with an
/// executor and a worker: each process logs the outage once (and its end
/// once), not once a call or once a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_is_logged_once_per_process() {
    let logs = capture_logs("smache=info");
    let mut redis = RedisServer::start();
    let database = unique("ops_outage").replace('-', "_");
    let prefix = unique("ops-outage");
    let smache = Smache::builder()
        .redis_url(redis.url())
        .mongodb_database(mongo_database(&database))
        .prefix(&prefix)
        .op_timeout(Duration::from_millis(300))
        .run_executor()
        .build()
        .unwrap();
    let mut worker = WorkerProcess::start(&redis.url(), &mongodb_uri(), &database, &prefix);
    worker.wait_watching(Duration::from_secs(20)).await;
    let ada = user("Ada");
    assert_eq!(smache.scope(greeting(&ada)).await, "hello Ada");
    let worker_logged = worker.log().len();

    redis.kill();
    let down = std::time::Instant::now();
    while down.elapsed() < Duration::from_secs(4) {
        assert_eq!(smache.scope(greeting(&ada)).await, "hello Ada");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    redis.resume();
    let back = eventually(Duration::from_secs(15), || async {
        smache.scope(greeting(&ada)).await;
        smache
            .is_fresh(&greeting::key(&ada).unwrap())
            .await
            .unwrap_or(false)
    })
    .await;
    assert!(back, "{:#?}", logs.lines());
    worker.wait_watching(Duration::from_secs(20)).await;
    smache.stop_executor().await.unwrap();
    assert!(worker.terminate(), "{}", worker.log());

    let ours = |line: &&String| line.contains(&format!("prefix={prefix}"));
    let lines = logs.lines();
    let outage: Vec<&String> = lines
        .iter()
        .filter(ours)
        .filter(|line| line.contains("Redis is unreachable"))
        .collect();
    let over: Vec<&String> = lines
        .iter()
        .filter(ours)
        .filter(|line| line.contains("Redis answers again"))
        .collect();
    eprintln!("{outage:#?}\n{over:#?}");
    assert_eq!(outage.len(), 1, "{lines:#?}");
    assert_eq!(over.len(), 1, "{lines:#?}");
    // Nothing else in this process warns about Redis (the executor's
    // retries included).
    let redis_warnings: Vec<&String> = lines
        .iter()
        .filter(|line| line.contains(" WARN ") && line.to_lowercase().contains("redis"))
        .collect();
    assert_eq!(redis_warnings.len(), 1, "{redis_warnings:#?}");

    let during = worker.log()[worker_logged..].to_owned();
    let worker_warnings: Vec<&str> = during
        .lines()
        .filter(|line| {
            line.contains("WARN") && (line.contains("unreachable") || line.contains("unavailable"))
        })
        .collect();
    assert_eq!(worker_warnings.len(), 1, "{during}");
    assert!(during.contains("Redis answers again"), "{during}");
    let _ = mongo_database(&database).drop().await;
}

/// `smache-worker` told no shard count takes the one the instance recorded
/// in Redis (its own default would be refused); told another, it says why
/// it cannot use the store.
#[tokio::test]
async fn smache_worker_takes_the_shard_count_the_instance_recorded() {
    let redis_url = redis_url();
    let prefix = unique("ops-shards");
    let smache = Smache::builder()
        .redis_url(&redis_url)
        .prefix(&prefix)
        .redis_shards(3)
        .build()
        .unwrap();
    let stream = smache.inspect_jobs().await.unwrap().stream;
    assert_eq!(
        smache::worker::recorded_shards(&smache).await.unwrap(),
        Some(3)
    );
    let inspect = [
        "inspect",
        "jobs",
        "--redis-url",
        &redis_url,
        "--prefix",
        &prefix,
    ];
    let (code, printed) = worker_cli(&inspect);
    assert_eq!(code, Some(0), "{printed}");
    assert!(printed.contains(&stream), "{stream}: {printed}");
    let (code, printed) = worker_cli(&[&inspect[..], &["--redis-shards", "2"]].concat());
    assert_eq!(code, Some(1), "{printed}");
    assert!(
        printed.contains("spreads its keys over 3 shards") && printed.contains("over 2"),
        "{printed}"
    );
}
