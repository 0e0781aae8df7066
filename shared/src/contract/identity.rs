//! Who someone is, as pgjit compares people: ARNs taken apart (pure, no I/O), and a person
//! as every name they were given, so "the requester approving itself under another id form"
//! and "one person counted twice toward `required`" are caught whatever form each name takes.
//!
//! Names a person can carry:
//! - a user name (`jane@corp.com`): an IAM Identity Center user, or an approval tool's id;
//! - an IAM user's ARN: that user (its name also counts as a user name, to be safe);
//! - an assumed-role session's ARN: for an Identity Center permission set's role
//!   (`AWSReservedSSO_*`), the Identity Center user its session names; for any other role, the
//!   role plus its session name, matched by flows only through ARN patterns.
//!
//! "Same person" errs toward yes: two names that could be one person count as one, which can
//! only refuse an approval, never widen one.

use std::collections::{BTreeSet, HashSet};

/// The IAM principal a requester's ARN names: users and roles as they are, and an STS
/// assumed-role session as the role it was assumed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    User(String),
    Role(String),
}

/// A requester's ARN, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requester {
    pub partition: String,
    pub account: String,
    pub principal: Principal,
    /// The IAM path (`/` or `/team/…/`); unknown (None) for an assumed-role session.
    pub path: Option<String>,
    /// The session name of an assumed-role ARN.
    pub session: Option<String>,
}

const PARTITIONS: [&str; 3] = ["aws", "aws-cn", "aws-us-gov"];

pub fn principal_of(arn: &str) -> Result<Principal, String> {
    requester_of(arn).map(|r| r.principal)
}

pub fn requester_of(arn: &str) -> Result<Requester, String> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    if parts.len() != 6 || parts[0] != "arn" || parts[4].len() != 12 || !parts[4].bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{arn:?} is not an IAM ARN (arn:aws:iam::<account>:user/… or role/…)"));
    }
    if !PARTITIONS.contains(&parts[1]) {
        return Err(format!("{arn:?}: unknown partition {:?}", parts[1]));
    }
    let (service, resource) = (parts[2], parts[5]);
    let valid = |name: &str| !name.is_empty() && name.len() <= 128 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b));
    let split_path = |rest: &str| match rest.rsplit_once('/') {
        Some((path, name)) => (format!("/{path}/"), name.to_owned()),
        None => ("/".to_owned(), rest.to_owned()),
    };
    let (principal, path, session) = match (service, resource.split_once('/')) {
        ("iam", Some(("user", rest))) => {
            let (path, name) = split_path(rest);
            (Principal::User(name), Some(path), None)
        }
        ("iam", Some(("role", rest))) => {
            let (path, name) = split_path(rest);
            (Principal::Role(name), Some(path), None)
        }
        ("sts", Some(("assumed-role", rest))) => match rest.split_once('/') {
            // A session name is 2-64 of [\w+=,.@-] (STS's rule): no `*` or `?`, which would
            // widen the `aws:userid` pattern that pins a secret to this session.
            Some((role, session))
                if (2..=64).contains(&session.len()) && session.bytes().all(|b| b.is_ascii_alphanumeric() || b"_+=,.@-".contains(&b)) =>
            {
                (Principal::Role(role.to_owned()), None, Some(session.to_owned()))
            }
            _ => return Err(format!("{arn:?}: an assumed-role ARN ends in <role>/<session>, the session name 2-64 of letters, digits and _+=,.@-")),
        },
        _ => return Err(format!("{arn:?} names neither an IAM user, an IAM role nor an assumed role")),
    };
    match &principal {
        Principal::User(n) | Principal::Role(n) if valid(n) => {}
        _ => return Err(format!("{arn:?} has no valid principal name")),
    }
    if path.as_deref().is_some_and(|p| p.contains("//")) {
        return Err(format!("{arn:?} has an empty path segment"));
    }
    Ok(Requester { partition: parts[1].to_owned(), account: parts[4].to_owned(), principal, path, session })
}

