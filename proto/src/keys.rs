//! The key encoding: how a user key in a keyspace becomes an *encoded key*, the only kind of key
//! regions, Raft and storage ever see. Format version 1 (see docs/design.md):
//!
//! ```text
//! hash keyspace:  'h' | keyspace_id: u32 BE | xxh3_64(user_key, seed 0): u64 BE | user_key
//! range keyspace: 'r' | keyspace_id: u32 BE | user_key
//! ```
//!
//! The hash is fixed forever: changing it would reorder every stored key. Regions are ranges of
//! encoded keys, so in a hash keyspace a region is an arc of the hash ring.

use crate::kvrpcpb::{Keyspace, KeyspaceMode};
use std::fmt;

/// Version of the key encoding, recorded in every store's identity.
pub const KEY_FORMAT_VERSION: u32 = 1;
/// First byte of every key in a hash keyspace.
pub const TAG_HASH: u8 = b'h';
/// First byte of every key in a range keyspace.
pub const TAG_RANGE: u8 = b'r';
/// The seed of the ring hash. Part of the on-disk format: never change it.
pub const RING_HASH_SEED: u64 = 0;
/// Bytes before the user key in a hash keyspace.
pub const HASH_PREFIX_LEN: usize = 1 + 4 + 8;
/// Bytes before the user key in a range keyspace.
pub const RANGE_PREFIX_LEN: usize = 1 + 4;

/// The keyspace every cluster has: id 0, hash-ordered.
pub fn default_keyspace() -> Keyspace {
    Keyspace {
        id: 0,
        mode: KeyspaceMode::Hash as i32,
    }
}

/// The ring position of a user key.
pub fn ring_hash(user_key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(user_key, RING_HASH_SEED)
}

fn tag_of(keyspace: &Keyspace) -> u8 {
    if keyspace.mode == KeyspaceMode::Range as i32 {
        TAG_RANGE
    } else {
        TAG_HASH
    }
}

/// The bytes every encoded key of `keyspace` starts with.
pub fn keyspace_prefix(keyspace: &Keyspace) -> Vec<u8> {
    let mut prefix = Vec::with_capacity(RANGE_PREFIX_LEN);
    prefix.push(tag_of(keyspace));
    prefix.extend_from_slice(&keyspace.id.to_be_bytes());
    prefix
}

/// The smallest encoded key greater than every key of `keyspace`.
pub fn keyspace_end(keyspace: &Keyspace) -> Vec<u8> {
    let mut end = Vec::with_capacity(RANGE_PREFIX_LEN);
    match keyspace.id.checked_add(1) {
        Some(next) => {
            end.push(tag_of(keyspace));
            end.extend_from_slice(&next.to_be_bytes());
        }
        None => end.push(tag_of(keyspace) + 1),
    }
    end
}

/// Encodes `user_key` of `keyspace`.
pub fn encode(keyspace: &Keyspace, user_key: &[u8]) -> Vec<u8> {
    let mut key = keyspace_prefix(keyspace);
    key.reserve(8 + user_key.len());
    if tag_of(keyspace) == TAG_HASH {
        key.extend_from_slice(&ring_hash(user_key).to_be_bytes());
    }
    key.extend_from_slice(user_key);
    key
}

/// Why a byte string is not a well-formed encoded key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    /// Shorter than the prefix its tag requires.
    TooShort { len: usize },
    /// The first byte is neither `h` nor `r`.
    UnknownTag { tag: u8 },
    /// The ring hash in the key is not the hash of its user key.
    HashMismatch,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::TooShort { len } => write!(
                f,
                "encoded key of {len} bytes is shorter than its keyspace prefix"
            ),
            KeyError::UnknownTag { tag } => write!(
                f,
                "encoded key starts with tag byte {tag:#04x}; expected 'h' (hash) or 'r' (range)"
            ),
            KeyError::HashMismatch => write!(
                f,
                "encoded key's ring hash does not match its user key (was it encoded by another format version?)"
            ),
        }
    }
}

impl std::error::Error for KeyError {}

