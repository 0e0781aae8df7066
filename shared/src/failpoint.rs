//! Named points in the grant and revoke flows where a test can make the run fail, to prove that
//! what was done before is undone or finished later. Production never sets any.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Default)]
pub struct Failpoints(Arc<Mutex<HashSet<String>>>);

#[derive(Debug, Clone, thiserror::Error)]
#[error("failpoint {0} triggered")]
pub struct Triggered(pub String);

impl Failpoints {
    /// Makes `name` fail until it is cleared.
    pub fn set(&self, name: &str) {
        if let Ok(mut set) = self.0.lock() {
            set.insert(name.to_owned());
        }
    }

    pub fn clear(&self) {
        if let Ok(mut set) = self.0.lock() {
            set.clear();
        }
    }

    /// Fails when `name` is set.
    pub fn check(&self, name: &str) -> Result<(), Triggered> {
        match self.0.lock() {
            Ok(set) if set.contains(name) => Err(Triggered(name.to_owned())),
            _ => Ok(()),
        }
    }
}
