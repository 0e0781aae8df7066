//! Access flows: who may ask for what on which integrations, for how long, when, and who
//! approves. Parsing (every bad field named) and the decision itself; no I/O: the people are
//! resolved and the flows loaded by the caller.
//!
//! A flow:
//!
//! ```json
//! {"name": "orders-read", "integrations": ["orders-prod"],
//!  "requesters": {"groups": ["engineers"], "principals": ["arn:aws:iam::123456789012:role/dev-*"], "users": ["john.doe@corp.com"]},
//!  "access": [{"database": "app", "schema": "sales", "table": "*", "privileges": ["SELECT"]}],
//!  "max_duration_seconds": 7200,
//!  "hours": {"time_zone": "Europe/Berlin", "days": ["mon", "tue", "wed", "thu", "fri"], "from": "08:00", "to": "18:00"},
//!  "approval": {"approvers": {"groups": ["dba"], "owners": true}, "required": 1, "reason_required": true, "ticket_pattern": "INC-[0-9]+"}}
//! ```
//!
//! `approval` is instead `{"auto": true}` (granted on request) or `{"break_glass": true}`
//! (granted at once, a reason required, at most [`BREAK_GLASS_MAX_SECONDS`], alarmed and
//! marked for review).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::access::{AccessEntry, AccessSet, Object, Privilege, Target};
use crate::contract::identity::Person;

/// The longest a break-glass flow may grant: break-glass is for an emergency, not a shortcut.
pub const BREAK_GLASS_MAX_SECONDS: u64 = 4 * 3600;
/// Most approvals a flow may require.
pub const MAX_REQUIRED: u32 = 10;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flow {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub integrations: Vec<String>,
    pub requesters: People,
    pub access: Vec<AccessEntry>,
    pub max_duration_seconds: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hours: Option<Hours>,
    pub approval: ApprovalRule,
    /// The envelope, normalised once (see [`Flow::from_json`]).
    #[serde(skip)]
    envelope: Vec<Allowed>,
    /// The ticket pattern, anchored, and the hours' time zone, made once at parsing.
    #[serde(skip)]
    compiled: Compiled,
}

/// What a flow compiles once: it is read on every approval.
#[derive(Debug, Clone, Default)]
struct Compiled {
    ticket: Option<regex_lite::Regex>,
    zone: Option<jiff::tz::TimeZone>,
}

/// Made from the document: two flows with equal documents compile alike.
impl PartialEq for Compiled {
    fn eq(&self, _: &Compiled) -> bool {
        true
    }
}

impl Eq for Compiled {}

/// People named three ways: Identity Center groups, IAM principal ARN patterns, user names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct People {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
    /// Approvers only: the resource's owners (the instance's or cluster's owner tag, else the
    /// integration owners).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub owners: bool,
}

impl People {
    fn is_empty(&self) -> bool {
        self.groups.is_empty() && self.principals.is_empty() && self.users.is_empty() && !self.owners
    }

    /// Whether `person` is one of these people; `owners` are the names (groups or users) the
    /// resource's owners go by.
    pub fn includes(&self, person: &Person, owners: &BTreeSet<String>) -> bool {
        self.users.iter().any(|u| person.has_user_name(u))
            || self.principals.iter().any(|p| person.matches_principal(p))
            || self.groups.iter().any(|g| person.in_group(g))
            || (self.owners && owners.iter().any(|o| person.in_group(o) || person.has_user_name(o)))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvers: Option<People>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required: Option<u32>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reason_required: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket_pattern: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub auto: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub break_glass: bool,
}

/// How a flow grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// After `required` distinct approvals.
    Approvers,
    /// On request.
    Auto,
    /// On request, with a reason, alarmed and reviewed later.
    BreakGlass,
}

impl ApprovalRule {
    pub fn mode(&self) -> Mode {
        if self.break_glass {
            Mode::BreakGlass
        } else if self.auto {
            Mode::Auto
        } else {
            Mode::Approvers
        }
    }

    /// Approvals needed (0 for auto and break-glass).
    pub fn required(&self) -> u32 {
        match self.mode() {
            Mode::Approvers => self.required.unwrap_or(1),
            _ => 0,
        }
    }
}

/// When a flow applies: on `days`, from `from` to `to` (local time in `time_zone`; a `to`
/// before `from` runs past midnight into the next day).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hours {
    pub time_zone: String,
    pub days: Vec<String>,
    pub from: String,
    pub to: String,
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// A flow that cannot be stored, and the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad access flow: {field}: {message}")]
pub struct FlowError {
    pub field: String,
    pub message: String,
}

fn bad(field: impl Into<String>, message: impl Into<String>) -> FlowError {
    FlowError { field: field.into(), message: message.into() }
}

/// One envelope entry, normalised: what it allows in which database.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Allowed {
    Objects { database: String, objects: BTreeMap<Object, BTreeSet<Privilege>> },
    Role { database: String, role: String },
}

