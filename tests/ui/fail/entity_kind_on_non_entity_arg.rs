use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, smache::Entity)]
#[entity(collection = "users")]
struct User {
    id: String,
}

#[smache::computed(User)]
fn name_len(user: String) -> usize {
    user.len()
}

fn main() {
    name_len(String::new());
}
