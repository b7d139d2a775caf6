#[smache::computed(Raw, store = "mongo")]
fn quoted(x: u32) -> u32 {
    x
}

#[smache::computed(Raw, store = postgres)]
fn unknown(x: u32) -> u32 {
    x
}

fn main() {}