fn name_ok(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Flow {
    /// Parses and checks a flow; the first bad field is named.
    pub fn from_json(text: &str) -> Result<Flow, FlowError> {
        let mut de = serde_json::Deserializer::from_str(text);
        let mut flow: Flow = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let message = e.into_inner().to_string();
            bad(crate::contract::events::field_of(&path, &message, "(flow)"), message)
        })?;
        flow.check()?;
        Ok(flow)
    }

    fn check(&mut self) -> Result<(), FlowError> {
        if !name_ok(&self.name) {
            return Err(bad("name", format!("{:?} must be 1-64 letters, digits, '-' or '_'", self.name)));
        }
        if self.description.as_ref().is_some_and(|d| d.len() > 1024) {
            return Err(bad("description", "at most 1024 characters"));
        }
        if self.integrations.is_empty() {
            return Err(bad("integrations", "name at least one integration"));
        }
        for (i, name) in self.integrations.iter().enumerate() {
            if !name_ok(name) {
                return Err(bad(format!("integrations[{i}]"), format!("{name:?} is not an integration name")));
            }
        }
        check_people("requesters", &self.requesters, false)?;
        if self.access.is_empty() {
            return Err(bad("access", "the envelope needs at least one entry"));
        }
        if self.access.len() > 200 {
            return Err(bad("access", "at most 200 entries"));
        }
        self.envelope = Vec::with_capacity(self.access.len());
        for (i, entry) in self.access.iter().enumerate() {
            if entry.role.as_deref() == Some("*") {
                return Err(bad(format!("access[{i}].role"), "roles are named one by one; \"*\" is not a role"));
            }
            let set = AccessSet::from_entries(std::slice::from_ref(entry)).map_err(|e| bad(format!("access[{i}].{}", e.field), e.message))?;
            // Only what the entry names: a table's schema USAGE is not a schema entry.
            for (database, own) in own_objects(entry, set) {
                self.envelope.push(match own {
                    Own::Role(role) => Allowed::Role { database, role },
                    Own::Object(object, privileges) => Allowed::Objects { database, objects: [(object, privileges)].into() },
                });
            }
        }
        if self.max_duration_seconds == 0 {
            return Err(bad("max_duration_seconds", "must be positive"));
        }
        if let Some(hours) = &self.hours {
            hours.check()?;
            self.compiled.zone = jiff::tz::TimeZone::get(&hours.time_zone).ok();
        }
        let rule = &self.approval;
        if [rule.auto, rule.break_glass, rule.approvers.is_some()].iter().filter(|x| **x).count() != 1 {
            return Err(bad("approval", "say exactly one of approvers (with required), auto or break_glass"));
        }
        if rule.required.is_some() && rule.approvers.is_none() {
            return Err(bad("approval.required", "goes with approvers"));
        }
        if let Some(approvers) = &rule.approvers {
            check_people("approval.approvers", approvers, true)?;
            let required = rule.required.unwrap_or(1);
            if !(1..=MAX_REQUIRED).contains(&required) {
                return Err(bad("approval.required", format!("must be 1-{MAX_REQUIRED}")));
            }
        }
        if rule.break_glass && self.max_duration_seconds > BREAK_GLASS_MAX_SECONDS {
            return Err(bad("max_duration_seconds", format!("a break-glass flow grants at most {BREAK_GLASS_MAX_SECONDS} s")));
        }
        if let Some(pattern) = &rule.ticket_pattern {
            if pattern.is_empty() || pattern.len() > 200 {
                return Err(bad("approval.ticket_pattern", "must be 1-200 characters"));
            }
            regex_lite::Regex::new(pattern).map_err(|e| bad("approval.ticket_pattern", format!("not a regular expression: {e}")))?;
            // Anchored: the whole ticket must have the pattern's form.
            let whole = regex_lite::Regex::new(&format!("^(?:{pattern})$")).map_err(|e| bad("approval.ticket_pattern", format!("not a regular expression: {e}")))?;
            self.compiled.ticket = Some(whole);
        }
        Ok(())
    }

    pub fn applies_to(&self, integration: &str) -> bool {
        self.integrations.iter().any(|i| i == integration)
    }

    /// Whether `request` may be asked for under this flow, approvals aside: who asks, what,
    /// for how long, when, and why. The refusal names what does not fit.
    pub fn admits(&self, request: &Request) -> Result<(), String> {
        self.admits_with(request, &asked_of(request.access)).map_err(|m| m.say(self, request))
    }

    /// [`Flow::admits`] with the request's entries normalised once (a decision reads many
    /// flows), and the refusal in words only when asked for.
    fn admits_with(&self, request: &Request, asked: &[Option<Vec<(String, Own)>>]) -> Result<(), Misfit> {
        if !self.applies_to(request.integration) {
            return Err(Misfit::Integration);
        }
        if !self.requesters.includes(request.requester, &BTreeSet::new()) {
            return Err(Misfit::Requester);
        }
        for (i, entry) in asked.iter().enumerate() {
            if !entry.as_ref().is_some_and(|own| self.envelope_fits(own)) {
                return Err(Misfit::Access(i));
            }
        }
        if request.duration_seconds > self.max_duration_seconds {
            return Err(Misfit::Duration);
        }
        if let Some(hours) = &self.hours {
            if !hours.contain_in(self.compiled.zone.as_ref(), request.at) {
                return Err(Misfit::Hours);
            }
        }
        let rule = &self.approval;
        let reason = request.reason.map(str::trim).unwrap_or("");
        if (rule.reason_required || rule.break_glass) && reason.is_empty() {
            return Err(Misfit::Reason);
        }
        if rule.ticket_pattern.is_some() {
            let whole = match &self.compiled.ticket {
                Some(whole) => std::borrow::Cow::Borrowed(whole),
                // A flow made without parsing (never in pgjit): compiled here.
                None => std::borrow::Cow::Owned(regex_lite::Regex::new(&format!("^(?:{})$", rule.ticket_pattern.as_deref().unwrap_or(""))).map_err(|e| Misfit::Pattern(e.to_string()))?),
            };
            if !whole.is_match(request.ticket.unwrap_or("")) {
                return Err(Misfit::Ticket);
            }
        }
        Ok(())
    }

    /// Whether the approvals given are enough under this flow: distinct people allowed to
    /// approve, never the requester, at least `required` of them. Returns the approvers that
    /// counted.
    pub fn approved_by<'p>(&self, requester: &Person, approvers: &'p [Person], owners: &BTreeSet<String>) -> Result<Vec<&'p Person>, String> {
        let rule = &self.approval;
        let Some(allowed) = &rule.approvers else { return Ok(Vec::new()) };
        let mut counted: Vec<&Person> = Vec::new();
        let mut why_not = Vec::new();
        for approver in approvers {
            if approver.same_as(requester) {
                return Err(format!("approver {:?} is the requester {:?}: an approval must come from someone else", approver.named, requester.named));
            }
            if !allowed.includes(approver, owners) {
                why_not.push(format!("{:?} is not one of its approvers", approver.named));
            } else if let Some(first) = counted.iter().find(|c| c.same_as(approver)) {
                why_not.push(format!("{:?} is the same person as {:?}", approver.named, first.named));
            } else {
                counted.push(approver);
            }
        }
        let required = rule.required() as usize;
        if counted.len() < required {
            let mut message = format!("it requires {required} distinct approver(s) and has {}", counted.len());
            if !why_not.is_empty() {
                message.push_str(&format!(" ({})", why_not.join("; ")));
            }
            return Err(message);
        }
        Ok(counted)
    }

    /// Whether a requested entry fits: its own object (the database, a schema, a table, a
    /// sequence, a function, or a role) must be covered by an envelope entry of the same kind;
    /// the CONNECT and USAGE that a table, sequence or function implies come with it. A bare
    /// schema or database entry needs an envelope entry of its own kind.
    fn envelope_fits(&self, own: &[(String, Own)]) -> bool {
        own.iter().all(|(database, own)| {
            let in_db = self.envelope.iter().filter(|a| matches!(a, Allowed::Objects { database: d, .. } | Allowed::Role { database: d, .. } if d == "*" || d == database));
            match own {
                Own::Role(role) => in_db.clone().any(|a| matches!(a, Allowed::Role { role: r, .. } if r == role)),
                Own::Object(object, privileges) => privileges.iter().all(|privilege| {
                    in_db.clone().any(|a| match a {
                        Allowed::Objects { objects, .. } => objects.iter().any(|(o, p)| p.contains(privilege) && covers(o, object)),
                        Allowed::Role { .. } => false,
                    })
                }),
            }
        })
    }
}

