#[smache::computed(Raw)]
fn sum((a, b): (u8, u8)) -> u8 {
    a + b
}

fn main() {}