impl Requester {
    /// Patterns for `aws:PrincipalArn` that match this principal and no other, whatever its path
    /// (an assumed-role ARN does not carry the role's path).
    pub fn principal_arn_patterns(&self) -> Vec<String> {
        let (kind, name) = match &self.principal {
            Principal::User(n) => ("user", n),
            Principal::Role(n) => ("role", n),
        };
        let base = format!("arn:{}:iam::{}:{kind}", self.partition, self.account);
        match &self.path {
            Some(path) => vec![format!("{base}{path}{name}")],
            None => vec![format!("{base}/{name}"), format!("{base}/*/{name}")],
        }
    }
}

/// FNV-1a: group names are short and come from the Identity Store, not from an attacker who
/// could choose colliding ones.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut hash = if self.0 == 0 { 0xcbf2_9ce4_8422_2325 } else { self.0 };
        for b in bytes {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = hash;
    }
}

/// The hasher of [`Person::groups`].
pub type GroupHasher = std::hash::BuildHasherDefault<Fnv>;

/// The prefix of the roles IAM Identity Center makes for permission sets; a session of one is
/// the person its session name names.
pub const IDENTITY_CENTER_ROLE_PREFIX: &str = "AWSReservedSSO_";

/// A person, with every form of name they were given and, once resolved through the Identity
/// Store, their user id and groups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Person {
    /// How they were first named, for messages.
    pub named: String,
    /// Identity Center (or approval tool) user names: what a flow's `users` match.
    pub user_names: Vec<String>,
    /// ARNs they act as: an IAM user's ARN; a session's assumed-role ARN and its role's ARN
    /// (without path, which a session ARN does not carry). What a flow's `principals` match.
    pub arns: Vec<String>,
    /// The Identity Store's user id, once resolved.
    pub user_id: Option<String>,
    /// Identity Center group display names, once resolved: what a flow's `groups` match (a
    /// hash set with a short-string hasher: a decision looks a person's groups up once or twice
    /// per flow, over every flow).
    pub groups: HashSet<String, GroupHasher>,
    /// Other keys that say "same person" (a role session, an IAM user's name).
    extra_keys: BTreeSet<String>,
    /// The Identity Center permission-set sessions a user name was taken from: (account, role,
    /// session). A role's name alone does not prove it is Identity Center's: the caller checks
    /// the role ([`Person::not_identity_center`] undoes the user name where it is not).
    pub identity_center_sessions: Vec<(String, String, String)>,
}

