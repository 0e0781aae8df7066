//! Names and tag values that pgjit builds from request ids and requester ids, for AWS APIs that
//! each allow their own characters and lengths (moto accepts anything; AWS does not).
//!
//! Every encoding here is injective: distinct inputs give distinct outputs, so `CHG:2041/a` and
//! `CHG_2041_a` never share a secret, a policy or a tag value. A character the target does not
//! allow, and the escape character `=` itself, become `=XX` (the byte in upper-case hex); an
//! encoding longer than the limit keeps a readable head and ends in `==` and a hash of the whole
//! input, a form that plain encoding never yields (`=` is always followed by two hex digits).

use sha2::{Digest, Sha256};

/// What one AWS API allows in a name or value.
#[derive(Debug, Clone, Copy)]
pub struct Alphabet {
    /// Allowed besides ASCII letters and digits (must include `=`, the escape).
    pub extra: &'static [u8],
    pub max_len: usize,
}

/// Secrets Manager secret names: letters, digits and `/_+=.@-`, at most 512 characters.
pub const SECRET_NAME: Alphabet = Alphabet {
    extra: b"/_+=.@-",
    max_len: 512,
};
/// Secrets Manager tag values: letters, digits, spaces and `+-=._:/@`, at most 256 characters.
pub const SECRET_TAG_VALUE: Alphabet = Alphabet {
    extra: b" +-=._:/@",
    max_len: 256,
};
/// IAM role names: letters, digits and `+=,.@_-`, at most 64 characters.
pub const IAM_ROLE_NAME: Alphabet = Alphabet {
    extra: b"+=,.@_-",
    max_len: 64,
};
/// IAM inline policy names: letters, digits and `+=,.@_-`, at most 128 characters.
pub const IAM_POLICY_NAME: Alphabet = Alphabet {
    extra: b"+=,.@_-",
    max_len: 128,
};

/// Length of the hash suffix of an encoding that did not fit (`==` and 32 hex digits).
const HASHED_TAIL: usize = 2 + 32;

/// `text` in `alphabet`, within `room` characters (at most the alphabet's limit).
pub fn encode(text: &str, alphabet: Alphabet, room: usize) -> String {
    let room = room.min(alphabet.max_len);
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b != b'=' && (b.is_ascii_alphanumeric() || alphabet.extra.contains(&b)) {
            out.push(b as char);
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    if out.len() <= room {
        return out;
    }
    let mut head = room.saturating_sub(HASHED_TAIL);
    // Never cut an escape in half: the head must end outside one.
    while head > 0
        && (out.as_bytes()[head - 1] == b'=' || (head >= 2 && out.as_bytes()[head - 2] == b'='))
    {
        head -= 1;
    }
    let digest = Sha256::digest(text.as_bytes());
    format!("{}=={}", &out[..head], hex::encode(&digest[..16]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_valid_for_aws_and_distinct() {
        let ids = [
            "CHG:2041/a",
            "CHG_2041_a",
            "CHG=3A2041/a",
            "REQ-1001",
            "a b",
            "ünï",
            &"x:".repeat(64),
            &"x:".repeat(63),
        ];
        for alphabet in [SECRET_NAME, SECRET_TAG_VALUE, IAM_POLICY_NAME] {
            let mut seen = std::collections::BTreeSet::new();
            for id in ids {
                let name = encode(id, alphabet, alphabet.max_len);
                assert!(name.len() <= alphabet.max_len, "{name}");
                assert!(
                    name.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || alphabet.extra.contains(&b)),
                    "{name}"
                );
                assert!(seen.insert(name.clone()), "{id} collides as {name}");
            }
        }
        assert_eq!(encode("CHG:2041/a", SECRET_NAME, 512), "CHG=3A2041/a");
        assert_eq!(encode("CHG_2041_a", SECRET_NAME, 512), "CHG_2041_a");
        assert_eq!(encode("CHG=3A2041/a", SECRET_NAME, 512), "CHG=3D3A2041/a");
        assert_eq!(encode("REQ-1001", IAM_POLICY_NAME, 100), "REQ-1001");
        // Too long: a readable head and a hash, never an escape cut in half.
        let long = encode(&":".repeat(60), IAM_POLICY_NAME, 100);
        assert!(
            long.len() <= 100 && long.contains("==") && long.starts_with("=3A=3A"),
            "{long}"
        );
        assert_ne!(
            encode(&":".repeat(60), IAM_POLICY_NAME, 100),
            encode(&":".repeat(61), IAM_POLICY_NAME, 100)
        );
    }
}
