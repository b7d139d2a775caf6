#[smache::computed(Raw, ttl = "5m", ttl_secs = 300)]
fn f(x: u32) -> u32 {
    x
}

fn main() {
    f(1);
}
