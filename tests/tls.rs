//! Redis over TLS: a `redis-server` of the test's own with a certificate
//! signed by a test authority, reached through `SmacheBuilder::redis_client`
//! (certificates verified), and a `rediss://` URL whose public roots do not
//! trust the server (the caller computes directly, no error, no panic).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use smache::{computed, Smache, Submitted};
use smache_suite::{free_port, unique};

/// Runs of `shout` per text (the tests run concurrently).
static RUNS: Mutex<Option<HashMap<String, usize>>> = Mutex::new(None);

fn runs(text: &str) -> usize {
    RUNS.lock()
        .unwrap()
        .as_ref()
        .and_then(|runs| runs.get(text).copied())
        .unwrap_or(0)
}

#[computed(Raw)]
async fn shout(text: String) -> String {
    *RUNS
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .entry(text.clone())
        .or_default() += 1;
    text.to_uppercase()
}

/// A TLS-only redis-server and the PEM of the authority that signed it.
struct TlsRedis {
    port: u16,
    ca: Vec<u8>,
    dir: PathBuf,
    child: Child,
}

impl TlsRedis {
    fn start() -> TlsRedis {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "smache test authority");
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&server_key, &ca, &ca_key)
            .unwrap();

        let dir = std::env::temp_dir().join(unique("smache-tls"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("server.pem"), server.pem()).unwrap();
        std::fs::write(dir.join("server.key"), server_key.serialize_pem()).unwrap();
        let port = free_port();
        let binary =
            std::env::var("SMACHE_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let child = Command::new(&binary)
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--tls-cert-file")
            .arg(dir.join("server.pem"))
            .arg("--tls-key-file")
            .arg(dir.join("server.key"))
            .arg("--tls-ca-cert-file")
            .arg(dir.join("ca.pem"))
            .args(["--tls-auth-clients", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {binary}: {err}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server (TLS) did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        TlsRedis {
            port,
            ca: ca.pem().into_bytes(),
            dir,
            child,
        }
    }

    fn url(&self) -> String {
        format!("rediss://localhost:{}/", self.port)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_tasks_and_executors_work_over_verified_tls() {
    let redis = TlsRedis::start();
    let client = redis::Client::build_with_tls(
        redis.url(),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(redis.ca.clone()),
        },
    )
    .unwrap();
    let smache = Smache::builder()
        .redis_client(client)
        .prefix(unique("tls"))
        .run_executor()
        .build()
        .unwrap();
    let text = unique("over tls");
    assert_eq!(smache.scope(shout(text.clone())).await, text.to_uppercase());
    assert_eq!(smache.scope(shout(text.clone())).await, text.to_uppercase());
    assert_eq!(runs(&text), 1, "the second call is a hit");
    assert!(smache
        .is_fresh(&shout::key(text.clone()).unwrap())
        .await
        .unwrap());

    // A task: its executor reads jobs on a TLS connection of its own.
    let other = unique("task over tls");
    let Submitted::Pending(task) = smache.scope(shout::submit(other.clone())).await.unwrap() else {
        panic!("a cold key gives a task");
    };
    let value = tokio::time::timeout(Duration::from_secs(10), task.wait())
        .await
        .expect("the executor finished the task")
        .unwrap();
    assert_eq!(value, other.to_uppercase());
    smache.stop_executor().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_the_client_does_not_trust_degrades_to_computing() {
    let redis = TlsRedis::start();
    // The public roots do not include the test authority: every call
    // computes directly, with no error to the caller.
    let untrusting = Smache::builder()
        .redis_url(redis.url())
        .prefix(unique("tls"))
        .build()
        .unwrap();
    let text = unique("untrusted");
    assert_eq!(
        untrusting.scope(shout(text.clone())).await,
        text.to_uppercase()
    );
    assert_eq!(
        untrusting.scope(shout(text.clone())).await,
        text.to_uppercase()
    );
    assert_eq!(runs(&text), 2, "nothing cached");
    // The explicit API reports the store as unreachable (the connection
    // manager retries the refused handshake until the operation timeout).
    assert!(untrusting
        .is_fresh(&shout::key(text.clone()).unwrap())
        .await
        .is_err());
}
