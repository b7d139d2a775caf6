//! Submit and await: `f::submit` returns at once, executors do the work,
//! concurrent submits of one value join one task, any process can look a
//! task up, callbacks run exactly once per attachment, and a failure
//! reaches every waiter and callback after the retry policy.
//!
//! The other process is this test binary again, running the ignored
//! `child_submitter` test with `SMACHE_TASK_*` variables.

use std::process::{Command, Stdio};
use std::time::Duration;

use redis::AsyncCommands;
use smache::{computed, Completion, Error, Retry, Smache, Submitted, TaskStatus};
use smache_suite::{redis_connection, redis_url, unique};

/// Counts its runs in Redis (shared by every process), takes a while, and
/// fails for inputs starting with "fail" (or the first `n` runs of
/// "flaky<n>:…").
#[computed(Raw, Raw)]
async fn slow_upper(tag: String, text: String) -> Result<String, String> {
    let mut conn = redis_connection(&redis_url()).await;
    let run: u64 = conn.incr(format!("{tag}:runs"), 1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    if text.starts_with("fail") {
        return Err(format!("cannot upper {text:?} (run {run})"));
    }
    if let Some(failures) = text
        .strip_prefix("flaky")
        .and_then(|rest| rest.split(':').next())
        .and_then(|n| n.parse::<u64>().ok())
    {
        if run <= failures {
            return Err(format!("flaky run {run}"));
        }
    }
    Ok(text.to_uppercase())
}

#[computed(Raw)]
fn panics(tag: String) -> u32 {
    let _ = tag;
    panic!("this function always panics");
}

async fn runs(tag: &str) -> u64 {
    let mut conn = redis_connection(&redis_url()).await;
    conn.get::<_, Option<u64>>(format!("{tag}:runs"))
        .await
        .unwrap()
        .unwrap_or(0)
}

/// Records a callback run in Redis: `{tag}:cb` gets one entry per run,
/// "<label>=<value or error>".
async fn record(done: Completion) -> smache::CallbackResult {
    let (tag, label): (String, String) = done.args()?;
    let outcome = match done.value::<String>() {
        Ok(value) => value,
        Err(Error::TaskFailed { message, .. }) => format!("error:{message}"),
        Err(err) => return Err(err.into()),
    };
    let mut conn = redis_connection(&redis_url()).await;
    let _: () = conn
        .rpush(format!("{tag}:cb"), format!("{label}={outcome}"))
        .await?;
    Ok(())
}

async fn recorded(tag: &str) -> Vec<String> {
    let mut conn = redis_connection(&redis_url()).await;
    let mut runs: Vec<String> = conn.lrange(format!("{tag}:cb"), 0, -1).await.unwrap();
    runs.sort();
    runs
}

fn builder(prefix: &str) -> smache::SmacheBuilder {
    Smache::builder()
        .redis_url(redis_url())
        .prefix(prefix)
        .retry(Retry::new(3, Duration::from_millis(20)))
        .callback("record", record)
        .callback("broken", |_done: Completion| async {
            Err::<(), _>("this callback always fails".into())
        })
        .callback("panicking", |_done: Completion| async {
            panic!("this callback always panics")
        })
}

/// An instance with an executor in this process.
async fn with_executor(prefix: &str) -> Smache {
    builder(prefix).run_executor().build().unwrap()
}

/// An instance without one: its submits wait for an executor elsewhere.
fn without_executor(prefix: &str) -> Smache {
    builder(prefix).build().unwrap()
}

#[tokio::test]
async fn a_cold_submit_returns_a_task_and_the_executor_computes_it() {
    let prefix = unique("task-cold");
    let tag = unique("task-cold-tag");
    let smache = with_executor(&prefix).await;
    let submitted = smache
        .scope(slow_upper::submit(tag.clone(), "hello".into()))
        .await
        .unwrap();
    let Submitted::Pending(task) = submitted else {
        panic!("a cold key must give a task");
    };
    // An ObjectId's hex, after its shard's number on a store of several.
    let (shard, id) = task.id().rsplit_once('.').unwrap_or(("0", task.id()));
    assert_eq!(
        task.id().contains('.'),
        smache_suite::layout::shards() > 1,
        "{}",
        task.id()
    );
    assert!(shard.parse::<usize>().is_ok(), "{}", task.id());
    assert!(
        bson::oid::ObjectId::parse_str(id).is_ok(),
        "task ids are ObjectId hex: {}",
        task.id()
    );
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(10), task.wait())
            .await
            .expect("the task finishes")
            .unwrap(),
        "HELLO"
    );
    assert_eq!(
        smache.task::<String>(task.id()).await.unwrap(),
        TaskStatus::Done("HELLO".into())
    );
    // The value is cached now: a submit is a hit, a call does not compute.
    match smache
        .scope(slow_upper::submit(tag.clone(), "hello".into()))
        .await
        .unwrap()
    {
        Submitted::Ready(value) => assert_eq!(value, "HELLO"),
        Submitted::Pending(task) => panic!("expected a hit, got task {}", task.id()),
    }
    assert_eq!(
        smache.scope(slow_upper(tag.clone(), "hello".into())).await,
        Ok("HELLO".into())
    );
    assert_eq!(runs(&tag).await, 1);
    smache.stop_executor().await.unwrap();
}

