//! Any bytes under a value key: decoding returns an error or a value,
//! never panics or allocates without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[derive(Debug, serde::Deserialize)]
#[allow(dead_code)]
struct Card {
    title: String,
    tags: Vec<String>,
    score: Option<f64>,
}

fuzz_target!(|bytes: &[u8]| {
    let _ = smache::__private::envelope_decode::<serde_json::Value>(bytes);
    let _ = smache::__private::envelope_decode::<Card>(bytes);
    let _ = smache::__private::envelope_decode::<(u64, String, Vec<u8>)>(bytes);
});
