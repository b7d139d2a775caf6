//! How a function's return value maps to the value cached for it.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::Result;

/// How a function's return value maps to the cached value.
pub trait Mode<R> {
    /// The type that is stored.
    type Value: Serialize + DeserializeOwned;
    /// The part of a result to store, if any.
    fn cacheable(result: &R) -> Option<&Self::Value>;
    /// Rebuilds a result from a stored value.
    fn from_cached(value: Self::Value) -> R;
    /// Why a result is not cached, for the waiters of a submitted task and
    /// the executor's log: the error's message.
    fn failure(result: &R) -> Option<String>;
}

/// The cached value type of a mode, without [`Mode`]'s serde bounds: the
/// generated `submit` names its return type with it, so that a return type
/// that cannot be cached is reported once, by the call.
pub trait ValueType<R> {
    /// The type that is stored.
    type Value;
}

impl<T> ValueType<T> for Plain {
    type Value = T;
}

impl<T, E> ValueType<Result<T, E>> for OkOnly {
    type Value = T;
}

/// Every return value is cached.
#[derive(Debug)]
pub struct Plain;

impl<T: Serialize + DeserializeOwned> Mode<T> for Plain {
    type Value = T;
    fn cacheable(result: &T) -> Option<&T> {
        Some(result)
    }
    fn from_cached(value: T) -> T {
        value
    }
    fn failure(_: &T) -> Option<String> {
        None
    }
}

/// For functions returning `Result`: only `Ok` values are cached; the
/// message of an `Err` is what waiters on a submitted task are told.
#[derive(Debug)]
pub struct OkOnly;

impl<T: Serialize + DeserializeOwned, E: std::fmt::Display> Mode<Result<T, E>> for OkOnly {
    type Value = T;
    fn cacheable(result: &Result<T, E>) -> Option<&T> {
        result.as_ref().ok()
    }
    fn from_cached(value: T) -> Result<T, E> {
        Ok(value)
    }
    fn failure(result: &Result<T, E>) -> Option<String> {
        result.as_ref().err().map(ToString::to_string)
    }
}

/// Why `result` is not cached, if it is not: the function's error, or a
/// value that did not encode (`encoded` false).
pub(crate) fn failure<M: Mode<R>, R>(result: &R, encoded: bool) -> Option<String> {
    match M::failure(result) {
        Some(message) => Some(message),
        None if !encoded => Some("the value cannot be serialized".to_owned()),
        None => None,
    }
}
