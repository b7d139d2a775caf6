//! The shards of an instance's keys: how values, their edges, tasks and
//! jobs spread over a Redis Cluster's slots (#16).
//!
//! An instance has `count` shards. Shard `i` is a hash tag of its own,
//! `{prefix#<n>}` (`#` is never in a prefix, so no shard of one instance
//! is a tag of another), whose Redis Cluster slot lies in the `i`-th of
//! `count` equal bands of the 16384 slots: the shards are evenly spaced
//! over the slots, so each master holds the shards of the slots it serves
//! (with `redis-cli --cluster create`'s even split and 48 shards, 16 on
//! each of 3 masters). One shard, the layout on one server, is the tag
//! `{prefix}` itself: the keys of before shards existed.
//!
//! A value belongs to shard [`Shards::of`] its id: a stable hash (FNV-1a,
//! 64 bits) of the id, modulo the count, never to change for a given id
//! and count, since every process of an instance must agree on it.

/// The number of Redis Cluster hash slots.
pub(crate) const SLOTS: u16 = 16384;

/// An instance's shards and their key bases.
#[derive(Debug, Clone)]
pub(crate) struct Shards {
    /// `{prefix#<n>}:` (or `{prefix}:` for one shard), by shard.
    bases: Vec<String>,
}

impl Shards {
    /// `count` shards (at least one) of `prefix`.
    pub(crate) fn new(prefix: &str, count: usize) -> Self {
        let count = count.clamp(1, usize::from(SLOTS));
        if count == 1 {
            return Shards {
                bases: vec![format!("{{{prefix}}}:")],
            };
        }
        let band = |slot: u16| usize::from(slot) * count / usize::from(SLOTS);
        let mut tags: Vec<Option<String>> = vec![None; count];
        let mut missing = count;
        // The first suffix whose slot falls in each band: about `count`
        // tries per band, so a few thousand CRCs for 48 shards.
        for n in 0_u64.. {
            let tag = format!("{prefix}#{n}");
            let at = band(slot(tag.as_bytes()));
            if tags[at].is_none() {
                tags[at] = Some(tag);
                missing -= 1;
                if missing == 0 {
                    break;
                }
            }
        }
        Shards {
            bases: tags
                .into_iter()
                .map(|tag| format!("{{{}}}:", tag.unwrap_or_default()))
                .collect(),
        }
    }

    /// How many shards.
    pub(crate) fn count(&self) -> usize {
        self.bases.len()
    }

    /// The shard of value `id`.
    pub(crate) fn of(&self, id: &str) -> usize {
        if self.bases.len() == 1 {
            return 0;
        }
        let hash = mix(fnv1a(id.as_bytes()));
        usize::try_from(hash % self.bases.len() as u64).unwrap_or(0)
    }

    /// The key base of shard `shard`: `{prefix#<n>}:`.
    pub(crate) fn base(&self, shard: usize) -> &str {
        &self.bases[shard % self.bases.len()]
    }

    /// The key base of the shard of value `id`.
    pub(crate) fn base_of(&self, id: &str) -> &str {
        self.base(self.of(id))
    }

    /// Every shard's base, in order.
    pub(crate) fn bases(&self) -> impl Iterator<Item = &str> {
        self.bases.iter().map(String::as_str)
    }
}

/// 64-bit FNV-1a: small, stable across versions and platforms.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// MurmurHash3's 64-bit finalizer: every bit of the result depends on
/// every bit of `hash`. FNV-1a alone will not do modulo a count with a
/// factor 2^k (4, 48): its low k bits depend only on the low k bits of
/// each byte, so two ids that differ only in a prefix (`trunk#1:<args>`,
/// `leaf#1:<args>`) would be in the same shard for every argument, or in
/// different ones for every argument.
fn mix(mut hash: u64) -> u64 {
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}

/// The Redis Cluster slot of `key`: CRC16 (XMODEM) of its hash tag (what
/// lies between the first `{` and the next `}`, if not empty), else of the
/// whole key, modulo 16384.
pub(crate) fn slot(key: &[u8]) -> u16 {
    let hashed = hash_tag(key).unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(hashed) % SLOTS
}

/// The hash tag of `key`: what lies between its first `{` and the next
/// `}`, if that is not empty (Redis Cluster's rule).
pub(crate) fn hash_tag(key: &[u8]) -> Option<&[u8]> {
    let open = key.iter().position(|&b| b == b'{')?;
    let rest = &key[open + 1..];
    let close = rest.iter().position(|&b| b == b'}')?;
    (close > 0).then(|| &rest[..close])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_redis_cluster_slots() {
        // From CLUSTER KEYSLOT on Redis 7.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
        assert_eq!(slot(b"{user1000}.following"), 3443);
        assert_eq!(slot(b"foo{}{bar}"), 8363, "an empty tag: the whole key");
        assert_eq!(slot(b"smache:0"), 15448);
        assert_eq!(slot(b"smache:1"), 11385);
        assert_eq!(slot(b"{smache}:v:x"), slot(b"smache"));
    }

    #[test]
    fn one_shard_is_the_prefix_tag() {
        let shards = Shards::new("app", 1);
        assert_eq!(shards.count(), 1);
        assert_eq!(shards.base_of("f#1:o:65f0"), "{app}:");
    }

    #[test]
    fn shards_are_evenly_spaced_over_the_slots() {
        let shards = Shards::new("smache", 48);
        assert_eq!(shards.count(), 48);
        let mut per_master = [0; 3];
        for (i, base) in shards.bases().enumerate() {
            let slot = slot(base.as_bytes());
            assert_eq!(usize::from(slot) * 48 / 16384, i, "{base} in band {i}");
            // redis-cli --cluster create's split of 3 masters.
            per_master[match slot {
                0..=5460 => 0,
                5461..=10922 => 1,
                _ => 2,
            }] += 1;
        }
        assert_eq!(per_master, [16, 16, 16]);
    }

    #[test]
    fn values_spread_evenly_and_stay_put() {
        let shards = Shards::new("smache", 48);
        let mut counts = vec![0_u32; 48];
        for n in 0..96_000 {
            counts[shards.of(&format!("card#1:o:{n:024x}"))] += 1;
        }
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(*min > 1800 && *max < 2200, "{counts:?}");
        // Stable: the same id, the same shard, in every process and version.
        assert_eq!(
            shards.of("card#1:o:000000000000000000000001"),
            shards.of("card#1:o:000000000000000000000001")
        );
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn ids_that_share_their_arguments_are_not_tied_to_one_shard() {
        for count in [4, 48] {
            let shards = Shards::new("smache", count);
            let same = (0..200)
                .filter(|n| {
                    let args = format!("\"tag-{n}\"");
                    shards.of(&format!("trunk#1:{args}")) == shards.of(&format!("leaf#1:{args}"))
                })
                .count();
            // About 200 / count.
            assert!(same > 0 && same < 200 / count * 3, "{count}: {same}");
        }
    }
}
