#[smache::computed(Raw, version = "2")]
fn f(x: u32) -> u32 {
    x
}

fn main() {
    f(1);
}
