#[smache::computed(Raw, timeout = 5)]
fn f(x: u32) -> u32 {
    x
}

fn main() {}
