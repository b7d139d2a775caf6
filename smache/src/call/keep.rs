//! Hits that hand out a value kept decoded: a hit of the embedded store or
//! the in-process layer decodes the stored bytes once, keeps the value
//! beside them, and from then on hands out clones. For a type that is not
//! `Clone + Send + Sync + 'static`, every hit decodes, as before: no bound
//! is asked of users. Which of the two a function gets is settled in the
//! code `#[computed]` generates, where its value type is known, by
//! [autoref specialization]: `(&&KeepProbe::<V>::new()).keep()` finds
//! [`KeepClone`] when `V` allows it, else [`KeepDecode`].
//!
//! [autoref specialization]: https://github.com/dtolnay/case-studies/blob/master/autoref-specialization/README.md

use std::any::Any;
use std::marker::PhantomData;

use serde::de::DeserializeOwned;

use crate::envelope;

pub(crate) use crate::store::Decoded;

/// How hits of one function keep its value decoded: made only for value
/// types that are `Clone + Send + Sync + 'static`.
pub struct Keep<V> {
    clone: fn(&V) -> V,
    erase: fn(V) -> Box<dyn Any + Send + Sync>,
    view: fn(&(dyn Any + Send + Sync)) -> Option<&V>,
}

impl<V> std::fmt::Debug for Keep<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keep")
    }
}

/// The generated code's probe of a value type; see the module docs.
pub struct KeepProbe<V>(PhantomData<fn() -> V>);

impl<V> std::fmt::Debug for KeepProbe<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeepProbe")
    }
}

impl<V> KeepProbe<V> {
    /// The probe of `V`.
    #[must_use]
    pub const fn new() -> Self {
        KeepProbe(PhantomData)
    }
}

impl<V> Default for KeepProbe<V> {
    fn default() -> Self {
        Self::new()
    }
}

/// Picked for a value type that can be kept decoded.
pub trait KeepClone<V> {
    /// How to keep it.
    fn keep(&self) -> Option<Keep<V>>;
}

impl<V: Clone + Send + Sync + 'static> KeepClone<V> for &KeepProbe<V> {
    fn keep(&self) -> Option<Keep<V>> {
        Some(Keep {
            clone: V::clone,
            erase: |value| Box::new(value),
            view: |any| any.downcast_ref::<V>(),
        })
    }
}

/// Picked for any other value type: every hit decodes.
pub trait KeepDecode<V> {
    /// `None`: decode on every hit.
    fn keep(&self) -> Option<Keep<V>>;
}

impl<V> KeepDecode<V> for KeepProbe<V> {
    fn keep(&self) -> Option<Keep<V>> {
        None
    }
}

/// The value of a hit on the envelope `data`: a clone of the one kept in
/// `decoded` if there is one, else decoded (and kept, with `keep`).
/// `None` for bytes that do not decode.
pub(crate) fn serve<V: DeserializeOwned>(
    data: &[u8],
    decoded: &Decoded,
    keep: Option<&Keep<V>>,
) -> Option<V> {
    let Some(keep) = keep else {
        return envelope::decode(data).and_then(|env| env.value()).ok();
    };
    if let Some(value) = decoded.get().and_then(|any| (keep.view)(&**any)) {
        return Some((keep.clone)(value));
    }
    let value: V = envelope::decode(data).and_then(|env| env.value()).ok()?;
    // A racing hit may have kept its own: either is the same value.
    let _ = decoded.set((keep.erase)((keep.clone)(&value)));
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct NotClone(u32);

    // The borrows are the probe: which trait answers depends on them.
    #[allow(clippy::needless_borrow)]
    #[test]
    fn clone_types_are_kept_and_others_decoded() {
        #[allow(unused_imports)]
        use super::{KeepClone as _, KeepDecode as _};
        assert!((&&KeepProbe::<String>::new()).keep().is_some());
        assert!((&&KeepProbe::<NotClone>::new()).keep().is_none());
        assert!((&&KeepProbe::<std::rc::Rc<u8>>::new()).keep().is_none());
    }

    #[test]
    fn a_kept_value_is_served_without_decoding_again() {
        #[allow(unused_imports)]
        use super::{KeepClone as _, KeepDecode as _};
        let data = envelope::encode(&"hello".to_owned(), 1).unwrap();
        let decoded = Decoded::new();
        let keep = (&&KeepProbe::<String>::new()).keep();
        assert_eq!(
            serve::<String>(&data, &decoded, keep.as_ref()).as_deref(),
            Some("hello")
        );
        assert!(decoded.get().is_some());
        // Served from what was kept, whatever the bytes say now.
        assert_eq!(
            serve::<String>(b"junk", &decoded, keep.as_ref()).as_deref(),
            Some("hello")
        );
        // A type that is not kept decodes every time.
        let other = Decoded::new();
        assert_eq!(
            serve::<NotClone>(&envelope::encode(&NotClone(3), 1).unwrap(), &other, None),
            Some(NotClone(3))
        );
        assert!(other.get().is_none());
    }
}