/// Why a flow does not admit a request, in words only when a refusal shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Misfit {
    Integration,
    Requester,
    Access(usize),
    Duration,
    Hours,
    Reason,
    Pattern(String),
    Ticket,
}

impl Misfit {
    fn say(&self, flow: &Flow, request: &Request) -> String {
        match self {
            Misfit::Integration => format!("does not apply to integration {:?}", request.integration),
            Misfit::Requester => format!("requester {:?} is not one of its requesters", request.requester.named),
            Misfit::Access(i) => format!("access[{i}] ({}) is outside its envelope", request.access.get(*i).map(describe).unwrap_or_default()),
            Misfit::Duration => format!("{} s is longer than its max_duration_seconds {}", request.duration_seconds, flow.max_duration_seconds),
            Misfit::Hours => format!("it applies only {} and it is {}", flow.hours.as_ref().map(Hours::describe).unwrap_or_default(), request.at.format("%Y-%m-%dT%H:%M:%SZ")),
            Misfit::Reason if flow.approval.break_glass => "break-glass needs a reason".into(),
            Misfit::Reason => "it requires a reason".into(),
            Misfit::Pattern(e) => format!("its ticket_pattern does not compile: {e}"),
            Misfit::Ticket => format!("ticket {:?} does not match its ticket_pattern {:?}", request.ticket.unwrap_or(""), flow.approval.ticket_pattern.as_deref().unwrap_or("")),
        }
    }
}

/// Each requested entry's own objects (None for an entry that is not valid access).
fn asked_of(access: &[AccessEntry]) -> Vec<Option<Vec<(String, Own)>>> {
    access.iter().map(|e| AccessSet::from_entries(std::slice::from_ref(e)).ok().map(|set| own_objects(e, set))).collect()
}

/// What one entry asks for itself, per database (what it implies left out).
enum Own {
    Role(String),
    Object(Object, BTreeSet<Privilege>),
}

fn own_objects(entry: &AccessEntry, asked: AccessSet) -> Vec<(String, Own)> {
    let mut out = Vec::new();
    for (database, db) in asked.databases {
        if let Some(role) = &entry.role {
            out.push((database.clone(), Own::Role(role.clone())));
            continue;
        }
        let level = match (&entry.schema, &entry.table, &entry.sequence, &entry.function) {
            (None, ..) => crate::access::Level::Database,
            (Some(_), None, None, None) => crate::access::Level::Schema,
            (Some(_), Some(_), _, _) => crate::access::Level::Table,
            (Some(_), _, Some(_), _) => crate::access::Level::Sequence,
            (Some(_), _, _, Some(_)) => crate::access::Level::Function,
        };
        for (object, privileges) in db.objects {
            if object.level() == level {
                out.push((database.clone(), Own::Object(object, privileges)));
            }
        }
    }
    out
}

/// Whether an envelope object (with `*` for schema or name) covers a requested one.
fn covers(envelope: &Object, asked: &Object) -> bool {
    let schema = |e: &str, a: &str| e == "*" || e == a;
    let target = |e: &Target, a: &Target| *e == Target::All || e == a;
    match (envelope, asked) {
        (Object::Database, Object::Database) => true,
        (Object::Schema { schema: e }, Object::Schema { schema: a }) => schema(e, a),
        (Object::Table { schema: es, table: et }, Object::Table { schema: s, table: t }) => schema(es, s) && target(et, t),
        (Object::Sequence { schema: es, sequence: et }, Object::Sequence { schema: s, sequence: t }) => schema(es, s) && target(et, t),
        (Object::Function { schema: es, function: ef, arguments: ea }, Object::Function { schema: s, function: f, arguments: a }) => {
            schema(es, s) && (*ef == Target::All || (ef == f && (ea.is_none() || ea == a)))
        }
        _ => false,
    }
}

