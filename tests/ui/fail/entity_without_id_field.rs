#[derive(smache::Entity)]
#[entity(collection = "users")]
struct User {
    name: String,
}

fn main() {}