#[tokio::test]
async fn concurrent_submits_join_one_task_and_plain_callers_share_it() {
    let prefix = unique("task-bulk");
    let tag = unique("task-bulk-tag");
    let smache = with_executor(&prefix).await;
    let mut submits = Vec::new();
    for _ in 0..20 {
        let (smache, tag) = (smache.clone(), tag.clone());
        submits.push(tokio::spawn(async move {
            smache
                .scope(slow_upper::submit(tag, "bulk".into()))
                .await
                .unwrap()
        }));
    }
    let mut callers = Vec::new();
    for _ in 0..5 {
        let (smache, tag) = (smache.clone(), tag.clone());
        callers.push(tokio::spawn(async move {
            smache.scope(slow_upper(tag, "bulk".into())).await
        }));
    }
    let mut ids = Vec::new();
    for submit in submits {
        match submit.await.unwrap() {
            Submitted::Pending(task) => {
                ids.push(task.id().to_owned());
                assert_eq!(task.wait().await.unwrap(), "BULK");
            }
            Submitted::Ready(value) => assert_eq!(value, "BULK"),
        }
    }
    ids.dedup();
    assert_eq!(
        ids.len(),
        1,
        "every pending submit joined one task: {ids:?}"
    );
    for caller in callers {
        assert_eq!(caller.await.unwrap(), Ok("BULK".into()));
    }
    assert_eq!(runs(&tag).await, 1, "the body ran once for everyone");
    smache.stop_executor().await.unwrap();
}

#[tokio::test]
async fn a_task_submitted_in_another_process_is_looked_up_and_awaited_here() {
    let prefix = unique("task-remote");
    let tag = unique("task-remote-tag");
    // The child submits (it has no executor) and prints the task id.
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "child_submitter",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SMACHE_TASK_PREFIX", &prefix)
        .env("SMACHE_TASK_TAG", &tag)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(output.status.success(), "the child failed");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let id = stdout
        .lines()
        .find_map(|line| line.split_once("TASK ").map(|(_, id)| id))
        .expect("the child printed a task id")
        .trim()
        .to_owned();

    // Nobody has run it yet: it is pending, and a callback can be attached.
    let smache = without_executor(&prefix);
    assert_eq!(
        smache.task::<String>(&id).await.unwrap(),
        TaskStatus::Pending
    );
    smache
        .on_complete(&id, "record", &(&tag, "parent"))
        .await
        .unwrap();
    // An executor here picks the job up; the handle made from the id waits.
    let executor = smache::executor::spawn(&smache);
    let handle = smache.task_handle::<String>(&id);
    let value = tokio::time::timeout(Duration::from_secs(10), handle.wait())
        .await
        .expect("the task finishes")
        .unwrap();
    assert_eq!(value, "REMOTE");
    assert!(
        smache_suite::eventually(Duration::from_secs(5), || async {
            recorded(&tag).await.len() == 2
        })
        .await
    );
    assert_eq!(
        recorded(&tag).await,
        vec!["child=REMOTE".to_owned(), "parent=REMOTE".to_owned()]
    );
    assert_eq!(runs(&tag).await, 1);
    executor.shutdown().await.unwrap();
}

