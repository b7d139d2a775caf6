//! Async functions with entity arguments: ObjectId, string and integer ids,
//! `#[entity(id)]`, and entities passed by reference, by value, in a `Box`
//! or an `Arc`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bson::oid::ObjectId;
use serde::{Deserialize, Serialize};
use smache::{computed, Entity, EntityId};

#[derive(Serialize, Deserialize, smache::Entity)]
#[entity(collection = "users")]
struct User {
    #[serde(rename = "_id")]
    id: ObjectId,
    name: String,
}

/// A string id in a field named `_id`.
#[derive(Serialize, Deserialize, Entity)]
#[entity(collection = "accounts")]
struct Account {
    _id: String,
    owner: String,
}

/// An integer id in a field named `id`.
#[derive(Serialize, Deserialize, Entity)]
#[entity(collection = "invoices")]
struct Invoice {
    id: i64,
    cents: u64,
}

/// An id field with another name, marked `#[entity(id)]`.
#[derive(Serialize, Deserialize, Entity)]
#[entity(collection = "orders", crate = ::smache)]
struct Order {
    #[entity(id)]
    #[serde(rename = "_id")]
    number: u32,
    items: Vec<String>,
}

static CALLS: AtomicUsize = AtomicUsize::new(0);

#[computed(User, Raw)]
async fn greet(user: &User, greeting: &str) -> String {
    CALLS.fetch_add(1, Ordering::SeqCst);
    format!("{greeting}, {}", user.name)
}

/// Named lifetimes: the generated wrapper's future captures them.
#[computed(User, Raw)]
async fn titled<'a, 'b>(user: &'a User, title: &'b str) -> String {
    format!("{title} {}", user.name)
}

#[computed(Account, Invoice)]
async fn billed(account: Account, invoice: &Invoice) -> String {
    format!("{}: {}", account.owner, invoice.cents)
}

#[computed(User, Order)]
async fn boxed(user: Box<User>, order: Arc<Order>) -> usize {
    user.name.len() + order.items.len()
}

#[computed(Order, Raw)]
fn sync_order(order: &mut Order, extra: u8) -> usize {
    order.items.push("extra".into());
    order.items.len() + usize::from(extra)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    smache::Smache::embedded().install().unwrap();

    let ada = User { id: ObjectId::new(), name: "Ada".into() };
    assert_eq!(greet(&ada, "Hello").await, "Hello, Ada");
    assert_eq!(greet(&ada, "Hello").await, "Hello, Ada");
    assert_eq!(CALLS.load(Ordering::SeqCst), 1, "the second call is cached");
    assert!(greet::is_fresh(&ada, "Hello").await.unwrap());
    assert!(greet::invalidate(&ada, "Hello").await.unwrap());
    assert!(!greet::is_fresh(&ada, "Hello").await.unwrap());
    assert_eq!(
        greet::key(&ada, "Hello").unwrap().args(),
        format!(r#"o:{}:"Hello""#, ada.id.to_hex())
    );

    let title = String::from("Dr.");
    assert_eq!(titled(&ada, &title).await, "Dr. Ada");
    assert_eq!(titled(&ada, &title).await, "Dr. Ada");

    let account = Account { _id: "acc-1".into(), owner: "Bob".into() };
    let invoice = Invoice { id: 42, cents: 990 };
    assert_eq!(account.id(), EntityId::String("acc-1".into()));
    assert_eq!(invoice.id(), EntityId::Int(42));
    assert_eq!(Account::COLLECTION, "accounts");
    assert_eq!(billed::key(account.clone_ref(), &invoice).unwrap().args(), r#"s:"acc-1":i:42"#);
    assert_eq!(billed(account, &invoice).await, "Bob: 990");

    let mut order = Order { number: 7, items: vec!["a".into()] };
    assert_eq!(order.id(), EntityId::Int(7));
    assert_eq!(boxed(Box::new(ada), Arc::new(Order { number: 7, items: vec![] })).await, 3);
    assert_eq!(sync_order(&mut order, 1), 3);
    assert_eq!(sync_order(&mut order, 1), 3, "cached: the body did not run again");
    assert_eq!(order.items.len(), 2);
}

impl Account {
    fn clone_ref(&self) -> Account {
        Account { _id: self._id.clone(), owner: self.owner.clone() }
    }
}
