#[derive(smache::Entity)]
struct User {
    id: String,
}

fn main() {}
