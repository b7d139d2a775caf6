//! Any value id in a job (the stream is writable by anyone with Redis
//! access): decoding returns an error, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let _ = smache::__private::decode_job(text);
});
