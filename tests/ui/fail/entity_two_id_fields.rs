#[derive(smache::Entity)]
#[entity(collection = "users")]
struct User {
    #[entity(id)]
    email: String,
    #[entity(id)]
    login: String,
}

fn main() {}
