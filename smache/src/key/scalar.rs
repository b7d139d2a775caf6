//! The JSON form of a scalar argument written straight into a key: an
//! integer, a string, a bool, a char, or an `Option`, reference or `Box`
//! of one. Every call of a function with a `Raw` argument builds its key,
//! hits included, and serde_json's writer goes through `io::Write` (a
//! UTF-8 check per fragment, since this crate writes into a `String`
//! without `unsafe`).
//!
//! Which arguments take this path is decided by their type, in the
//! generated code ([`RawProbe`], autoref specialization as in
//! `call::keep`): only the types of [`KeyScalar`], whose `Serialize` is
//! serde's own and pure. Any other type is serialized once, by serde_json,
//! as before: a user's `Serialize` is never called twice. The output is
//! byte for byte serde_json's, so keys do not change
//! (`tests::scalars_are_written_as_serde_json_writes_them`).

use std::fmt;
use std::marker::PhantomData;

use serde::ser::{Impossible, Serialize, Serializer};

/// Types whose keys [`write`] writes: serde's own `Serialize` of a
/// scalar (pure, and written exactly as serde_json writes it).
pub trait KeyScalar: Serialize {}

macro_rules! key_scalars {
    ($($t:ty),*) => { $(impl KeyScalar for $t {})* };
}

key_scalars!(
    u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize, bool, char, str, String
);

impl<T: KeyScalar + ?Sized> KeyScalar for &T {}
impl<T: KeyScalar + ?Sized> KeyScalar for &mut T {}
impl<T: KeyScalar + ?Sized> KeyScalar for Box<T> {}
impl<T: KeyScalar> KeyScalar for Option<T> {}

/// The generated code's probe of a `Raw` argument's type:
/// `(&&RawProbe::<T>::new()).kind()` is [`AsScalar`] for a [`KeyScalar`],
/// else [`AsJson`].
pub struct RawProbe<T: ?Sized>(PhantomData<fn(&T)>);

impl<T: ?Sized> RawProbe<T> {
    /// The probe of `T`.
    #[must_use]
    pub const fn new() -> Self {
        RawProbe(PhantomData)
    }
}

impl<T: ?Sized> Default for RawProbe<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: ?Sized> fmt::Debug for RawProbe<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RawProbe")
    }
}

/// A `Raw` argument written by [`write`].
#[derive(Clone, Copy, Debug)]
pub struct AsScalar;

/// A `Raw` argument written by serde_json.
#[derive(Clone, Copy, Debug)]
pub struct AsJson;

/// Picked for a [`KeyScalar`].
pub trait RawScalar {
    /// Its kind.
    fn kind(&self) -> AsScalar;
}

impl<T: KeyScalar + ?Sized> RawScalar for &RawProbe<T> {
    fn kind(&self) -> AsScalar {
        AsScalar
    }
}

/// Picked for any other type (bounded by nothing, so that a type that is
/// not `Serialize` is reported by `KeyBuilder::raw_as`'s bound).
pub trait RawJson {
    /// Its kind.
    fn kind(&self) -> AsJson;
}

impl<T: ?Sized> RawJson for RawProbe<T> {
    fn kind(&self) -> AsJson {
        AsJson
    }
}

/// Appends the JSON form of `value` to `out` if it is a scalar; `Err`
/// (with `out` as it was) for anything else.
pub(super) fn write<T: Serialize + ?Sized>(out: &mut String, value: &T) -> Result<(), NotScalar> {
    let at = out.len();
    value
        .serialize(Scalar(out))
        .inspect_err(|_| out.truncate(at))
}

/// Appends the JSON form of `text`: quoted, with serde_json's escapes (of
/// `"`, `\` and the control characters below U+0020, the only ones it
/// escapes).
pub(crate) fn push_json(out: &mut String, text: &str) {
    if text.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.reserve(text.len() + 2);
        out.push('"');
        out.push_str(text);
        out.push('"');
    } else {
        out.push('"');
        for c in text.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if u32::from(c) < 0x20 => {
                    out.push_str("\\u00");
                    super::push_hex(out, &[u8::try_from(u32::from(c)).unwrap_or(0)]);
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

/// Not a scalar (or its `Serialize` failed): serde_json writes it.
#[derive(Debug)]
pub(super) struct NotScalar;

impl fmt::Display for NotScalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not a scalar")
    }
}

impl std::error::Error for NotScalar {}

impl serde::ser::Error for NotScalar {
    fn custom<T: fmt::Display>(_: T) -> Self {
        NotScalar
    }
}

struct Scalar<'a>(&'a mut String);

impl Scalar<'_> {
    fn int(self, text: &str) -> Result<(), NotScalar> {
        self.0.push_str(text);
        Ok(())
    }
}

type Never = Impossible<(), NotScalar>;

/// The `Serializer` methods of the integer types: itoa's digits, as
/// serde_json writes them.
macro_rules! integers {
    ($($method:ident: $t:ty),*) => {$(
        fn $method(self, v: $t) -> Result<(), NotScalar> {
            self.int(itoa::Buffer::new().format(v))
        }
    )*};
}

