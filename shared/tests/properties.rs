//! Property tests (proptest) over everything that reads untrusted input: event parsing, access
//! validation, integration validation, webhook signatures, identifier quoting and role names.
//! Bounded: `PROPTEST_CASES` cases per property (proptest's default, 256, in CI); failures are
//! kept in `proptest-regressions/` and replayed first on every run.

use pgjit::access::{check_identifier, is_profile_role, login_role_name, AccessEntry, AccessSet, Object, Target};
use pgjit::engine::postgres::{ident, literal};
use proptest::prelude::*;
use serde_json::{json, Value};

/// Names a hostile request might carry: quotes, semicolons, comments, backslashes, NUL, lookalikes,
/// and lengths around PostgreSQL's 63-byte limit.
fn hostile_name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z_]{1,10}",
        "[a-zA-Z0-9 \"';\\-\\\\/*.]{0,20}",
        Just("x\"; DROP TABLE sales.orders; --".to_owned()),
        Just("orders\u{0}".to_owned()),
        Just("оrders".to_owned()), // Cyrillic о
        Just("*".to_owned()),
        Just("é".repeat(32)),
        "[a-z]{60,70}",
        any::<String>(),
    ]
}

fn entry() -> impl Strategy<Value = AccessEntry> {
    let privileges = prop::collection::vec(
        prop_oneof![Just("SELECT"), Just("insert"), Just("ALL"), Just("USAGE"), Just("EXECUTE"), Just("CONNECT"), Just("TEMP"), Just("DROP"), Just("")].prop_map(str::to_owned),
        0..4,
    );
    (hostile_name(), prop::option::of(hostile_name()), prop::option::of(hostile_name()), prop::option::of(hostile_name()), prop::option::of(hostile_name()), privileges).prop_map(
        |(database, schema, table, function, role, privileges)| AccessEntry { database, schema, table, function, role, privileges, ..Default::default() },
    )
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![Just(Value::Null), any::<bool>().prop_map(Value::from), any::<i64>().prop_map(Value::from), hostile_name().prop_map(Value::from)];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(prop_oneof![hostile_name(), Just("request_id".to_owned()), Just("access".to_owned()), Just("detail".to_owned())], inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn access_validation_never_panics_and_keeps_names_valid(entries in prop::collection::vec(entry(), 0..5)) {
        if let Ok(set) = AccessSet::from_entries(&entries) {
            for (database, access) in &set.databases {
                prop_assert!(check_identifier(database).is_ok());
                let profile = access.profile_role("pgjit_", database);
                prop_assert!(profile.len() <= 63 && is_profile_role(&profile, "pgjit_"));
                for object in access.objects.keys() {
                    let names: Vec<&str> = match object {
                        Object::Database => vec![],
                        Object::Schema { schema } => vec![schema],
                        Object::Table { schema, table: t } | Object::Sequence { schema, sequence: t } | Object::Function { schema, function: t, .. } => {
                            match t { Target::All => vec![schema.as_str()], Target::Named(n) => vec![schema.as_str(), n.as_str()] }
                        }
                    };
                    for n in names {
                        prop_assert!(check_identifier(n).is_ok(), "{n:?}");
                    }
                }
                for r in &access.roles {
                    prop_assert!(check_identifier(r).is_ok());
                }
            }
        }
    }

    #[test]
    fn approvals_parse_or_fail_cleanly(detail in json_value(), wrap in any::<bool>()) {
        let event = if wrap { json!({"detail-type": "Access Request Approved", "detail": detail}) } else { detail };
        if let Ok(a) = pgjit::contract::events::parse_approval(event) {
            prop_assert!(pgjit::contract::events::check_request_id(&a.request_id).is_ok());
            prop_assert!(a.duration_seconds > 0);
        }
    }

    #[test]
    fn revokes_parse_or_fail_cleanly(value in json_value()) {
        if let Ok(r) = pgjit::contract::events::parse_revoke(value) {
            prop_assert!(pgjit::contract::events::check_request_id(&r.request_id).is_ok());
        }
    }

    #[test]
    fn integrations_parse_or_fail_with_a_field(text in prop_oneof![any::<String>(), json_value().prop_map(|v| v.to_string())]) {
        match pgjit::contract::integration::Integration::from_json(&text) {
            Ok(i) => prop_assert!(i.validate().is_ok()),
            Err(e) => prop_assert!(!e.field.is_empty()),
        }
    }

    #[test]
    fn identifiers_and_literals_are_always_quoted(s in any::<String>()) {
        prop_assert_eq!(ident(&s), format!("\"{}\"", s.replace('"', "\"\"")));
        let lit = literal(&s);
        if s.contains('\\') {
            prop_assert_eq!(lit, format!(" E'{}'", s.replace('\\', "\\\\").replace('\'', "''")));
        } else {
            prop_assert_eq!(lit, format!("'{}'", s.replace('\'', "''")));
        }
    }

    #[test]
    fn login_role_names_are_safe_whatever_the_requester(requester in any::<String>(), prefix in "[a-z][a-z0-9_]{0,31}") {
        let name = login_role_name(&prefix, &requester);
        prop_assert!(name.len() <= 63, "{name}");
        prop_assert!(name.starts_with(&prefix));
        prop_assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'), "{name}");
        prop_assert!(!is_profile_role(&name, &prefix));
    }

    #[test]
    fn webhook_verification_never_panics(ts in prop::option::of(any::<String>()), sig in prop::option::of(any::<String>()), body in any::<Vec<u8>>()) {
        let now = chrono::Utc::now();
        let _ = pgjit::control::webhook::verify(b"key", ts.as_deref(), sig.as_deref(), &body, now);
        let good_ts = now.timestamp().to_string();
        let good = pgjit::control::webhook::sign(b"key", &good_ts, &body);
        prop_assert!(pgjit::control::webhook::verify(b"key", Some(&good_ts), Some(&good), &body, now).is_ok());
    }
}
