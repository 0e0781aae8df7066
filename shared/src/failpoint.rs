//! Named points in the grant, revoke and cleanup flows where a test makes the run fail, slows it,
//! or stops it dead (as a killed process would stop), to prove that what was done before is undone or finished
//! later. Production never sets any: an unset point costs one uncontended lock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

#[derive(Clone)]
enum Action {
    /// The step fails with [`Triggered`].
    Fail,
    /// Runs the hook (e.g. stops a server), then goes on.
    Hook(Arc<dyn Fn() + Send + Sync>),
    /// Waits, then goes on: a slow step.
    Delay(std::time::Duration),
    /// Signals the waiter, then never returns: the run is stuck until its task is dropped.
    Halt(Arc<Notify>),
}

#[derive(Clone, Default)]
pub struct Failpoints(Arc<Mutex<HashMap<String, Action>>>);

impl std::fmt::Debug for Failpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.0.lock().map(|m| m.keys().cloned().collect()).unwrap_or_default();
        f.debug_tuple("Failpoints").field(&names).finish()
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("failpoint {0} triggered")]
pub struct Triggered(pub String);

impl Failpoints {
    fn put(&self, name: &str, action: Action) {
        if let Ok(mut map) = self.0.lock() {
            map.insert(name.to_owned(), action);
        }
    }

    /// Makes `name` fail until it is cleared.
    pub fn set(&self, name: &str) {
        self.put(name, Action::Fail);
    }

    /// Runs `hook` each time the run passes `name`.
    pub fn hook(&self, name: &str, hook: impl Fn() + Send + Sync + 'static) {
        self.put(name, Action::Hook(Arc::new(hook)));
    }

    /// Makes each pass through `name` take `delay` longer.
    pub fn delay(&self, name: &str, delay: std::time::Duration) {
        self.put(name, Action::Delay(delay));
    }

    /// Stops the run at `name` for good; the returned notify fires when it got there.
    pub fn halt(&self, name: &str) -> Arc<Notify> {
        let notify = Arc::new(Notify::new());
        self.put(name, Action::Halt(notify.clone()));
        notify
    }

    pub fn clear(&self) {
        if let Ok(mut map) = self.0.lock() {
            map.clear();
        }
    }

    /// Passes `name`: fails, runs the hook, or halts, as set.
    pub async fn check(&self, name: &str) -> Result<(), Triggered> {
        let action = self.0.lock().ok().and_then(|m| m.get(name).cloned());
        match action {
            None => Ok(()),
            Some(Action::Fail) => Err(Triggered(name.to_owned())),
            Some(Action::Hook(hook)) => {
                hook();
                Ok(())
            }
            Some(Action::Delay(delay)) => {
                tokio::time::sleep(delay).await;
                Ok(())
            }
            Some(Action::Halt(notify)) => {
                notify.notify_one();
                std::future::pending::<()>().await;
                Ok(())
            }
        }
    }
}