impl Serializer for Scalar<'_> {
    type Ok = ();
    type Error = NotScalar;
    type SerializeSeq = Never;
    type SerializeTuple = Never;
    type SerializeTupleStruct = Never;
    type SerializeTupleVariant = Never;
    type SerializeMap = Never;
    type SerializeStruct = Never;
    type SerializeStructVariant = Never;

    fn serialize_bool(self, v: bool) -> Result<(), NotScalar> {
        self.0.push_str(if v { "true" } else { "false" });
        Ok(())
    }

    integers!(
        serialize_i8: i8,
        serialize_i16: i16,
        serialize_i32: i32,
        serialize_i64: i64,
        serialize_i128: i128,
        serialize_u8: u8,
        serialize_u16: u16,
        serialize_u32: u32,
        serialize_u64: u64,
        serialize_u128: u128
    );

    // serde_json's float forms (ryu, `null` for non-finite) are its own.
    fn serialize_f32(self, _: f32) -> Result<(), NotScalar> {
        Err(NotScalar)
    }

    fn serialize_f64(self, _: f64) -> Result<(), NotScalar> {
        Err(NotScalar)
    }

    fn serialize_char(self, v: char) -> Result<(), NotScalar> {
        push_json(self.0, v.encode_utf8(&mut [0; 4]));
        Ok(())
    }

    fn serialize_str(self, v: &str) -> Result<(), NotScalar> {
        push_json(self.0, v);
        Ok(())
    }

    fn serialize_bytes(self, _: &[u8]) -> Result<(), NotScalar> {
        Err(NotScalar)
    }

    fn serialize_none(self) -> Result<(), NotScalar> {
        self.serialize_unit()
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), NotScalar> {
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result<(), NotScalar> {
        self.0.push_str("null");
        Ok(())
    }

    fn serialize_unit_struct(self, _: &'static str) -> Result<(), NotScalar> {
        self.serialize_unit()
    }

    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<(), NotScalar> {
        self.serialize_str(variant)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), NotScalar> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), NotScalar> {
        Err(NotScalar)
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<Never, NotScalar> {
        Err(NotScalar)
    }

    fn serialize_tuple(self, _: usize) -> Result<Never, NotScalar> {
        Err(NotScalar)
    }

    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Never, NotScalar> {
        Err(NotScalar)
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Never, NotScalar> {
        Err(NotScalar)
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Never, NotScalar> {
        Err(NotScalar)
    }

    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Never, NotScalar> {
        Err(NotScalar)
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Never, NotScalar> {
        Err(NotScalar)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Serialize;

    use super::*;

    fn ours<T: Serialize + ?Sized>(value: &T) -> Option<String> {
        let mut out = String::from("head:");
        match write(&mut out, value) {
            Ok(()) => Some(out["head:".len()..].to_owned()),
            Err(NotScalar) => {
                assert_eq!(out, "head:", "a refused value leaves nothing behind");
                None
            }
        }
    }

    fn same<T: Serialize + ?Sized>(value: &T) {
        let theirs = serde_json::to_string(value).unwrap();
        assert_eq!(ours(value).as_deref(), Some(theirs.as_str()), "{theirs}");
    }

    #[derive(Serialize)]
    struct Id(u64);

    #[derive(Serialize)]
    struct Marker;

    #[derive(Serialize)]
    enum Mode {
        Fast,
        #[allow(dead_code)]
        Tuned(u8),
    }

    #[test]
    fn scalars_are_written_as_serde_json_writes_them() {
        for n in [0, 1, -1, 42, i64::MIN, i64::MAX] {
            same(&n);
        }
        same(&u64::MAX);
        same(&u8::MAX);
        same(&i8::MIN);
        same(&i16::MIN);
        same(&u16::MAX);
        same(&i32::MIN);
        same(&u32::MAX);
        same(&i128::MIN);
        same(&u128::MAX);
        same(&usize::MAX);
        same(&true);
        same(&false);
        same(&());
        same(&Marker);
        same(&Id(7));
        same(&Mode::Fast);
        same(&None::<u32>);
        same(&Some(5u32));
        same(&Some(Some("x")));
        for c in ['a', '"', '\\', '\n', '\u{0}', '\u{1f}', '\u{7f}', 'é', '🦀'] {
            same(&c);
        }
        let mut every_byte = String::new();
        for c in (0u32..0x80).filter_map(char::from_u32) {
            every_byte.push(c);
        }
        for text in [
            "",
            "plain",
            "with \"quotes\"",
            "back\\slash",
            "tab\tnew\nline\rcr",
            "\u{8}\u{c}\u{1}\u{1b}",
            "ünïcödé 🦀 \u{2028}",
            every_byte.as_str(),
        ] {
            same(text);
            same(&text.to_owned());
        }
    }

    #[test]
    fn everything_else_is_left_to_serde_json() {
        assert_eq!(ours(&1.5f64), None);
        assert_eq!(ours(&f32::NAN), None);
        assert_eq!(ours(&[1, 2]), None);
        assert_eq!(ours(&vec!["a"]), None);
        assert_eq!(ours(&(1, 2)), None);
        assert_eq!(ours(&BTreeMap::from([("a", 1)])), None);
        assert_eq!(ours(&Mode::Tuned(1)), None);
        assert_eq!(ours(&Some(vec![1])), None);
        assert_eq!(ours(serde_bytes_like()), None);
    }

    /// A value that serializes as bytes (serde_json writes an array).
    fn serde_bytes_like() -> &'static Bytes {
        &Bytes
    }

    struct Bytes;

    impl Serialize for Bytes {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(b"ab")
        }
    }
}