impl Person {
    /// A person named by each of `names` (user names or ARNs), e.g. an approval's requester id
    /// and IAM ARN. Empty names are skipped; an ARN that names no person is refused.
    pub fn named(names: &[&str]) -> Result<Person, String> {
        let mut person = Person::default();
        for name in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
            if person.named.is_empty() {
                person.named = name.to_owned();
            }
            person.add(name)?;
        }
        if person.named.is_empty() {
            return Err("no name given".into());
        }
        Ok(person)
    }

    fn add(&mut self, name: &str) -> Result<(), String> {
        if !name.starts_with("arn:") {
            push_new(&mut self.user_names, name);
            return Ok(());
        }
        let r = requester_of(name)?;
        match (&r.principal, &r.session) {
            (Principal::User(user), _) => {
                push_new(&mut self.arns, name);
                self.extra_keys.insert(format!("user:{}", user.to_lowercase()));
            }
            (Principal::Role(role), Some(session)) => {
                push_new(&mut self.arns, name);
                push_new(&mut self.arns, &format!("arn:{}:iam::{}:role/{role}", r.partition, r.account));
                if role.starts_with(IDENTITY_CENTER_ROLE_PREFIX) {
                    push_new(&mut self.user_names, session);
                    self.identity_center_sessions.push((r.account.clone(), role.clone(), session.clone()));
                } else {
                    self.extra_keys.insert(format!("session:{}/{}/{}", r.account, role.to_lowercase(), session.to_lowercase()));
                    self.extra_keys.insert(format!("user:{}", session.to_lowercase()));
                }
            }
            (Principal::Role(role), None) => {
                return Err(format!("{name:?} names the role {role:?}, not a person: name a user or a session of the role"));
            }
        }
        Ok(())
    }

    /// This person known also by everything `other` (the same person, resolved apart) carries.
    pub fn joined(mut self, other: &Person) -> Person {
        for name in &other.user_names {
            push_new(&mut self.user_names, name);
        }
        for arn in &other.arns {
            push_new(&mut self.arns, arn);
        }
        self.groups.extend(other.groups.iter().cloned());
        self.extra_keys.extend(other.extra_keys.iter().cloned());
        self.identity_center_sessions.extend(other.identity_center_sessions.iter().cloned());
        if self.user_id.is_none() {
            self.user_id.clone_from(&other.user_id);
        }
        self
    }

    /// Takes back the user name a session of `role` in `account` gave: the role is not one of
    /// Identity Center's (or cannot be shown to be). The session stays a plain role session.
    pub fn not_identity_center(&mut self, account: &str, role: &str) {
        let taken: Vec<String> = self.identity_center_sessions.iter().filter(|(a, r, _)| a == account && r == role).map(|(_, _, s)| s.clone()).collect();
        self.identity_center_sessions.retain(|(a, r, _)| !(a == account && r == role));
        for session in taken {
            // A name given some other way too (a user name of its own) stays.
            let named_otherwise = self.identity_center_sessions.iter().any(|(_, _, s)| *s == session);
            if !named_otherwise {
                self.user_names.retain(|u| *u != session);
            }
            self.extra_keys.insert(format!("session:{account}/{}/{}", role.to_lowercase(), session.to_lowercase()));
            self.extra_keys.insert(format!("user:{}", session.to_lowercase()));
        }
    }

    /// Every key that identifies this person; two people sharing one are the same person.
    pub fn keys(&self) -> BTreeSet<String> {
        let mut keys = self.extra_keys.clone();
        keys.extend(self.user_names.iter().map(|u| format!("user:{}", u.to_lowercase())));
        keys.extend(self.arns.iter().filter(|a| a.contains(":iam::") && a.contains(":user/")).map(|a| format!("arn:{}", a.to_lowercase())));
        keys.extend(self.user_id.iter().map(|id| format!("id:{id}")));
        keys
    }

    pub fn same_as(&self, other: &Person) -> bool {
        let mine = self.keys();
        other.keys().iter().any(|k| mine.contains(k))
    }

    /// Whether one of the person's user names is `name` (user names compare case-insensitively,
    /// as Identity Center's do).
    pub fn has_user_name(&self, name: &str) -> bool {
        self.user_names.iter().any(|u| u.eq_ignore_ascii_case(name))
    }

    /// Whether one of the person's ARNs matches `pattern` (IAM's `StringLike`: `*` any run,
    /// `?` one character, case-sensitive).
    pub fn matches_principal(&self, pattern: &str) -> bool {
        self.arns.iter().any(|arn| glob_matches(pattern, arn))
    }

    pub fn in_group(&self, group: &str) -> bool {
        self.groups.contains(group)
    }
}

fn push_new(list: &mut Vec<String>, value: &str) {
    if !list.iter().any(|v| v == value) {
        list.push(value.to_owned());
    }
}

/// IAM's `StringLike`: `*` matches any run of characters, `?` exactly one; case-sensitive.
/// Byte-wise (ARNs are ASCII), with the pattern's literal start compared first: a decision
/// over many flows mostly stops there.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let literal = p.iter().position(|b| *b == b'*' || *b == b'?').unwrap_or(p.len());
    if !t.starts_with(&p[..literal]) {
        return false;
    }
    if literal == p.len() {
        return t.len() == p.len();
    }
    if !pattern.is_ascii() || !text.is_ascii() {
        return glob_chars(pattern, text);
    }
    glob(&p[literal..], &t[literal..], b'*', b'?')
}

