#[smache::computed(Raw)]
fn describe(value: u32) -> impl serde::Serialize {
    value
}

fn main() {}