/// Run by `a_task_submitted_in_another_process_…` as another process.
#[tokio::test]
#[ignore = "a helper process of another test"]
async fn child_submitter() {
    let (Ok(prefix), Ok(tag)) = (
        std::env::var("SMACHE_TASK_PREFIX"),
        std::env::var("SMACHE_TASK_TAG"),
    ) else {
        return;
    };
    let smache = without_executor(&prefix);
    let Submitted::Pending(task) = smache
        .scope(slow_upper::submit(tag.clone(), "remote".into()))
        .await
        .unwrap()
    else {
        panic!("a cold key must give a task");
    };
    task.on_complete("record", &(&tag, "child")).await.unwrap();
    println!("TASK {}", task.id());
}

#[tokio::test]
async fn callbacks_run_once_per_attachment_with_their_arguments() {
    let prefix = unique("task-cb");
    let tag = unique("task-cb-tag");
    let smache = with_executor(&prefix).await;
    let mut tasks = Vec::new();
    for caller in 0..4 {
        let Submitted::Pending(task) = smache
            .scope(slow_upper::submit(tag.clone(), "cb".into()))
            .await
            .unwrap()
        else {
            panic!("the value is computing: a task is pending");
        };
        // A failing and a panicking callback beside each recording one.
        task.on_complete("broken", &()).await.unwrap();
        task.on_complete("record", &(&tag, format!("caller{caller}")))
            .await
            .unwrap();
        task.on_complete("panicking", &()).await.unwrap();
        tasks.push(task);
    }
    for task in &tasks {
        assert_eq!(task.wait().await.unwrap(), "CB");
    }
    // Attached after the task finished: it runs at once, once.
    tasks[0]
        .on_complete("record", &(&tag, "late"))
        .await
        .unwrap();
    let expected: Vec<String> = ["caller0", "caller1", "caller2", "caller3", "late"]
        .iter()
        .map(|label| format!("{label}=CB"))
        .collect();
    assert!(
        smache_suite::eventually(Duration::from_secs(5), || async {
            recorded(&tag).await.len() >= expected.len()
        })
        .await
    );
    // Give any duplicate the time to show up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(recorded(&tag).await, expected);
    assert_eq!(runs(&tag).await, 1);
    // The failing and panicking callbacks are dead letters, with why.
    let report = smache.inspect_jobs().await.unwrap();
    assert_eq!(report.dead, 8, "{report}");
    let reasons: Vec<&str> = report
        .recent_dead
        .iter()
        .map(|letter| letter.reason.as_str())
        .collect();
    assert_eq!(
        reasons
            .iter()
            .filter(|r| **r == "the callback failed: this callback always fails")
            .count(),
        4,
        "{report}"
    );
    assert_eq!(
        reasons
            .iter()
            .filter(|r| r.starts_with("the callback panicked: this callback always panics"))
            .count(),
        4,
        "{report}"
    );
    smache.stop_executor().await.unwrap();
}

