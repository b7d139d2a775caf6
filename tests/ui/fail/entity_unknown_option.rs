#[derive(smache::Entity)]
#[entity(collection = "users", database = "app")]
struct User {
    id: String,
}

fn main() {}