fn describe(entry: &AccessEntry) -> String {
    let mut parts = vec![format!("database {}", entry.database)];
    for (kind, value) in [("schema", &entry.schema), ("table", &entry.table), ("sequence", &entry.sequence), ("function", &entry.function), ("role", &entry.role)] {
        if let Some(v) = value {
            parts.push(format!("{kind} {v}"));
        }
    }
    if !entry.privileges.is_empty() {
        parts.push(entry.privileges.join(","));
    }
    parts.join(" ")
}

fn check_people(field: &str, people: &People, approvers: bool) -> Result<(), FlowError> {
    if people.owners && !approvers {
        return Err(bad(format!("{field}.owners"), "owners approve; they are not requesters"));
    }
    if people.is_empty() {
        return Err(bad(field, "names nobody: give groups, principals or users"));
    }
    for (kind, list) in [("groups", &people.groups), ("users", &people.users)] {
        for (i, name) in list.iter().enumerate() {
            if name.trim().is_empty() || name.len() > 256 {
                return Err(bad(format!("{field}.{kind}[{i}]"), "must be 1-256 characters"));
            }
        }
    }
    for (i, pattern) in people.principals.iter().enumerate() {
        let parts: Vec<&str> = pattern.splitn(6, ':').collect();
        let account = parts.get(4).copied().unwrap_or("");
        if parts.len() != 6 || parts[0] != "arn" || !matches!(parts[2], "iam" | "sts") || account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad(
                format!("{field}.principals[{i}]"),
                format!("{pattern:?} is not an IAM principal ARN pattern (arn:aws:iam::<12-digit account>:role/… or user/…, arn:aws:sts::<account>:assumed-role/…; * and ? after the account)"),
            ));
        }
    }
    Ok(())
}

impl Hours {
    fn check(&self) -> Result<(), FlowError> {
        jiff::tz::TimeZone::get(&self.time_zone).map_err(|_| bad("hours.time_zone", format!("{:?} is not an IANA time zone (e.g. Europe/Berlin, UTC)", self.time_zone)))?;
        if self.days.is_empty() {
            return Err(bad("hours.days", "name at least one day"));
        }
        for (i, day) in self.days.iter().enumerate() {
            if !DAYS.contains(&day.to_ascii_lowercase().as_str()) {
                return Err(bad(format!("hours.days[{i}]"), format!("{day:?} is not one of {}", DAYS.join(", "))));
            }
        }
        let from = minute_of(&self.from).ok_or_else(|| bad("hours.from", format!("{:?} is not a time HH:MM", self.from)))?;
        let to = minute_of(&self.to).ok_or_else(|| bad("hours.to", format!("{:?} is not a time HH:MM", self.to)))?;
        if from == to {
            return Err(bad("hours.to", "must differ from hours.from"));
        }
        Ok(())
    }

    /// Whether the flow applies at `at`.
    pub fn contain(&self, at: DateTime<Utc>) -> bool {
        self.contain_in(None, at)
    }

    /// [`Hours::contain`] with the time zone already looked up.
    fn contain_in(&self, zone: Option<&jiff::tz::TimeZone>, at: DateTime<Utc>) -> bool {
        let tz = match zone {
            Some(zone) => zone.clone(),
            None => match jiff::tz::TimeZone::get(&self.time_zone) {
                Ok(zone) => zone,
                Err(_) => return false,
            },
        };
        let (Some(from), Some(to)) = (minute_of(&self.from), minute_of(&self.to)) else { return false };
        let Ok(ts) = jiff::Timestamp::from_second(at.timestamp()) else { return false };
        let local = ts.to_zoned(tz);
        let minute = u32::try_from(local.hour()).unwrap_or(0) * 60 + u32::try_from(local.minute()).unwrap_or(0);
        let day = usize::from(local.weekday().to_monday_zero_offset().unsigned_abs());
        let on = |d: usize| self.days.iter().any(|x| x.eq_ignore_ascii_case(DAYS[d % 7]));
        if from < to {
            on(day) && (from..to).contains(&minute)
        } else {
            (on(day) && minute >= from) || (on(day + 6) && minute < to)
        }
    }

    fn describe(&self) -> String {
        format!("{} {}-{} ({})", self.days.join(","), self.from, self.to, self.time_zone)
    }
}

fn minute_of(text: &str) -> Option<u32> {
    let (h, m) = text.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

/// A request as the flows judge it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub integration: &'a str,
    /// The flow the request names, if it names one.
    pub flow: Option<&'a str>,
    pub requester: &'a Person,
    pub access: &'a [AccessEntry],
    pub duration_seconds: u64,
    pub reason: Option<&'a str>,
    pub ticket: Option<&'a str>,
    pub at: DateTime<Utc>,
}

/// The flow that allows a request, and who counted as its approvers.
#[derive(Debug)]
pub struct Allowance<'f, 'p> {
    pub flow: &'f Flow,
    pub approvers: Vec<&'p Person>,
}

/// Why no flow allows a request: each flow considered and what did not fit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no access flow of integration {integration:?} allows it: {}", reasons.iter().map(|(f, why)| format!("flow {f:?}: {why}")).collect::<Vec<_>>().join("; "))]
pub struct Refusal {
    pub integration: String,
    /// (flow, why) for each flow considered, at most a few.
    pub reasons: Vec<(String, String)>,
}

/// Most flows named in a refusal: enough to tell what to fix, short enough to read.
const REASONS_SHOWN: usize = 5;

