//! Functions returning `Result` (or an alias of it), using `?` and `return`:
//! only `Ok` values are cached.

use std::num::ParseIntError;
use std::sync::atomic::{AtomicUsize, Ordering};

use smache::computed;

static CALLS: AtomicUsize = AtomicUsize::new(0);

#[computed(Raw)]
async fn parse(text: String) -> Result<i64, ParseIntError> {
    CALLS.fetch_add(1, Ordering::SeqCst);
    if text.is_empty() {
        return Ok(0);
    }
    let n: i64 = text.trim().parse()?;
    Ok(n * 2)
}

type Res<T> = std::result::Result<T, String>;

#[computed(Raw)]
fn checked_half(n: u32) -> Res<u32> {
    if n % 2 == 1 {
        return Err(format!("{n} is odd"));
    }
    let half = n.checked_div(2).ok_or("unreachable")?;
    Ok(half)
}

#[computed(Raw)]
fn io_len(path: &str) -> std::io::Result<u64> {
    if path.is_empty() {
        return Err(std::io::Error::other("empty path"));
    }
    Ok(path.len() as u64)
}

#[computed(Raw)]
async fn early(n: u8) -> Option<u8> {
    let n = n.checked_sub(1)?;
    if n == 0 {
        return None;
    }
    Some(n)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    smache::Smache::embedded().install().unwrap();

    assert_eq!(parse("21".into()).await, Ok(42));
    assert_eq!(parse("21".into()).await, Ok(42));
    assert_eq!(CALLS.load(Ordering::SeqCst), 1, "Ok values are cached");

    assert!(parse("x".into()).await.is_err());
    assert!(parse("x".into()).await.is_err());
    assert_eq!(CALLS.load(Ordering::SeqCst), 3, "Err values are not cached");
    assert!(!parse::is_fresh("x".into()).await.unwrap());
    assert_eq!(parse(String::new()).await, Ok(0));

    assert_eq!(checked_half(4), Ok(2));
    assert_eq!(checked_half(3), Err("3 is odd".to_owned()));
    assert_eq!(io_len("abc").unwrap(), 3);
    assert!(io_len("").is_err());
    assert_eq!(early(0).await, None);
    assert_eq!(early(1).await, None);
    assert_eq!(early(5).await, Some(4));
}
