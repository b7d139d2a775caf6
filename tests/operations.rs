//! Operable from the first hour: what the worker prints and logs, how
//! workers announce themselves, and what an application says when none
//! serves it.

use std::time::Duration;

use smache_suite::{mongodb_uri, unique, worker_binary, RedisServer, WorkerProcess};

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