/// The flows of one integration, in name order, indexed by who may ask (groups, user names,
/// the literal start of principal patterns): a decision reads only the flows that can admit the
/// requester, not every flow. Built once per change of the flows (the store keeps it).
#[derive(Debug, Default)]
pub struct FlowSet {
    flows: Vec<std::sync::Arc<Flow>>,
    by_group: HashMap<String, Vec<usize>>,
    by_user: HashMap<String, Vec<usize>>,
    by_prefix: HashMap<String, Vec<usize>>,
}

impl FlowSet {
    pub fn new(mut flows: Vec<std::sync::Arc<Flow>>) -> FlowSet {
        flows.sort_by(|a, b| a.name.cmp(&b.name));
        let mut set = FlowSet { flows, ..FlowSet::default() };
        for (i, flow) in set.flows.iter().enumerate() {
            for group in &flow.requesters.groups {
                set.by_group.entry(group.clone()).or_default().push(i);
            }
            for user in &flow.requesters.users {
                set.by_user.entry(user.to_lowercase()).or_default().push(i);
            }
            for pattern in &flow.requesters.principals {
                let literal = pattern.find(['*', '?']).unwrap_or(pattern.len());
                set.by_prefix.entry(pattern[..literal].to_owned()).or_default().push(i);
            }
        }
        set
    }

    /// The flows, in name order.
    pub fn flows(&self) -> &[std::sync::Arc<Flow>] {
        &self.flows
    }

    /// Whether the set holds exactly these flows (the same parsed documents).
    pub fn holds(&self, flows: &[std::sync::Arc<Flow>]) -> bool {
        let mut mine: Vec<*const Flow> = self.flows.iter().map(std::sync::Arc::as_ptr).collect();
        let mut theirs: Vec<*const Flow> = flows.iter().map(std::sync::Arc::as_ptr).collect();
        mine.sort_unstable();
        theirs.sort_unstable();
        mine == theirs
    }

