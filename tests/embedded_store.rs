//! The embedded store, the default when nothing is configured: the same
//! caching behaviour as Redis, in process memory.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use smache::{computed, Backend, Smache};
use smache_suite::{eventually, unique};

static SLOW_CALLS: AtomicUsize = AtomicUsize::new(0);
static FALLIBLE_CALLS: AtomicUsize = AtomicUsize::new(0);
static SYNC_CALLS: AtomicUsize = AtomicUsize::new(0);
static TTL_CALLS: AtomicUsize = AtomicUsize::new(0);

#[computed(Raw)]
async fn slow(x: u32) -> Vec<u32> {
    SLOW_CALLS.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(20)).await;
    vec![x; 3]
}

#[computed(Raw)]
async fn plain(x: u32) -> u32 {
    x
}

#[computed(Raw)]
async fn fallible(x: i32) -> Result<i32, std::num::TryFromIntError> {
    FALLIBLE_CALLS.fetch_add(1, Ordering::SeqCst);
    let small: u8 = u8::try_from(x)?;
    Ok(i32::from(small) * 2)
}

#[computed(Raw)]
fn sync_len(s: String) -> usize {
    SYNC_CALLS.fetch_add(1, Ordering::SeqCst);
    s.len()
}

#[computed(Raw, ttl_secs = 1)]
async fn fleeting(x: u8) -> u8 {
    TTL_CALLS.fetch_add(1, Ordering::SeqCst);
    x
}

fn embedded() -> Smache {
    Smache::builder().prefix(unique("emb")).build().unwrap()
}

#[tokio::test]
async fn caches_in_process_without_configuration() {
    let smache = embedded();
    assert_eq!(smache.backend(), Backend::Embedded);
    let before = SLOW_CALLS.load(Ordering::SeqCst);
    assert_eq!(smache.scope(slow(7)).await, vec![7, 7, 7]);
    assert_eq!(smache.scope(slow(7)).await, vec![7, 7, 7]);
    assert_eq!(SLOW_CALLS.load(Ordering::SeqCst) - before, 1);
    assert!(smache.is_fresh(&slow::key(7).unwrap()).await.unwrap());

    // Another embedded instance is another store.
    let other = embedded();
    assert!(!other.is_fresh(&slow::key(7).unwrap()).await.unwrap());
}

#[tokio::test]
async fn invalidate_and_entry_versions() {
    let smache = embedded();
    smache.scope(plain(1)).await;
    let key = plain::key(1).unwrap();
    let entry = smache.entry(&key).await.unwrap().expect("stored");
    assert_eq!(entry.version(), 1);
    assert!(smache.invalidate(&key).await.unwrap());
    assert!(smache.entry(&key).await.unwrap().is_none());
    assert!(!smache.invalidate(&key).await.unwrap());
}

#[tokio::test]
async fn only_ok_results_are_cached() {
    let smache = embedded();
    let before = FALLIBLE_CALLS.load(Ordering::SeqCst);
    assert!(smache.scope(fallible(-1)).await.is_err());
    assert!(smache.scope(fallible(-1)).await.is_err());
    assert_eq!(smache.scope(fallible(4)).await.unwrap(), 8);
    assert_eq!(smache.scope(fallible(4)).await.unwrap(), 8);
    assert_eq!(FALLIBLE_CALLS.load(Ordering::SeqCst) - before, 3);
}

#[test]
fn sync_functions_cache_too() {
    let smache = embedded();
    let before = SYNC_CALLS.load(Ordering::SeqCst);
    let owned = String::from("hello");
    assert_eq!(smache.scope_sync(|| sync_len(owned.clone())), 5);
    assert_eq!(smache.scope_sync(|| sync_len(owned)), 5);
    assert_eq!(SYNC_CALLS.load(Ordering::SeqCst) - before, 1);
}

#[tokio::test]
async fn values_expire() {
    let smache = embedded();
    let before = TTL_CALLS.load(Ordering::SeqCst);
    smache.scope(fleeting(3)).await;
    let expired = eventually(Duration::from_secs(5), || {
        let smache = smache.clone();
        async move { !smache.is_fresh(&fleeting::key(3).unwrap()).await.unwrap() }
    })
    .await;
    assert!(expired);
    smache.scope(fleeting(3)).await;
    assert_eq!(TTL_CALLS.load(Ordering::SeqCst) - before, 2);
}
