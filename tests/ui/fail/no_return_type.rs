#[smache::computed(Raw)]
fn log(x: u32) {
    println!("{x}");
}

fn main() {}
