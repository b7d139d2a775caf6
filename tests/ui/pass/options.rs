//! Every option of the attribute, and `pub` functions whose generated module
//! is used from elsewhere.

use std::time::Duration;

use smache::{computed, ArgKind};

mod billing {
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, smache::Entity)]
    #[entity(collection = "customers")]
    pub struct Customer {
        pub id: String,
    }

    #[smache::computed(Customer, Raw, ttl = "5m", name = "billing.total", version = 3)]
    pub async fn total(customer: &Customer, month: u8) -> u64 {
        customer.id.len() as u64 + u64::from(month)
    }

    #[smache::computed(Raw)]
    pub fn unnamed(x: u8) -> u8 {
        x
    }
}

/// A crate that re-exports smache uses `crate = …`.
mod reexport {
    pub use smache as cache;
}

#[computed(Raw, ttl_secs = 90, crate = crate::reexport::cache)]
fn via_reexport(x: u32) -> u32 {
    x + 1
}

#[computed(Raw, ttl = "1h 30m", crate = ::smache)]
fn long_lived(x: u32) -> u32 {
    x
}

#[computed(Raw, name = "a-b_c.d:e/f", version = 0)]
fn odd_name(x: bool) -> bool {
    !x
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    smache::Smache::embedded().install().unwrap();

    let spec = &billing::total::SPEC;
    assert_eq!(spec.name(), "billing.total");
    assert_eq!(spec.version(), 3);
    assert_eq!(spec.ttl(), Some(Duration::from_secs(300)));
    assert_eq!(spec.arg_kinds(), &[ArgKind::Entity { collection: "customers" }, ArgKind::Raw]);

    let customer = billing::Customer { id: "c1".into() };
    let key = billing::total::key(&customer, 4).unwrap();
    assert_eq!(key.to_string(), r#"billing.total#3:s:"c1":4"#);
    assert_eq!(billing::total(&customer, 4).await, 6);
    assert!(billing::total::is_fresh(&customer, 4).await.unwrap());
    assert!(billing::total::invalidate(&customer, 4).await.unwrap());

    // Without `name`, the function's path (trybuild names the crate itself).
    assert!(billing::unnamed::SPEC.name().ends_with("::billing::unnamed"));
    assert_eq!(billing::unnamed::SPEC.ttl(), None);
    assert_eq!(billing::unnamed::SPEC.version(), 1);
    assert_eq!(billing::unnamed(3), 3);

    assert_eq!(via_reexport::SPEC.ttl(), Some(Duration::from_secs(90)));
    assert_eq!(via_reexport(1), 2);
    assert_eq!(long_lived::SPEC.ttl(), Some(Duration::from_secs(5400)));
    assert_eq!(long_lived(1), 1);
    assert_eq!(odd_name::key(true).unwrap().to_string(), "a-b_c.d:e/f#0:true");
    assert!(!odd_name(true));
}
