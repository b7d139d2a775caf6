#[smache::computed(Raw, name = "billing total!")]
fn f(x: u32) -> u32 {
    x
}

fn main() {
    f(1);
}
