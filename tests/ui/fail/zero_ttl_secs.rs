#[smache::computed(Raw, ttl_secs = 0)]
fn f(x: u32) -> u32 {
    x
}

fn main() {
    f(1);
}
