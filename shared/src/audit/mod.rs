//! Reading what a server logged: the log's lines joined into records by `log_line_prefix`,
//! pgaudit's lines, and secrets taken out of SQL text. Pure parsing: no I/O, and nothing of
//! the rest of pgjit.

pub mod pgaudit;
pub mod redaction;
pub mod server_log;