    /// The flows whose requesters can include `person` (every flow that admits them is among
    /// them), in name order.
    fn candidates(&self, person: &Person) -> Vec<usize> {
        let mut out = Vec::new();
        for group in &person.groups {
            out.extend(self.by_group.get(group).into_iter().flatten());
        }
        for user in &person.user_names {
            out.extend(self.by_user.get(&user.to_lowercase()).into_iter().flatten());
        }
        for arn in &person.arns {
            for end in (0..=arn.len()).filter(|e| arn.is_char_boundary(*e)) {
                out.extend(self.by_prefix.get(&arn[..end]).into_iter().flatten());
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// [`decide`] over the set, reading only the flows that can admit the requester.
    pub fn decide<'s, 'p>(&'s self, request: &Request, approvers: &'p [Person], owners: &BTreeSet<String>) -> Result<Allowance<'s, 'p>, Refusal> {
        self.pick(request, |flows| decide(flows, request, approvers, owners))
    }

    /// [`admitting`] over the set.
    pub fn admitting(&self, request: &Request) -> Result<&Flow, Refusal> {
        self.pick(request, |flows| admitting(flows, request))
    }

    fn pick<'s, T>(&'s self, request: &Request, choose: impl FnOnce(&[&'s Flow]) -> Result<T, Refusal>) -> Result<T, Refusal> {
        if request.flow.is_some() {
            let all: Vec<&Flow> = self.flows.iter().map(|f| f.as_ref()).collect();
            return choose(&all);
        }
        let picks = self.candidates(request.requester);
        let flows: Vec<&Flow> = picks.iter().map(|i| self.flows[*i].as_ref()).collect();
        choose(&flows).map_err(|mut refusal| {
            // The flows passed over without a look: said why, as far as a refusal shows.
            if picks.is_empty() {
                refusal.reasons.clear();
            }
            for (i, flow) in self.flows.iter().enumerate() {
                if refusal.reasons.len() >= REASONS_SHOWN {
                    break;
                }
                if picks.binary_search(&i).is_err() {
                    let why = flow.admits(request).err().unwrap_or_else(|| "not one of its requesters".into());
                    refusal.reasons.push((flow.name.clone(), why));
                }
            }
            if refusal.reasons.is_empty() {
                refusal.reasons.push(("(none)".into(), "the integration has no flows".into()));
            }
            refusal
        })
    }
}

/// The first flow (the named one, else in name order) that admits the request and whose
/// approval rule the `approvers` satisfy.
pub fn decide<'f, 'p>(flows: &[&'f Flow], request: &Request, approvers: &'p [Person], owners: &BTreeSet<String>) -> Result<Allowance<'f, 'p>, Refusal> {
    first(flows, request, |flow, asked| {
        flow.admits_with(request, asked).map_err(Why::Misfit)?;
        flow.approved_by(request.requester, approvers, owners).map_err(Why::Said)
    })
    .map(|(flow, approvers)| Allowance { flow, approvers })
}

/// The first flow (the named one, else in name order) under which the request may be asked,
/// approvals aside: where a new request at the front door goes.
pub fn admitting<'f>(flows: &[&'f Flow], request: &Request) -> Result<&'f Flow, Refusal> {
    first(flows, request, |flow, asked| flow.admits_with(request, asked).map_err(Why::Misfit)).map(|(flow, ())| flow)
}

/// Why a flow was passed over.
enum Why {
    Misfit(Misfit),
    Said(String),
}

fn first<'f, T>(flows: &[&'f Flow], request: &Request, check: impl Fn(&'f Flow, &[Option<Vec<(String, Own)>>]) -> Result<T, Why>) -> Result<(&'f Flow, T), Refusal> {
    let refusal = |reasons| Refusal { integration: request.integration.to_owned(), reasons };
    let candidates: Vec<&Flow> = match request.flow {
        Some(name) => match flows.iter().find(|f| f.name == name) {
            Some(f) => vec![f],
            None => return Err(refusal(vec![(name.to_owned(), "no such flow for this integration".into())])),
        },
        None => flows.to_vec(),
    };
    let asked = asked_of(request.access);
    let mut reasons = Vec::new();
    for flow in candidates {
        // Break-glass is chosen, never fallen into: only a request that names its flow.
        if flow.approval.break_glass && request.flow.is_none() {
            if reasons.len() < REASONS_SHOWN {
                reasons.push((flow.name.clone(), "a break-glass flow applies only to a request that names it".to_owned()));
            }
            continue;
        }
        match check(flow, &asked) {
            Ok(found) => return Ok((flow, found)),
            // Said in words only for the few flows a refusal names.
            Err(why) if reasons.len() < REASONS_SHOWN => reasons.push((flow.name.clone(), match why {
                Why::Misfit(m) => m.say(flow, request),
                Why::Said(s) => s,
            })),
            Err(_) => {}
        }
    }
    if reasons.is_empty() {
        reasons.push(("(none)".into(), "the integration has no flows".into()));
    }
    Err(refusal(reasons))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn flow(extra: serde_json::Value) -> Flow {
        let mut doc = json!({"name": "orders-read", "integrations": ["orders-prod"],
            "requesters": {"groups": ["engineers"], "users": ["john.doe@corp.com"], "principals": ["arn:aws:iam::123456789012:role/dev-*"]},
            "access": [{"database": "app", "schema": "sales", "table": "*", "privileges": ["SELECT"]},
                       {"database": "app", "schema": "*", "function": "report", "privileges": ["EXECUTE"]},
                       {"database": "app", "role": "reporting"}],
            "max_duration_seconds": 7200,
            "approval": {"approvers": {"groups": ["dba"], "users": ["jane@corp.com"], "owners": true}, "required": 1}});
        for (k, v) in extra.as_object().unwrap() {
            doc[k] = v.clone();
        }
        Flow::from_json(&doc.to_string()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn person(names: &[&str], groups: &[&str]) -> Person {
        let mut p = Person::named(names).unwrap();
        p.groups = groups.iter().map(|g| g.to_string()).collect();
        p
    }

    fn entries(v: serde_json::Value) -> Vec<AccessEntry> {
        serde_json::from_value(v).unwrap()
    }

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    fn request<'a>(requester: &'a Person, access: &'a [AccessEntry]) -> Request<'a> {
        Request { integration: "orders-prod", flow: None, requester, access, duration_seconds: 3600, reason: Some("INC-42"), ticket: None, at: at("2026-12-01T10:00:00Z") }
    }

    #[test]
    fn bad_flows_name_the_field() {
        let base = json!({"name": "f", "integrations": ["i"], "requesters": {"users": ["a"]}, "access": [{"database": "app", "privileges": ["CONNECT"]}],
            "max_duration_seconds": 60, "approval": {"auto": true}});
        assert!(Flow::from_json(&base.to_string()).is_ok());
        let cases: Vec<(serde_json::Value, &str)> = vec![
            (json!({"name": "a b"}), "name"),
            (json!({"integrations": []}), "integrations"),
            (json!({"integrations": ["x y"]}), "integrations[0]"),
            (json!({"requesters": {}}), "requesters"),
            (json!({"requesters": {"owners": true}}), "requesters.owners"),
            (json!({"requesters": {"principals": ["arn:aws:iam::12:role/x"]}}), "requesters.principals[0]"),
            (json!({"requesters": {"teams": ["x"]}}), "requesters.teams"),
            (json!({"access": []}), "access"),
            (json!({"access": [{"database": "app", "schema": "s", "table": "t", "privileges": ["EXECUTE"]}]}), "access[0].privileges"),
            (json!({"access": [{"database": "app", "role": "*"}]}), "access[0].role"),
            (json!({"max_duration_seconds": 0}), "max_duration_seconds"),
            (json!({"hours": {"time_zone": "Mars/Olympus", "days": ["mon"], "from": "08:00", "to": "18:00"}}), "hours.time_zone"),
            (json!({"hours": {"time_zone": "UTC", "days": ["funday"], "from": "08:00", "to": "18:00"}}), "hours.days[0]"),
            (json!({"hours": {"time_zone": "UTC", "days": ["mon"], "from": "8", "to": "18:00"}}), "hours.from"),
            (json!({"approval": {}}), "approval"),
            (json!({"approval": {"auto": true, "break_glass": true}}), "approval"),
            (json!({"approval": {"auto": true, "required": 2}}), "approval.required"),
            (json!({"approval": {"approvers": {"users": ["x"]}, "required": 0}}), "approval.required"),
            (json!({"approval": {"approvers": {}}}), "approval.approvers"),
            (json!({"approval": {"auto": true, "ticket_pattern": "("}}), "approval.ticket_pattern"),
            (json!({"approval": {"break_glass": true}, "max_duration_seconds": 86400}), "max_duration_seconds"),
            (json!({"max_duration": 60}), "max_duration"),
        ];
        for (change, field) in cases {
            let mut doc = base.clone();
            for (k, v) in change.as_object().unwrap() {
                doc[k] = v.clone();
            }
            let e = Flow::from_json(&doc.to_string()).unwrap_err();
            assert_eq!(e.field, field, "{change}: {e}");
        }
    }

    #[test]
    fn requests_inside_the_envelope_fit_and_others_are_named() {
        let f = flow(json!({}));
        let john = person(&["john.doe@corp.com"], &[]);
        for fits in [
            json!([{"database": "app", "schema": "sales", "table": "orders", "privileges": ["SELECT"]}]),
            json!([{"database": "app", "schema": "sales", "table": "*", "privileges": ["select"]}]),
            json!([{"database": "app", "schema": "billing", "function": "report", "arguments": ["integer"], "privileges": ["EXECUTE"]}]),
            json!([{"database": "app", "role": "reporting"}]),
        ] {
            let access = entries(fits.clone());
            assert_eq!(f.admits(&request(&john, &access)), Ok(()), "{fits}");
        }
        for (outside, index) in [
            (json!([{"database": "app", "schema": "sales", "table": "orders", "privileges": ["DELETE"]}]), 0),
            (json!([{"database": "app", "schema": "sales", "table": "orders", "privileges": ["ALL"]}]), 0),
            (json!([{"database": "app", "schema": "hr", "table": "salaries", "privileges": ["SELECT"]}]), 0),
            (json!([{"database": "app", "role": "reporting"}, {"database": "app", "role": "admin"}]), 1),
            (json!([{"database": "other", "schema": "sales", "table": "orders", "privileges": ["SELECT"]}]), 0),
            (json!([{"database": "app", "privileges": ["CREATE"]}]), 0),
            (json!([{"database": "other", "privileges": ["CONNECT"]}]), 0),
            // A table's USAGE and CONNECT come with it; asked alone they need entries of their own.
            (json!([{"database": "app", "schema": "sales", "privileges": ["USAGE"]}]), 0),
            (json!([{"database": "app", "schema": "hr", "privileges": ["USAGE"]}]), 0),
            (json!([{"database": "app", "privileges": ["CONNECT"]}]), 0),
            (json!([{"database": "app", "schema": "sales", "sequence": "*", "privileges": ["USAGE"]}]), 0),
            (json!([{"database": "app", "schema": "billing", "function": "other", "privileges": ["EXECUTE"]}]), 0),
        ] {
            let access = entries(outside.clone());
            let why = f.admits(&request(&john, &access)).unwrap_err();
            assert!(why.starts_with(&format!("access[{index}]")), "{outside}: {why}");
        }
        // A named table in the envelope does not cover "every table".
        let narrow = flow(json!({"access": [{"database": "app", "schema": "sales", "table": "orders", "privileges": ["SELECT"]}]}));
        let all = entries(json!([{"database": "app", "schema": "sales", "table": "*", "privileges": ["SELECT"]}]));
        assert!(narrow.admits(&request(&john, &all)).is_err());
    }

    #[test]
    fn who_may_ask_how_long_when_and_why() {
        let f = flow(json!({"hours": {"time_zone": "Europe/Berlin", "days": ["mon", "tue", "wed", "thu", "fri"], "from": "08:00", "to": "18:00"},
            "approval": {"approvers": {"groups": ["dba"]}, "reason_required": true, "ticket_pattern": "INC-[0-9]+"}}));
        let access = entries(json!([{"database": "app", "schema": "sales", "table": "orders", "privileges": ["SELECT"]}]));
        let engineer = person(&["arn:aws:sts::123456789012:assumed-role/AWSReservedSSO_Eng_1/ann@corp.com"], &["engineers"]);
        let dev = person(&["arn:aws:sts::123456789012:assumed-role/dev-bob/bob"], &[]);
        let stranger = person(&["eve@corp.com"], &["visitors"]);
        let ok = Request { ticket: Some("INC-42"), ..request(&engineer, &access) };
        assert_eq!(f.admits(&ok), Ok(()));
        assert_eq!(f.admits(&Request { requester: &dev, ..ok }), Ok(()), "principal pattern");
        assert!(f.admits(&Request { requester: &stranger, ..ok }).unwrap_err().contains("not one of its requesters"));
        assert!(f.admits(&Request { duration_seconds: 7201, ..ok }).unwrap_err().contains("max_duration_seconds"));
        // Tuesday 1 December 2026, 10:00 UTC is 11:00 in Berlin; 17:30 UTC is 18:30 there; Saturday is off.
        assert!(f.admits(&Request { at: at("2026-12-01T17:30:00Z"), ..ok }).unwrap_err().contains("applies only"));
        assert!(f.admits(&Request { at: at("2026-12-05T10:00:00Z"), ..ok }).is_err());
        assert!(f.admits(&Request { at: at("2026-12-01T06:59:00Z"), ..ok }).is_err());
        assert_eq!(f.admits(&Request { at: at("2026-12-01T07:00:00Z"), ..ok }), Ok(()));
        assert!(f.admits(&Request { reason: Some("  "), ..ok }).unwrap_err().contains("reason"));
        assert!(f.admits(&Request { ticket: Some("INC-42x"), ..ok }).unwrap_err().contains("ticket"));
        assert!(f.admits(&Request { ticket: None, ..ok }).is_err());
    }

    #[test]
    fn overnight_hours_run_into_the_next_day() {
        let h = Hours { time_zone: "UTC".into(), days: vec!["fri".into()], from: "22:00".into(), to: "02:00".into() };
        assert!(h.contain(at("2026-12-04T23:00:00Z")), "Friday night");
        assert!(h.contain(at("2026-12-05T01:59:00Z")), "early Saturday belongs to Friday's window");
        assert!(!h.contain(at("2026-12-05T02:00:00Z")));
        assert!(!h.contain(at("2026-12-05T23:00:00Z")), "Saturday night is not Friday's");
    }

    #[test]
    fn approvals_count_distinct_allowed_people_never_the_requester() {
        let f = flow(json!({"approval": {"approvers": {"groups": ["dba"], "users": ["jane@corp.com"], "owners": true}, "required": 2}}));
        let requester = person(&["john.doe@corp.com", "arn:aws:iam::123456789012:user/john"], &["engineers"]);
        let jane = person(&["jane@corp.com"], &[]);
        let jane_sso = person(&["arn:aws:sts::123456789012:assumed-role/AWSReservedSSO_Dba_2/jane@corp.com"], &["dba"]);
        let dave = person(&["dave@corp.com"], &["dba"]);
        let olga = person(&["olga@corp.com"], &["orders-team"]);
        let owners: BTreeSet<String> = ["orders-team".to_owned()].into();
        let none = BTreeSet::new();
        assert_eq!(f.approved_by(&requester, &[jane.clone(), dave.clone()], &none).unwrap().len(), 2);
        assert_eq!(f.approved_by(&requester, &[olga.clone(), dave.clone()], &owners).unwrap().len(), 2, "the owners' group");
        assert!(f.approved_by(&requester, &[olga.clone(), dave.clone()], &none).unwrap_err().contains("not one of its approvers"));
        let twice = f.approved_by(&requester, &[jane.clone(), jane_sso], &none).unwrap_err();
        assert!(twice.contains("same person"), "{twice}");
        for self_approval in [person(&["john"], &["dba"]), person(&["JOHN.DOE@corp.com"], &["dba"]), person(&["arn:aws:iam::123456789012:user/john"], &["dba"])] {
            let e = f.approved_by(&requester, &[self_approval, jane.clone()], &none).unwrap_err();
            assert!(e.contains("is the requester"), "{e}");
        }
        let auto = flow(json!({"approval": {"auto": true}}));
        assert!(auto.approved_by(&requester, &[], &none).unwrap().is_empty());
    }

    #[test]
    fn the_indexed_set_decides_as_every_flow_read_would() {
        let flows: Vec<std::sync::Arc<Flow>> = (0..40)
            .map(|i| {
                let requesters = match i % 4 {
                    0 => json!({"groups": [format!("g{i}")]}),
                    1 => json!({"users": [format!("User{i}@corp.com")]}),
                    2 => json!({"principals": [format!("arn:aws:iam::123456789012:role/team{i}-*")]}),
                    _ => json!({"principals": ["arn:aws:sts::123456789012:assumed-role/*"]}),
                };
                std::sync::Arc::new(flow(json!({"name": format!("f{i:02}"), "requesters": requesters, "max_duration_seconds": 60 * (i + 1)})))
            })
            .collect();
        let set = FlowSet::new(flows.clone());
        let all: Vec<&Flow> = flows.iter().map(|f| f.as_ref()).collect();
        let jane = [person(&["jane@corp.com"], &[])];
        let none = BTreeSet::new();
        let access = entries(json!([{"database": "app", "schema": "sales", "table": "orders", "privileges": ["SELECT"]}]));
        for (names, groups) in [
            (vec!["arn:aws:sts::123456789012:assumed-role/team6-x/bob"], vec![]),
            (vec!["user5@corp.com"], vec![]),
            (vec!["nobody@corp.com"], vec!["g8", "g12"]),
            (vec!["arn:aws:iam::123456789012:user/zed"], vec![]),
        ] {
            let p = person(&names, &groups);
            for duration in [60, 400, 5000] {
                let r = Request { duration_seconds: duration, ..request(&p, &access) };
                let indexed = set.decide(&r, &jane, &none).map(|a| a.flow.name.clone());
                let read_all = decide(&all, &r, &jane, &none).map(|a| a.flow.name.clone());
                assert_eq!(indexed.is_ok(), read_all.is_ok(), "{names:?} {duration}");
                if let (Ok(a), Ok(b)) = (&indexed, &read_all) {
                    assert_eq!(a, b, "{names:?} {duration}");
                }
            }
        }
        assert!(set.holds(&flows) && !set.holds(&flows[1..]));
        let stranger = person(&["eve@corp.com"], &[]);
        let refused = FlowSet::new(flows[..3].to_vec()).decide(&request(&stranger, &access), &jane, &none).unwrap_err();
        assert_eq!(refused.reasons.len(), 3, "{refused}");
        assert!(refused.reasons.iter().all(|(_, why)| why.contains("not one of its requesters")), "{refused}");
    }

    #[test]
    fn decide_picks_the_named_or_first_fitting_flow_and_says_why_not() {
        let read = flow(json!({"name": "a-read"}));
        let glass = flow(json!({"name": "b-glass", "approval": {"break_glass": true}, "max_duration_seconds": 3600,
            "access": [{"database": "app", "schema": "*", "table": "*", "privileges": ["ALL"]}]}));
        let flows = [&read, &glass];
        let john = person(&["john.doe@corp.com"], &[]);
        let jane = person(&["jane@corp.com"], &[]);
        let write = entries(json!([{"database": "app", "schema": "sales", "table": "orders", "privileges": ["DELETE"]}]));
        let none = BTreeSet::new();
        let unnamed = decide(&flows, &request(&john, &write), &[], &none).unwrap_err();
        assert!(unnamed.to_string().contains("applies only to a request that names it"), "break-glass is never fallen into: {unnamed}");
        let chosen = decide(&flows, &Request { flow: Some("b-glass"), ..request(&john, &write) }, &[], &none).unwrap();
        assert_eq!(chosen.flow.name, "b-glass");
        let refused = decide(&flows, &Request { reason: None, flow: Some("b-glass"), ..request(&john, &write) }, &[], &none).unwrap_err();
        assert_eq!(refused.reasons.len(), 1, "{refused}");
        assert!(refused.to_string().contains("flow \"b-glass\": break-glass needs a reason"), "{refused}");
        let read_access = entries(json!([{"database": "app", "schema": "sales", "table": "orders", "privileges": ["SELECT"]}]));
        let approved = [jane];
        assert_eq!(decide(&flows, &request(&john, &read_access), &approved, &none).unwrap().flow.name, "a-read");
        let named = decide(&flows, &Request { flow: Some("nope"), ..request(&john, &read_access) }, &approved, &none).unwrap_err();
        assert!(named.to_string().contains("no such flow"));
        assert!(decide(&[], &request(&john, &read_access), &approved, &none).is_err());
    }
}
