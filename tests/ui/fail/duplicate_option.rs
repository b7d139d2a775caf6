#[smache::computed(Raw, version = 1, version = 2)]
fn f(x: u32) -> u32 {
    x
}

fn main() {
    f(1);
}
