//! Every form a `relations(...)` mapper may return: the target's id type,
//! an `Option` or a `Vec` of it, `EntityId`s, and for integer ids any
//! integer type; strings as `String` or `&str`.

use bson::oid::ObjectId;
use serde::{Deserialize, Serialize};
use smache::{computed, EntityId};

#[derive(Serialize, Deserialize, smache::Entity)]
#[entity(collection = "users")]
struct User {
    #[serde(rename = "_id")]
    id: ObjectId,
}

#[derive(Serialize, Deserialize, smache::Entity)]
#[entity(collection = "teams")]
struct Team {
    #[serde(rename = "_id")]
    id: i32,
}

#[derive(Serialize, Deserialize, smache::Entity)]
#[entity(collection = "tags")]
struct Tag {
    #[serde(rename = "_id")]
    id: String,
}

#[derive(Serialize, Deserialize, smache::Entity)]
#[entity(collection = "orders")]
struct Order {
    #[serde(rename = "_id")]
    id: ObjectId,
    user: ObjectId,
    reviewer: Option<ObjectId>,
    watchers: Vec<ObjectId>,
    team: i64,
    tag: String,
}

#[computed(User, relations(
    Order => |o: &Order| o.user,
    Order => |o: &Order| o.reviewer,
    Order => |o: &Order| o.watchers.clone(),
    Order => |o: &Order| EntityId::from(o.user),
))]
fn user_orders(user: &User) -> String {
    user.id.to_hex()
}

#[computed(Team, relations(Order => |o: &Order| o.team))]
fn team_orders(team: &Team) -> i32 {
    team.id
}

#[computed(Tag, relations(Order => |o: &Order| o.tag.clone()))]
fn tag_orders(tag: &Tag) -> usize {
    tag.id.len()
}

fn main() {
    let id = ObjectId::new();
    assert_eq!(user_orders(&User { id }), id.to_hex());
    assert_eq!(team_orders(&Team { id: 7 }), 7);
    assert_eq!(tag_orders(&Tag { id: "rust".into() }), 4);
}
