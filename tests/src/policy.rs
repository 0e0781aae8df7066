//! IAM's evaluation of a resource policy, for the callers that matter: moto stores the policies
//! pgjit writes but never evaluates them, so a test reads a policy back and asks here whether a
//! caller gets through it.
//!
//! What it follows (AWS's "Policy evaluation logic" and "IAM JSON policy elements: Condition
//! operators"): an explicit Deny that matches wins; a statement matches when its principal,
//! action and every condition operator match; within one operator the keys are ANDed and a
//! key's values ORed (for the negated operators: the value matches none of them); a missing key
//! makes a positive operator false and a negated one true. `*` and `?` are the wildcards of
//! `…Like`. The caller is taken to be in the policy's account with an identity policy that
//! allows the action, so what the resource policy denies is what decides.

use serde_json::Value;

/// Who calls, as IAM's request context has it.
#[derive(Debug, Clone)]
pub struct Caller {
    /// `aws:PrincipalArn`: for an assumed-role session, its role's ARN (with the role's path).
    pub principal_arn: String,
    /// `aws:userid`: `<role id>:<session name>` for a session, the user's id for an IAM user.
    pub userid: String,
    pub account: String,
    /// The session's own ARN (`arn:aws:sts::<account>:assumed-role/<role>/<session>`), which a
    /// policy may name as a role session principal; None for an IAM user.
    pub session_arn: Option<String>,
    /// `aws:CurrentTime`.
    pub now: chrono::DateTime<chrono::Utc>,
}

impl Caller {
    /// A session of role `role_path_and_name` (e.g. `aws-reserved/sso.amazonaws.com/AWSReservedSSO_Dev_1`).
    pub fn session(
        account: &str,
        role_path_and_name: &str,
        role_id: &str,
        session: &str,
    ) -> Caller {
        let role = role_path_and_name
            .rsplit('/')
            .next()
            .unwrap_or(role_path_and_name);
        Caller {
            principal_arn: format!("arn:aws:iam::{account}:role/{role_path_and_name}"),
            userid: format!("{role_id}:{session}"),
            account: account.into(),
            session_arn: Some(format!(
                "arn:aws:sts::{account}:assumed-role/{role}/{session}"
            )),
            now: chrono::Utc::now(),
        }
    }

    /// An IAM user.
    pub fn user(account: &str, path_and_name: &str, user_id: &str) -> Caller {
        Caller {
            principal_arn: format!("arn:aws:iam::{account}:user/{path_and_name}"),
            userid: user_id.into(),
            account: account.into(),
            session_arn: None,
            now: chrono::Utc::now(),
        }
    }

