//! The store's Lua scripts, each call kept off a slot that is moving.
//!
//! A script touches keys it does not declare: it builds the graph's keys
//! from the base it is given. While a Redis Cluster slot moves between
//! masters, Redis checks only the declared keys. The migrating master runs
//! a script whose declared keys it still holds, and stops it with an error
//! at the first undeclared key it no longer holds, after its earlier
//! writes. The importing master runs a script let in by `ASKING` and
//! checks nothing else: the script reads keys still on the migrating
//! master as missing, and creates them anew. The move then stops on
//! `BUSYKEY`, and whichever copy is kept, the other's writes are lost: a
//! reverse edge, and with it a refresh.
//!
//! So every call declares, after the script's own keys, a key of the same
//! slot that is never written ([`keys::unwritten`], which the breaker's
//! probe reads too). While the slot is stable, Redis checks nothing and
//! the key costs a few bytes. While it moves:
//! - the migrating master answers `TRYAGAIN` (some declared keys there,
//!   not all) or `ASK` (none);
//! - the importing master answers `TRYAGAIN` (several keys, not all
//!   there).
//!
//! The script runs nowhere until the move ends. The client retries a few
//! times, then the error opens the breaker (see `Error::is_unreachable`):
//! callers compute directly and background work waits, as for a failover.
//! A slot left half moved (an interrupted `redis-cli --cluster reshard`)
//! keeps its shard's scripts off until `redis-cli --cluster fix` closes
//! the move.

use redis::{FromRedisValue, Script, ScriptInvocation, ToRedisArgs};

use super::keys;

/// A Lua script of the store, whose calls declare the never-written key of
/// their first key's slot (see the module doc).
pub(crate) struct StoreScript(Script);

impl StoreScript {
    pub(crate) fn new(code: &str) -> Self {
        StoreScript(Script::new(code))
    }

    /// A call of the script with `key` as `KEYS[1]`; its slot is the
    /// call's. Every key added after it must be of the same slot.
    pub(crate) fn key(&self, key: impl AsRef<str>) -> Invocation<'_> {
        let key = key.as_ref();
        let unwritten = keys::base_of_key(key).map(keys::unwritten);
        let mut call = self.0.prepare_invoke();
        call.key(key);
        Invocation { call, unwritten }
    }
}

/// A call being built: keys and arguments, then
/// [`invoke_async`](Self::invoke_async).
pub(crate) struct Invocation<'a> {
    call: ScriptInvocation<'a>,
    /// The never-written key, declared last, when the call is made (none
    /// for a first key without a hash tag, which no store key lacks).
    unwritten: Option<String>,
}

impl Invocation<'_> {
    /// Adds a key (`KEYS[i]`), of the first key's slot.
    pub(crate) fn key<T: ToRedisArgs>(&mut self, key: T) -> &mut Self {
        self.call.key(key);
        self
    }

    /// Adds an argument (`ARGV[i]`).
    pub(crate) fn arg<T: ToRedisArgs>(&mut self, arg: T) -> &mut Self {
        self.call.arg(arg);
        self
    }

    /// Runs the script (loading it first where the server lacks it).
    pub(crate) async fn invoke_async<T: FromRedisValue>(
        mut self,
        conn: &mut impl redis::aio::ConnectionLike,
    ) -> redis::RedisResult<T> {
        self.declare_unwritten();
        self.call.invoke_async(conn).await
    }

    /// Adds the call to `pipe` (an `EVALSHA`: where the server lacks the
    /// script, its reply is a `NOSCRIPT` error, and
    /// [`invoke_async`](Self::invoke_async) then loads it).
    pub(crate) fn pipe_into(&mut self, pipe: &mut redis::Pipeline) {
        self.declare_unwritten();
        pipe.invoke_script(&self.call);
    }

    /// Declares the never-written key, once, after every other key.
    fn declare_unwritten(&mut self) {
        if let Some(unwritten) = self.unwritten.take() {
            self.call.key(unwritten);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_declares_the_never_written_key_of_its_slot_last() {
        let script = StoreScript::new("return #KEYS");
        let mut call = script.key("{app#48:k7}:v:card#1:o:1");
        call.key("{app#48:k7}:al:card#1:o:1").arg("x");
        assert_eq!(call.unwritten.as_deref(), Some("{app#48:k7}:probe:a"));
        let untagged = script.key("plain");
        assert_eq!(untagged.unwritten, None);
    }
}
