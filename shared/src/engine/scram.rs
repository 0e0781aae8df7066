//! SCRAM-SHA-256 password verifiers, computed here so a plaintext password never reaches the
//! server or its statement log.
//!
//! The format and the steps are PostgreSQL's (`pg_authid.rolpassword`, RFC 5802 and 7677):
//! SASLprep, PBKDF2-HMAC-SHA-256 with 4096 rounds (the server's default), then the stored and
//! server keys. The verifier is on the path of every grant, so it uses ring (already linked for
//! TLS): its PBKDF2 keys the HMAC once instead of every round and is assembly in every build
//! profile.

use std::num::NonZeroU32;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ring::{digest, hmac, pbkdf2};
use zeroize::Zeroizing;

use crate::secret::SecretString;

/// PostgreSQL's default `scram_iterations`.
pub const ITERATIONS: u32 = 4096;

/// A verifier for `password` with a fresh random salt, ready for `CREATE ROLE … PASSWORD`.
pub fn verifier(password: &SecretString) -> String {
    verifier_with_salt(password, &rand::random::<[u8; 16]>())
}

fn verifier_with_salt(password: &SecretString, salt: &[u8; 16]) -> String {
    // As libpq and the server do: SASLprep when the password allows it, the bytes as they are
    // otherwise.
    let prepared: Zeroizing<Vec<u8>> = Zeroizing::new(match stringprep::saslprep(password.expose()) {
        Ok(p) => p.into_owned().into_bytes(),
        Err(_) => password.expose().as_bytes().to_vec(),
    });
    let mut salted = Zeroizing::new([0u8; 32]);
    let rounds = NonZeroU32::new(ITERATIONS).unwrap_or(NonZeroU32::MIN);
    pbkdf2::derive(pbkdf2::PBKDF2_HMAC_SHA256, rounds, salt, &prepared, salted.as_mut());
    let key = hmac::Key::new(hmac::HMAC_SHA256, salted.as_ref());
    let client_key = hmac::sign(&key, b"Client Key");
    let stored_key = digest::digest(&digest::SHA256, client_key.as_ref());
    let server_key = hmac::sign(&key, b"Server Key");
    format!(
        "SCRAM-SHA-256${ITERATIONS}:{}${}:{}",
        STANDARD.encode(salt),
        STANDARD.encode(stored_key.as_ref()),
        STANDARD.encode(server_key.as_ref())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Computed independently with Python's hashlib and hmac (PBKDF2-HMAC-SHA-256, 4096 rounds).
    const KNOWN: &str = "SCRAM-SHA-256$4096:AAECAwQFBgcICQoLDA0ODw==$ONYbSJBXtKl6bP6PVqw8pm9e7EiacprLnoUQPFS80Hw=:IPOtHuGJ2HifEQg74W2XXqqCrCyQG55GbPRHa6g6n9w=";

    #[test]
    fn matches_an_independent_computation() {
        let salt: [u8; 16] = std::array::from_fn(|i| i as u8);
        assert_eq!(verifier_with_salt(&SecretString::new("correct horse battery staple"), &salt), KNOWN);
    }

    #[test]
    fn applies_saslprep_like_the_server() {
        // SASLprep maps the soft hyphen to nothing, so both spellings must give one verifier.
        let salt = [7u8; 16];
        assert_eq!(verifier_with_salt(&SecretString::new("pass\u{AD}word"), &salt), verifier_with_salt(&SecretString::new("password"), &salt));
    }

    #[test]
    fn salts_differ() {
        let p = SecretString::new("same");
        assert_ne!(verifier(&p), verifier(&p));
    }
}