    /// The same caller at another time.
    pub fn at(mut self, now: chrono::DateTime<chrono::Utc>) -> Caller {
        self.now = now;
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    Denied,
}

/// Whether `caller` may do `action` on the resource under `policy` (its JSON text).
pub fn evaluate(policy: &str, caller: &Caller, action: &str) -> Decision {
    let policy: Value = serde_json::from_str(policy).expect("a policy is JSON");
    let statements = match &policy["Statement"] {
        Value::Array(list) => list.clone(),
        one => vec![one.clone()],
    };
    let matching = |effect: &str| {
        statements
            .iter()
            .filter(|s| s["Effect"] == effect)
            .any(|s| applies(s, caller, action))
    };
    if matching("Deny") {
        Decision::Denied
    } else {
        // Same account: the identity policy's Allow suffices where no Deny matches.
        Decision::Allowed
    }
}

/// Whether `caller` may assume a role under its trust policy (`policy`, JSON text). Unlike a
/// resource policy in the caller's own account, a trust policy must itself allow the caller:
/// IAM's evaluation for `sts:AssumeRole` needs an Allow in the role's trust policy whatever the
/// caller's identity policies say, and any matching Deny wins.
pub fn evaluate_trust(policy: &str, caller: &Caller) -> Decision {
    let policy: Value = serde_json::from_str(policy).expect("a policy is JSON");
    let statements = match &policy["Statement"] {
        Value::Array(list) => list.clone(),
        one => vec![one.clone()],
    };
    let matching = |effect: &str| {
        statements
            .iter()
            .filter(|s| s["Effect"] == effect)
            .any(|s| applies(s, caller, "sts:AssumeRole"))
    };
    if !matching("Deny") && matching("Allow") {
        Decision::Allowed
    } else {
        Decision::Denied
    }
}

fn strings(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) => vec![s.clone()],
        Value::Array(list) => list
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

fn applies(statement: &Value, caller: &Caller, action: &str) -> bool {
    let principal_matches = match &statement["Principal"] {
        Value::String(s) if s == "*" => true,
        Value::Object(map) => map
            .get("AWS")
            .map(strings)
            .unwrap_or_default()
            .iter()
            .any(|p| {
                p == "*"
                    || p == &caller.principal_arn
                    || Some(p) == caller.session_arn.as_ref()
                    || p == &format!("arn:aws:iam::{}:root", caller.account)
                    || p == &caller.account
            }),
        _ => false,
    };
    let action_matches = strings(&statement["Action"])
        .iter()
        .any(|a| like(a, action));
    principal_matches && action_matches && conditions_hold(&statement["Condition"], caller)
}

fn conditions_hold(condition: &Value, caller: &Caller) -> bool {
    let Some(operators) = condition.as_object() else {
        return true;
    };
    operators.iter().all(|(operator, keys)| {
        keys.as_object()
            .expect("condition keys are an object")
            .iter()
            .all(|(key, values)| {
                let values = strings(values);
                if operator.starts_with("Date") {
                    assert_eq!(
                        key, "aws:CurrentTime",
                        "the evaluator compares only aws:CurrentTime as a date"
                    );
                    let at = |v: &String| {
                        chrono::DateTime::parse_from_rfc3339(v)
                            .expect("an ISO 8601 time")
                            .with_timezone(&chrono::Utc)
                    };
                    return match operator.as_str() {
                        "DateLessThan" => values.iter().any(|v| caller.now < at(v)),
                        "DateGreaterThan" => values.iter().any(|v| caller.now > at(v)),
                        other => panic!("the evaluator does not know condition operator {other}"),
                    };
                }
                let actual = match key.as_str() {
                    "aws:PrincipalArn" => Some(caller.principal_arn.as_str()),
                    "aws:userid" => Some(caller.userid.as_str()),
                    "aws:PrincipalAccount" => Some(caller.account.as_str()),
                    other => panic!("the evaluator does not know condition key {other}"),
                };
                let any = |f: &dyn Fn(&str, &str) -> bool| {
                    actual.is_some_and(|a| values.iter().any(|v| f(v, a)))
                };
                match operator.as_str() {
                    "StringEquals" | "ArnEquals" => any(&|v, a| v == a),
                    "StringNotEquals" | "ArnNotEquals" => !any(&|v, a| v == a),
                    "StringLike" | "ArnLike" => any(&|v, a| like(v, a)),
                    "StringNotLike" | "ArnNotLike" => !any(&|v, a| like(v, a)),
                    other => panic!("the evaluator does not know condition operator {other}"),
                }
            })
    })
}

/// IAM's wildcard match: `*` any run of characters, `?` one, case-sensitive.
pub fn like(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_and_operators_as_iam_reads_them() {
        assert!(like("arn:aws:iam::1:role/*/x", "arn:aws:iam::1:role/a/b/x"));
        assert!(
            like("*:john", "AROA1:john")
                && !like("*:john", "AROA1:johnny")
                && !like("*:john", "AROA1:jo")
        );
        assert!(like("a?c", "abc") && !like("a?c", "ac"));
        let policy = serde_json::json!({"Statement": [{"Effect": "Deny", "Principal": "*", "Action": "s:Get",
            "Condition": {"ArnNotLike": {"aws:PrincipalArn": ["arn:aws:iam::1:user/ann"]}, "StringNotLike": {"aws:userid": ["*:ann"]}}}]})
        .to_string();
        let ann = Caller::user("1", "ann", "AIDA1");
        let bob = Caller::user("1", "bob", "AIDA2");
        let ann_session = Caller::session("1", "r", "AROA1", "ann");
        assert_eq!(
            evaluate(&policy, &ann, "s:Get"),
            Decision::Allowed,
            "not ArnNotLike: the Deny does not match"
        );
        assert_eq!(evaluate(&policy, &bob, "s:Get"), Decision::Denied);
        assert_eq!(
            evaluate(&policy, &ann_session, "s:Get"),
            Decision::Allowed,
            "the userid spares it"
        );
        assert_eq!(
            evaluate(&policy, &bob, "s:Put"),
            Decision::Allowed,
            "another action"
        );
    }
}
