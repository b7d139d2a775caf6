use bson::oid::ObjectId;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, smache::Entity)]
#[entity(collection = "users")]
struct User {
    #[serde(rename = "_id")]
    id: ObjectId,
}

#[derive(Serialize, Deserialize, smache::Entity)]
#[entity(collection = "orders")]
struct Order {
    #[serde(rename = "_id")]
    id: ObjectId,
    // The user's id kept as a hex string: a mapper returning it would
    // never match a value keyed by the user's ObjectId.
    user: String,
}

#[smache::computed(User, relations(Order => |o: &Order| o.user.clone()))]
fn orders_of(user: &User) -> usize {
    user.id.bytes().len()
}

fn main() {}
