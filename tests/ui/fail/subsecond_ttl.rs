#[smache::computed(Raw, ttl = "1500ms")]
fn f(x: u32) -> u32 {
    x
}

fn main() {
    f(1);
}