/// Splits an encoded key into its keyspace and user key, checking the ring hash.
pub fn decode(encoded: &[u8]) -> Result<(Keyspace, &[u8]), KeyError> {
    let tag = *encoded.first().ok_or(KeyError::TooShort { len: 0 })?;
    let (mode, prefix_len) = match tag {
        TAG_HASH => (KeyspaceMode::Hash, HASH_PREFIX_LEN),
        TAG_RANGE => (KeyspaceMode::Range, RANGE_PREFIX_LEN),
        tag => return Err(KeyError::UnknownTag { tag }),
    };
    if encoded.len() < prefix_len {
        return Err(KeyError::TooShort { len: encoded.len() });
    }
    let id = u32::from_be_bytes(encoded[1..5].try_into().expect("4 bytes"));
    let user_key = &encoded[prefix_len..];
    if mode == KeyspaceMode::Hash {
        let stored = u64::from_be_bytes(encoded[5..13].try_into().expect("8 bytes"));
        if stored != ring_hash(user_key) {
            return Err(KeyError::HashMismatch);
        }
    }
    Ok((
        Keyspace {
            id,
            mode: mode as i32,
        },
        user_key,
    ))
}

/// The user key of an encoded key, without checking the hash (for keys read back from storage,
/// which were checked on the way in).
pub fn user_key_unchecked(encoded: &[u8]) -> Option<&[u8]> {
    match *encoded.first()? {
        TAG_HASH if encoded.len() >= HASH_PREFIX_LEN => Some(&encoded[HASH_PREFIX_LEN..]),
        TAG_RANGE if encoded.len() >= RANGE_PREFIX_LEN => Some(&encoded[RANGE_PREFIX_LEN..]),
        _ => None,
    }
}

/// The region boundary to use for a split before encoded `key`: in a hash keyspace the key's
/// ring position (so regions are arcs of the ring and every user key with that position goes
/// right), otherwise the key itself. Always `<= key`.
pub fn split_boundary(key: &[u8]) -> &[u8] {
    if key.first() == Some(&TAG_HASH) && key.len() > HASH_PREFIX_LEN {
        &key[..HASH_PREFIX_LEN]
    } else {
        key
    }
}

/// Whether encoded `key` lies in the region range `[start, end)`; an empty `end` is unbounded.
pub fn in_range(key: &[u8], start: &[u8], end: &[u8]) -> bool {
    key >= start && (end.is_empty() || key < end)
}

/// Whether region ranges `[a_start, a_end)` and `[b_start, b_end)` share a key; an empty end is
/// unbounded.
pub fn ranges_overlap(a_start: &[u8], a_end: &[u8], b_start: &[u8], b_end: &[u8]) -> bool {
    let a_before_b = !a_end.is_empty() && a_end <= b_start;
    let b_before_a = !b_end.is_empty() && b_end <= a_start;
    !a_before_b && !b_before_a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_hash_and_range() {
        let hash = default_keyspace();
        let range = Keyspace {
            id: 7,
            mode: KeyspaceMode::Range as i32,
        };
        for ks in [hash, range] {
            let enc = encode(&ks, b"user-key");
            let (got, user) = decode(&enc).unwrap();
            assert_eq!(got, ks);
            assert_eq!(user, b"user-key");
            assert!(enc >= keyspace_prefix(&ks) && enc < keyspace_end(&ks));
            assert_eq!(user_key_unchecked(&enc), Some(&b"user-key"[..]));
        }
    }

    #[test]
    fn ring_hash_is_frozen() {
        // The on-disk format depends on this exact function; this value must never change.
        assert_eq!(ring_hash(b"ringkv"), xxhash_rust::xxh3::xxh3_64(b"ringkv"));
        assert_eq!(ring_hash(b""), 0x2d06800538d394c2);
    }

    #[test]
    fn rejects_malformed_keys() {
        assert_eq!(decode(b""), Err(KeyError::TooShort { len: 0 }));
        assert_eq!(decode(b"x1234"), Err(KeyError::UnknownTag { tag: b'x' }));
        assert_eq!(decode(b"h123"), Err(KeyError::TooShort { len: 4 }));
        let mut enc = encode(&default_keyspace(), b"k");
        *enc.last_mut().unwrap() = b'j';
        assert_eq!(decode(&enc), Err(KeyError::HashMismatch));
    }

    #[test]
    fn hash_keyspace_spreads_sequential_keys() {
        let ks = default_keyspace();
        let mut keys: Vec<Vec<u8>> = (0..1000u32)
            .map(|i| encode(&ks, format!("key{i:06}").as_bytes()))
            .collect();
        let sequential = keys.clone();
        keys.sort();
        assert_ne!(
            keys, sequential,
            "hash order must differ from insertion order"
        );
    }
}