/// IAM's `StringLike` over characters, where `?` must match one whole non-ASCII character.
fn glob_chars(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    glob(&p, &t, '*', '?')
}

/// `*` any run, `?` one item: the matcher with one remembered star (linear backtracking).
fn glob<T: PartialEq + Copy>(p: &[T], t: &[T], any: T, one: T) -> bool {
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == one || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == any {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == any)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SSO: &str = "arn:aws:sts::123456789012:assumed-role/AWSReservedSSO_Engineer_0123456789abcdef/jane@corp.com";

    #[test]
    fn one_person_under_several_names_is_one_person() {
        let jane = Person::named(&["jane@corp.com"]).unwrap();
        let jane_session = Person::named(&[SSO]).unwrap();
        assert!(jane.same_as(&jane_session), "the Identity Center session is the user it names");
        assert!(Person::named(&["JANE@corp.com"]).unwrap().same_as(&jane), "user names compare case-insensitively");
        let john = Person::named(&["john.doe@corp.com", "arn:aws:iam::123456789012:user/john"]).unwrap();
        assert!(john.same_as(&Person::named(&["john"]).unwrap()), "an IAM user's name counts as a name of theirs");
        assert!(john.same_as(&Person::named(&["arn:aws:iam::123456789012:user/john"]).unwrap()));
        assert!(!john.same_as(&jane));
        let ops = Person::named(&["arn:aws:sts::123456789012:assumed-role/ops/jane@corp.com"]).unwrap();
        assert!(ops.same_as(&jane), "a role session named like a user is taken as that user, to be safe");
        assert!(ops.user_names.is_empty(), "but its session name never matches a flow's users");
        let joined = Person::named(&[SSO]).unwrap().joined(&john);
        assert!(joined.same_as(&john) && joined.same_as(&jane) && joined.has_user_name("john.doe@corp.com"), "one person under both sets of names");
        let mut resolved = Person::named(&["j.doe"]).unwrap();
        resolved.user_id = Some("u-1".into());
        let mut by_mail = Person::named(&["jane.doe@corp.com"]).unwrap();
        by_mail.user_id = Some("u-1".into());
        assert!(resolved.same_as(&by_mail), "two names of one Identity Store user");
    }

    #[test]
    fn a_role_is_not_a_person() {
        assert!(Person::named(&["arn:aws:iam::123456789012:role/admin"]).is_err());
        assert!(Person::named(&["arn:aws:s3:::bucket"]).is_err());
        assert!(Person::named(&["", " "]).is_err());
    }

    #[test]
    fn principal_patterns_are_iams_string_like() {
        let p = Person::named(&["arn:aws:sts::123456789012:assumed-role/dev-alice/alice"]).unwrap();
        assert!(p.matches_principal("arn:aws:iam::123456789012:role/dev-*"));
        assert!(p.matches_principal("arn:aws:sts::123456789012:assumed-role/dev-alice/*"));
        assert!(!p.matches_principal("arn:aws:iam::123456789012:role/Dev-*"), "case-sensitive");
        assert!(!p.matches_principal("arn:aws:iam::210987654321:role/*"));
        for (pattern, text, yes) in [("a*b?c", "axxbyc", true), ("a*b?c", "abc", false), ("*", "", true), ("a**", "a", true), ("?", "", false),
            ("abc", "abc", true), ("abc", "abcd", false), ("ab", "abc", false), ("a?c", "aéc", true), ("a*é", "xaé", false), ("*é", "xaé", true)] {
            assert_eq!(glob_matches(pattern, text), yes, "{pattern} {text}");
        }
    }
}
