//! Synchronous functions with `Raw` arguments: by value, borrowed, with
//! named lifetimes and `mut` bindings; called without any async runtime.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use smache::computed;

static CALLS: AtomicUsize = AtomicUsize::new(0);

#[computed(Raw, Raw)]
fn add(a: i32, b: i32) -> i32 {
    CALLS.fetch_add(1, Ordering::SeqCst);
    a + b
}

#[computed(Raw, Raw)]
fn label<'a, 'b>(prefix: &'a str, values: &'b [u8]) -> String {
    format!("{prefix}{values:?}")
}

#[computed(Raw)]
fn elided(text: &str) -> usize {
    text.len()
}

#[computed(Raw, Raw)]
fn bump(mut n: u64, mut by: Vec<u64>) -> u64 {
    by.push(1);
    n += by.iter().sum::<u64>();
    n
}

#[computed(Raw)]
fn total(map: &BTreeMap<String, u32>) -> u32 {
    map.values().sum()
}

#[computed()]
fn constant() -> Vec<String> {
    vec!["x".to_owned()]
}

fn main() {
    smache::Smache::embedded().install().unwrap();

    assert_eq!(add(1, 2), 3);
    assert_eq!(add(1, 2), 3);
    assert_eq!(CALLS.load(Ordering::SeqCst), 1, "the second call is cached");
    assert_eq!(add(2, 1), 3);
    assert_eq!(CALLS.load(Ordering::SeqCst), 2, "other arguments, other key");

    assert_eq!(label("v", &[1, 2]), "v[1, 2]");
    assert_eq!(elided("four"), 4);
    assert_eq!(bump(1, vec![2, 3]), 7);
    let map = BTreeMap::from([("a".to_owned(), 1), ("b".to_owned(), 2)]);
    assert_eq!(total(&map), 3);
    assert_eq!(constant(), ["x"]);

    assert_eq!(add::key(1, 2).unwrap().args(), "1:2");
    assert_eq!(label::key("v", &[1]).unwrap().args(), r#""v":[1]"#);
}
