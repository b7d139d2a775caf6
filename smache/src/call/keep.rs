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

use std::marker::PhantomData;

use serde::de::DeserializeOwned;

use crate::envelope;

pub(crate) use crate::store::Decoded;

/// How hits of one function hand out its value: [`KeepCloned`] or
/// [`DecodeEach`], picked by the generated code. A type per policy, so
/// that a hit's path is resolved at compile time (no call through a
/// function pointer).
pub trait Keep<V>: Copy {
    /// A clone of the value kept in `decoded`, if there is one.
    fn kept(self, decoded: &Decoded) -> Option<V>;

    /// Keeps a clone of `value` in `decoded`, if this policy keeps values.
    fn keep(self, decoded: &Decoded, value: &V);
}

/// Keeps the decoded value beside the stored bytes and hands out clones:
/// for value types that are `Clone + Send + Sync + 'static`.
pub struct KeepCloned<V>(PhantomData<fn() -> V>);

/// Decodes the stored bytes on every hit: for any other value type.
pub struct DecodeEach<V>(PhantomData<fn() -> V>);

// Not derived: the derives would bound `V`.
impl<V> Clone for KeepCloned<V> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<V> Copy for KeepCloned<V> {}

impl<V> Clone for DecodeEach<V> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<V> Copy for DecodeEach<V> {}

impl<V> std::fmt::Debug for KeepCloned<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeepCloned")
    }
}

impl<V> std::fmt::Debug for DecodeEach<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DecodeEach")
    }
}

impl<V: Clone + Send + Sync + 'static> Keep<V> for KeepCloned<V> {
    #[inline]
    fn kept(self, decoded: &Decoded) -> Option<V> {
        decoded.get()?.downcast_ref::<V>().cloned()
    }

    fn keep(self, decoded: &Decoded, value: &V) {
        // A racing hit may have kept its own: either is the same value.
        let _ = decoded.set(Box::new(value.clone()));
    }
}

impl<V> Keep<V> for DecodeEach<V> {
    #[inline]
    fn kept(self, _: &Decoded) -> Option<V> {
        None
    }

    #[inline]
    fn keep(self, _: &Decoded, _: &V) {}
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
    fn keep(&self) -> KeepCloned<V>;
}

impl<V: Clone + Send + Sync + 'static> KeepClone<V> for &KeepProbe<V> {
    fn keep(&self) -> KeepCloned<V> {
        KeepCloned(PhantomData)
    }
}

/// Picked for any other value type: every hit decodes.
pub trait KeepDecode<V> {
    /// Decode on every hit.
    fn keep(&self) -> DecodeEach<V>;
}

impl<V> KeepDecode<V> for KeepProbe<V> {
    fn keep(&self) -> DecodeEach<V> {
        DecodeEach(PhantomData)
    }
}

/// The value of a hit on the envelope `data`: a clone of the one kept in
/// `decoded` if there is one, else decoded (and kept, if `keep` keeps
/// values). `None` for bytes that do not decode.
#[inline]
pub(crate) fn serve<V: DeserializeOwned>(
    data: &[u8],
    decoded: &Decoded,
    keep: impl Keep<V>,
) -> Option<V> {
    if let Some(value) = keep.kept(decoded) {
        return Some(value);
    }
    let value: V = envelope::decode(data).and_then(|env| env.value()).ok()?;
    keep.keep(decoded, &value);
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
        let kept = Decoded::new();
        let _ = kept.set(Box::new("kept".to_owned()));
        assert_eq!(
            (&&KeepProbe::<String>::new()).keep().kept(&kept).as_deref(),
            Some("kept"),
            "a String is kept"
        );
        let _: DecodeEach<NotClone> = (&&KeepProbe::<NotClone>::new()).keep();
        let _: DecodeEach<std::rc::Rc<u8>> = (&&KeepProbe::<std::rc::Rc<u8>>::new()).keep();
    }

    // As above: the borrows are the probe.
    #[allow(clippy::needless_borrow)]
    #[test]
    fn a_kept_value_is_served_without_decoding_again() {
        #[allow(unused_imports)]
        use super::{KeepClone as _, KeepDecode as _};
        let data = envelope::encode(&"hello".to_owned(), 1).unwrap();
        let decoded = Decoded::new();
        let keep = (&&KeepProbe::<String>::new()).keep();
        assert_eq!(
            serve::<String>(&data, &decoded, keep).as_deref(),
            Some("hello")
        );
        assert!(decoded.get().is_some());
        // Served from what was kept, whatever the bytes say now.
        assert_eq!(
            serve::<String>(b"junk", &decoded, keep).as_deref(),
            Some("hello")
        );
        // A type that is not kept decodes every time.
        let other = Decoded::new();
        let each = (&&KeepProbe::<NotClone>::new()).keep();
        let bytes = envelope::encode(&NotClone(3), 1).unwrap();
        assert_eq!(serve::<NotClone>(&bytes, &other, each), Some(NotClone(3)));
        assert!(other.get().is_none());
        assert_eq!(serve::<NotClone>(b"junk", &other, each), None);
    }
}
