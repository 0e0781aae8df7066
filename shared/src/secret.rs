//! A string that must never reach a log line, an error message or a debug dump.

use std::fmt;

use zeroize::Zeroize;

/// A password, token or other secret value.
///
/// It has no `Display`, its `Debug` prints `***`, and its memory is overwritten when it is
/// dropped; reading it takes an explicit [`SecretString::expose`].
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself: call this only where the secret is used (a connection, a secret write).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A new random password: 32 characters from letters and digits (about 190 bits), safe in any
    /// connection string or shell without quoting.
    pub fn random_password() -> Self {
        use rand::distr::{Alphanumeric, SampleString};
        Self(Alphanumeric.sample_string(&mut rand::rng(), 32))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl Drop for SecretString {
    fn drop(&mut self) {
        // Overwrite in place so the plaintext does not linger in freed memory.
        self.0.zeroize();
    }
}

impl From<String> for SecretString {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl<'de> serde::Deserialize<'de> for SecretString {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self)
    }
}

/// Serialises the plaintext: used only to write the value where it belongs (Secrets Manager).
impl serde::Serialize for SecretString {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_value() {
        let s = SecretString::new("hunter2");
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn random_passwords_are_long_and_differ() {
        let a = SecretString::random_password();
        assert_eq!(a.expose().len(), 32);
        assert!(a.expose().bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(a, SecretString::random_password());
    }
}