#[tokio::test]
async fn a_failure_reaches_every_waiter_and_callback_after_the_retries() {
    let prefix = unique("task-fail");
    let tag = unique("task-fail-tag");
    let smache = with_executor(&prefix).await;
    let mut tasks = Vec::new();
    for caller in 0..3 {
        let Submitted::Pending(task) = smache
            .scope(slow_upper::submit(tag.clone(), "fail-me".into()))
            .await
            .unwrap()
        else {
            panic!("an error is not cached: a task is pending");
        };
        task.on_complete("record", &(&tag, format!("caller{caller}")))
            .await
            .unwrap();
        tasks.push(task);
    }
    for task in &tasks {
        match task.wait().await {
            Err(Error::TaskFailed { task: id, message }) => {
                assert_eq!(id, task.id());
                assert_eq!(message, r#"cannot upper "fail-me" (run 3)"#);
            }
            other => panic!("expected the task's failure, got {other:?}"),
        }
    }
    assert_eq!(runs(&tag).await, 3, "Retry::new(3, …): three runs");
    assert!(matches!(
        smache.task::<String>(tasks[0].id()).await.unwrap(),
        TaskStatus::Failed(message) if message.contains("fail-me")
    ));
    assert!(
        smache_suite::eventually(Duration::from_secs(5), || async {
            recorded(&tag).await.len() == 3
        })
        .await
    );
    for (caller, line) in recorded(&tag).await.iter().enumerate() {
        assert_eq!(
            line,
            &format!(r#"caller{caller}=error:cannot upper "fail-me" (run 3)"#)
        );
    }
    // Not cached: a new submit is a new task.
    let Submitted::Pending(again) = smache
        .scope(slow_upper::submit(tag.clone(), "fail-me".into()))
        .await
        .unwrap()
    else {
        panic!("errors are not cached");
    };
    assert_ne!(again.id(), tasks[0].id());
    smache.stop_executor().await.unwrap();
}

#[tokio::test]
async fn a_flaky_function_succeeds_on_a_retry() {
    let prefix = unique("task-flaky");
    let tag = unique("task-flaky-tag");
    let smache = with_executor(&prefix).await;
    let value = smache
        .scope(slow_upper::submit(tag.clone(), "flaky2:x".into()))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(value, "FLAKY2:X");
    assert_eq!(runs(&tag).await, 3, "two failures, then a success");
    smache.stop_executor().await.unwrap();
}

#[tokio::test]
async fn a_panicking_function_fails_its_task_and_the_executor_survives() {
    let prefix = unique("task-panic");
    let smache = with_executor(&prefix).await;
    let task = match smache.scope(panics::submit("p".into())).await.unwrap() {
        Submitted::Pending(task) => task,
        Submitted::Ready(_) => panic!("nothing is cached"),
    };
    match task.wait().await {
        Err(Error::TaskFailed { message, .. }) => {
            assert!(message.contains("this function always panics"), "{message}");
        }
        other => panic!("expected the panic as the failure, got {other:?}"),
    }
    // The executor still works.
    let tag = unique("task-panic-tag");
    let value = smache
        .scope(slow_upper::submit(tag, "after".into()))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(value, "AFTER");
    smache.stop_executor().await.unwrap();
}

#[tokio::test]
async fn unknown_tasks_and_the_embedded_store_are_clear_errors() {
    let smache = without_executor(&unique("task-errors"));
    let missing = bson::oid::ObjectId::new().to_hex();
    assert!(matches!(
        smache.task::<String>(&missing).await,
        Err(Error::TaskNotFound(id)) if id == missing
    ));
    assert!(matches!(
        smache.on_complete(&missing, "record", &()).await,
        Err(Error::TaskNotFound(_))
    ));
    assert!(matches!(
        smache.on_complete(&missing, "bad\nname", &()).await,
        Err(Error::Config(_))
    ));
    let embedded = Smache::embedded();
    assert!(matches!(
        embedded
            .scope(slow_upper::submit("t".into(), "x".into()))
            .await,
        Err(Error::Config(message)) if message.contains("Redis")
    ));
}

#[tokio::test]
async fn a_task_whose_value_is_too_large_fails_with_that_reason() {
    let prefix = unique("task-large");
    let tag = unique("task-large-tag");
    let smache = builder(&prefix)
        .max_value_size(16)
        .run_executor()
        .build()
        .unwrap();
    let outcome = smache
        .scope(slow_upper::submit(
            tag.clone(),
            "a text longer than sixteen bytes".into(),
        ))
        .await
        .unwrap()
        .wait()
        .await;
    match outcome {
        Err(Error::TaskFailed { message, .. }) => {
            assert!(message.contains("max_value_size"), "{message}");
        }
        other => panic!("expected the size as the failure, got {other:?}"),
    }
    smache.stop_executor().await.unwrap();
}
