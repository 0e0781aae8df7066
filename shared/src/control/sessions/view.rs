//! A request's session audit entries as sessions, as `pgjit sessions` shows them.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::aws::store::sessions::{EntryKind, SessionEntry}; 

/// One session of a temporary user, as `pgjit sessions` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Session {
    pub session: Option<u32>,
    pub database: Option<String>,
    pub client: Option<String>,
    pub connected_at: Option<DateTime<Utc>>,
    pub disconnected_at: Option<DateTime<Utc>>,
    /// The server's account of the connection (application name, TLS) and of its length.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<String>,
    pub statements: Vec<SessionEntry>,
}

/// A request's entries (in time order) as sessions: a connection opens one, the statements of
/// its server process follow, its disconnection closes it. Entries whose connection is not
/// recorded (the log began later) open a session of their own.
pub fn sessions_of(entries: &[SessionEntry]) -> Vec<Session> {
    let mut sessions: Vec<Session> = Vec::new();
    // The open session of each server process, by index.
    let mut open: HashMap<Option<u32>, usize> = HashMap::new();
    for entry in entries {
        let key = entry.session;
        let index = match (entry.kind, open.get(&key)) {
            (EntryKind::Connected, _) | (_, None) => {
                sessions.push(Session {
                    session: entry.session,
                    database: entry.database.clone(),
                    client: entry.client.clone(),
                    connected_at: None,
                    disconnected_at: None,
                    details: Vec::new(),
                    statements: Vec::new(),
                });
                open.insert(key, sessions.len() - 1);
                sessions.len() - 1
            }
            (_, Some(i)) => *i,
        };
        let session = &mut sessions[index];
        match entry.kind {
            EntryKind::Connected => session.connected_at = Some(entry.at),
            EntryKind::Disconnected => {
                session.disconnected_at = Some(entry.at);
                open.remove(&key);
            }
            _ => session.statements.push(entry.clone()),
        }
        session.details.extend(entry.detail.clone());
    }
    sessions
}

