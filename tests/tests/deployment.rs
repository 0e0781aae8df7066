//! The SAM template against the workspace: every function it deploys is built from a binary
//! that exists, the way SAM's rust-cargolambda build and `cargo lambda` name it.

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// The `Binary:` of every `AWS::Serverless::Function`, by logical id.
fn template_functions() -> Vec<(String, Option<String>, bool)> {
    let text = std::fs::read_to_string(format!("{ROOT}/template.yaml")).expect("template.yaml");
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim() != "Type: AWS::Serverless::Function" {
            continue;
        }
        let name = lines[i - 1].trim().trim_end_matches(':').to_owned();
        // The resource's block: up to the next line at its own indentation.
        let block: Vec<&str> = lines[i + 1..]
            .iter()
            .take_while(|l| l.is_empty() || l.starts_with("    "))
            .copied()
            .collect();
        let binary = block
            .iter()
            .find_map(|l| l.trim().strip_prefix("Binary: ").map(str::to_owned));
        let cargo_lambda = block
            .iter()
            .any(|l| l.trim() == "BuildMethod: rust-cargolambda");
        out.push((name, binary, cargo_lambda));
    }
    out
}

/// The binaries the workspace builds under functions/.
fn workspace_binaries() -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("{ROOT}/functions")).unwrap() {
        let manifest = std::fs::read_to_string(entry.unwrap().path().join("Cargo.toml")).unwrap();
        let mut in_bin = false;
        for line in manifest.lines() {
            if line.starts_with('[') {
                in_bin = line.trim() == "[[bin]]";
            } else if in_bin {
                if let Some(name) = line.trim().strip_prefix("name = ") {
                    out.push(name.trim_matches('"').to_owned());
                }
            }
        }
    }
    out.sort();
    out
}

#[test]
fn every_template_function_names_a_workspace_binary() {
    let functions = template_functions();
    let binaries = workspace_binaries();
    assert_eq!(
        binaries,
        [
            "audit",
            "cleanup",
            "discovery",
            "grant",
            "requests",
            "revoke",
            "webhook"
        ]
    );
    assert_eq!(
        functions.len(),
        binaries.len(),
        "one function per binary: {functions:?}"
    );
    for (name, binary, cargo_lambda) in &functions {
        assert!(cargo_lambda, "{name}: BuildMethod rust-cargolambda");
        let binary = binary
            .as_deref()
            .unwrap_or_else(|| panic!("{name}: no BuildProperties Binary"));
        assert!(
            binaries.iter().any(|b| b == binary),
            "{name}: binary {binary} is not in the workspace"
        );
    }
    let mut used: Vec<_> = functions.iter().filter_map(|(_, b, _)| b.clone()).collect();
    used.sort();
    assert_eq!(used, binaries, "every binary is deployed, once");
}

#[test]
fn the_template_runs_rust_on_graviton_with_json_logs() {
    let text = std::fs::read_to_string(format!("{ROOT}/template.yaml")).unwrap();
    for needle in [
        "Runtime: provided.al2023",
        "Architectures: [arm64]",
        "LogFormat: JSON",
        "PointInTimeRecoveryEnabled: true",
        "SSEEnabled: true",
        "IndexName: status-due",
    ] {
        assert!(text.contains(needle), "template.yaml lacks {needle}");
    }
    assert!(
        !text.contains("Action: \"*\"") && !text.contains("Action: '*'"),
        "no wildcard actions"
    );
}

// ---- the template's trust boundary, read as data ----

use serde_yaml::Value;

fn template() -> Value {
    serde_yaml::from_str(&std::fs::read_to_string(format!("{ROOT}/template.yaml")).unwrap())
        .expect("template.yaml is YAML")
}

/// Text of a value, CloudFormation tags included (`!Ref X` reads as `!Ref X`), for matching.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Tagged(t) => format!("{} {}", t.tag, text(&t.value)),
        Value::Sequence(items) => items.iter().map(text).collect::<Vec<_>>().join(" | "),
        Value::Mapping(m) => m
            .iter()
            .map(|(k, v)| format!("{}: {}", text(k), text(v)))
            .collect::<Vec<_>>()
            .join(", "),
        other => serde_yaml::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_owned(),
    }
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::Sequence(items) => items.iter().map(text).collect(),
        other => vec![text(other)],
    }
}

/// Every statement of a function's inline policies, `!If [cond, statement, NoValue]` unfolded.
fn statements(t: &Value, function: &str) -> Vec<Value> {
    let policies = &t["Resources"][function]["Properties"]["Policies"];
    let mut out = Vec::new();
    for policy in policies
        .as_sequence()
        .unwrap_or_else(|| panic!("{function}: Policies"))
    {
        for s in policy["Statement"].as_sequence().unwrap() {
            match s {
                Value::Tagged(tagged) if tagged.tag == "!If" => out.push(tagged.value[1].clone()),
                other => out.push(other.clone()),
            }
        }
    }
    out
}

fn functions(t: &Value) -> Vec<String> {
    let resources = t["Resources"].as_mapping().unwrap();
    resources
        .iter()
        .filter(|(_, r)| r["Type"].as_str() == Some("AWS::Serverless::Function"))
        .map(|(k, _)| k.as_str().unwrap().to_owned())
        .collect()
}

fn allows(statement: &Value, action: &str) -> bool {
    statement["Effect"].as_str() == Some("Allow")
        && strings(&statement["Action"]).iter().any(|a| a == action)
}

#[test]
fn approvals_come_only_from_the_approval_bus_of_this_account() {
    let t = template();
    for (function, event) in [
        ("GrantFunction", "Approved"),
        ("RevokeFunction", "RevokeRequested"),
    ] {
        let properties = &t["Resources"][function]["Properties"]["Events"][event]["Properties"];
        let bus = text(&properties["EventBusName"]);
        assert!(
            bus.contains("ApprovalBus") && !bus.contains("EventBusName"),
            "{function}: listens on {bus}"
        );
        assert_eq!(
            strings(&properties["Pattern"]["account"]),
            ["!Ref AWS::AccountId"],
            "{function}: the rule matches the account"
        );
    }
    // Retried only while an approval is fresh, and pgjit refuses it once it is not.
    let retry = &t["Resources"]["GrantFunction"]["Properties"]["Events"]["Approved"]["Properties"]
        ["RetryPolicy"];
    assert_eq!(
        text(&retry["MaximumEventAgeInSeconds"]),
        "!Ref ApprovalMaxAgeSeconds"
    );
    assert_eq!(
        text(
            &t["Globals"]["Function"]["Environment"]["Variables"]["PGJIT_APPROVAL_MAX_AGE_SECONDS"]
        ),
        "!Ref ApprovalMaxAgeSeconds"
    );
    // Everyone but the listed senders and the webhook is denied PutEvents, whatever their IAM allows.
    let deny = &t["Resources"]["ApprovalBusOnlySenders"];
    assert!(deny.get("Condition").is_none(), "the Deny is always there");
    let statement = &deny["Properties"]["Statement"];
    assert_eq!(
        (
            statement["Effect"].as_str(),
            statement["Principal"].as_str(),
            statement["Action"].as_str()
        ),
        (Some("Deny"), Some("*"), Some("events:PutEvents"))
    );
    let exempt = text(&statement["Condition"]["ArnNotLike"]["aws:PrincipalArn"]);
    assert!(
        exempt.contains("WebhookFunctionRole.Arn") && exempt.contains("ApprovalSenderArns"),
        "{exempt}"
    );
    // Never a shared bus: the Deny would silence every other producer on it, pgjit's own included.
    let rules = text(&t["Rules"]["ApprovalBusIsApart"]["Assertions"]);
    assert!(
        rules.contains("!Equals ApprovalBusName | !Ref EventBusName")
            || rules.contains("!Ref ApprovalBusName | !Ref EventBusName"),
        "{rules}"
    );
    assert!(rules.contains("default"), "{rules}");
}

#[test]
fn the_internet_facing_webhook_can_only_read_its_key_and_forward() {
    let t = template();
    let webhook = &t["Resources"]["WebhookFunction"]["Properties"];
    assert!(
        webhook.get("ReservedConcurrentExecutions").is_some(),
        "reserved concurrency"
    );
    let mut actions: Vec<String> = statements(&t, "WebhookFunction")
        .iter()
        .flat_map(|s| strings(&s["Action"]))
        .collect();
    actions.sort();
    assert_eq!(
        actions,
        ["events:PutEvents", "secretsmanager:GetSecretValue"]
    );
    for s in statements(&t, "WebhookFunction") {
        if allows(&s, "secretsmanager:GetSecretValue") {
            assert_eq!(
                text(&s["Resource"]),
                "!Ref WebhookSecret",
                "its own key and nothing else"
            );
        }
        if allows(&s, "events:PutEvents") {
            assert!(
                text(&s["Resource"]).contains("ApprovalBusName"),
                "the approval bus only"
            );
        }
    }
    let env = text(&webhook["Environment"]);
    assert!(
        !env.contains("REVOKE_FUNCTION") && !env.contains("SCHEDULER_ROLE"),
        "{env}"
    );
    // And no other function may touch the webhook's key.
    for function in functions(&t).into_iter().filter(|f| f != "WebhookFunction") {
        let statements = statements(&t, &function);
        if statements.iter().any(|s| {
            strings(&s["Action"])
                .iter()
                .any(|a| a.starts_with("secretsmanager:"))
        }) {
            assert!(
                statements
                    .iter()
                    .any(|s| s["Effect"].as_str() == Some("Deny")
                        && text(&s["Resource"]) == "!Ref WebhookSecret"),
                "{function} is denied the webhook key"
            );
        }
    }
}

#[test]
fn iam_writes_never_reach_the_stacks_own_or_aws_protected_roles() {
    let t = template();
    let mut writers = 0;
    for function in functions(&t) {
        let statements = statements(&t, &function);
        let writes = [
            "iam:PutUserPolicy",
            "iam:PutRolePolicy",
            "iam:DeleteUserPolicy",
            "iam:DeleteRolePolicy",
        ];
        if !statements
            .iter()
            .any(|s| writes.iter().any(|w| allows(s, w)))
        {
            continue;
        }
        writers += 1;
        let denied: Vec<String> = statements
            .iter()
            .filter(|s| {
                s["Effect"].as_str() == Some("Deny")
                    && writes
                        .iter()
                        .all(|w| strings(&s["Action"]).contains(&w.to_string()))
            })
            .flat_map(|s| strings(&s["Resource"]))
            .collect();
        for protected in [
            "role/${AWS::StackName}-*",
            "role/aws-reserved/*",
            "role/aws-service-role/*",
        ] {
            assert!(
                denied.iter().any(|r| r.contains(protected)),
                "{function}: writes on {protected} are not denied: {denied:?}"
            );
        }
    }
    assert_eq!(
        writers, 3,
        "grant, revoke and cleanup write or remove IAM policies; nothing else"
    );
    let protected =
        text(&t["Globals"]["Function"]["Environment"]["Variables"]["PGJIT_PROTECTED_ROLES"]);
    assert!(
        protected.contains("${AWS::StackName}-*"),
        "pgjit refuses them itself too: {protected}"
    );
}

/// Every Secrets Manager call pgjit's code makes on a requester's credentials is allowed to the
/// function that makes it (moto enforces no IAM: a missing action shows only on AWS).
#[test]
fn the_functions_may_make_every_secrets_call_their_code_makes() {
    let t = template();
    let credentials = "${CredentialsPrefix}";
    let needed = [
        // GetSecretValue: an extension rewrites expires_at in the secret, keeping the rest.
        (
            "GrantFunction",
            &[
                "CreateSecret",
                "PutSecretValue",
                "DeleteSecret",
                "DescribeSecret",
                "TagResource",
                "PutResourcePolicy",
                "RestoreSecret",
                "GetSecretValue",
            ][..],
        ),
        ("RevokeFunction", &["DescribeSecret", "DeleteSecret"][..]),
        (
            "CleanupFunction",
            &["DescribeSecret", "PutSecretValue", "DeleteSecret"][..],
        ),
    ];
    for (function, actions) in needed {
        let allowed: Vec<String> = statements(&t, function)
            .iter()
            .filter(|s| {
                s["Effect"].as_str() == Some("Allow") && text(&s["Resource"]).contains(credentials)
            })
            .flat_map(|s| strings(&s["Action"]))
            .collect();
        for action in actions {
            assert!(
                allowed.contains(&format!("secretsmanager:{action}")),
                "{function} may not {action}: {allowed:?}"
            );
        }
    }
    // And the calls the code makes are exactly these (a new one must be added here and above).
    let mut calls = std::collections::BTreeSet::new();
    for file in [
        "aws/credentials.rs",
        "control/grants/mod.rs",
        "control/grants/grant.rs",
        "control/grants/revoke.rs",
        "control/extension.rs",
        "control/webhook.rs",
        "aws/admin.rs",
    ] {
        let code = std::fs::read_to_string(format!("{ROOT}/shared/src/{file}")).unwrap();
        for call in [
            "create_secret",
            "put_secret_value",
            "delete_secret",
            "describe_secret",
            "put_resource_policy",
            "restore_secret",
            "get_secret_value",
            "tag_resource",
        ] {
            if code.contains(&format!(".{call}()")) {
                calls.insert(call);
            }
        }
    }
    assert_eq!(
        calls.into_iter().collect::<Vec<_>>(),
        [
            "create_secret",
            "delete_secret",
            "describe_secret",
            "get_secret_value",
            "put_resource_policy",
            "put_secret_value",
            "restore_secret"
        ]
    );
}

#[test]
fn credentials_are_apart_from_pgjits_own_secrets() {
    let t = template();
    let (own, creds) = (
        t["Parameters"]["SecretPrefix"]["Default"].as_str().unwrap(),
        t["Parameters"]["CredentialsPrefix"]["Default"]
            .as_str()
            .unwrap(),
    );
    assert!(
        !own.starts_with(creds) && !creds.starts_with(own),
        "{own} / {creds}"
    );
    for function in functions(&t) {
        for s in statements(&t, &function) {
            if s["Effect"].as_str() != Some("Allow") {
                continue;
            }
            let actions = strings(&s["Action"]);
            let resource = text(&s["Resource"]);
            let writes = actions.iter().any(|a| {
                [
                    "secretsmanager:CreateSecret",
                    "secretsmanager:PutSecretValue",
                    "secretsmanager:DeleteSecret",
                    "secretsmanager:PutResourcePolicy",
                ]
                .contains(&a.as_str())
            });
            if writes {
                assert!(
                    resource.contains("${CredentialsPrefix}")
                        && !resource.contains("${SecretPrefix}"),
                    "{function} writes only credentials: {resource}"
                );
            }
            // Only the grant function, which writes them anyway, may read a requester's
            // credentials: an extension rewrites the secret's expires_at and keeps the password.
            if actions.iter().any(|a| a == "secretsmanager:GetSecretValue")
                && function != "GrantFunction"
            {
                assert!(
                    !resource.contains("${CredentialsPrefix}"),
                    "{function} never reads a requester's credentials: {resource}"
                );
            }
        }
    }
}

#[test]
fn failed_asynchronous_invocations_are_kept_alarmed_and_swept() {
    let t = template();
    for function in ["GrantFunction", "RevokeFunction"] {
        let config = &t["Resources"][function]["Properties"]["EventInvokeConfig"];
        assert_eq!(
            text(&config["DestinationConfig"]["OnFailure"]["Destination"]),
            "!GetAtt FailedInvocationsQueue.Arn",
            "{function}: on-failure destination"
        );
        let alarmed = t["Resources"].as_mapping().unwrap().values().any(|r| {
            r["Type"].as_str() == Some("AWS::CloudWatch::Alarm")
                && r["Properties"]["MetricName"].as_str() == Some("AsyncEventsDropped")
                && text(&r["Properties"]["Dimensions"]).contains(&format!("!Ref {function}"))
        });
        assert!(alarmed, "{function}: an alarm on AsyncEventsDropped");
    }
    let queue_alarm =
        t["Resources"].as_mapping().unwrap().values().any(|r| {
            text(&r["Properties"]["Dimensions"]).contains("FailedInvocationsQueue.QueueName")
        });
    assert!(queue_alarm, "an alarm on the failed-invocations queue");
    // The rules' dead-letter queue lets EventBridge in; the hourly sweep is the backstop.
    let policy =
        text(&t["Resources"]["RevokeDeadLetterQueuePolicy"]["Properties"]["PolicyDocument"]);
    assert!(
        policy.contains("events.amazonaws.com") && policy.contains("sqs:SendMessage"),
        "{policy}"
    );
    let hourly =
        &t["Resources"]["CleanupFunction"]["Properties"]["Events"]["HourlyOverdue"]["Properties"];
    assert_eq!(hourly["ScheduleExpression"].as_str(), Some("rate(1 hour)"));
    let input: serde_json::Value = serde_json::from_str(hourly["Input"].as_str().unwrap()).unwrap();
    assert_eq!(
        pgjit::control::cleanup::Scope::of(&input),
        pgjit::control::cleanup::Scope::Overdue
    );
    // The LogLevel parameter reaches the functions.
    assert_eq!(
        text(&t["Globals"]["Function"]["LoggingConfig"]["ApplicationLogLevel"]),
        "!FindInMap LogLevels | !Ref LogLevel | Lambda"
    );
    for level in t["Parameters"]["LogLevel"]["AllowedValues"]
        .as_sequence()
        .unwrap()
    {
        assert!(
            t["Mappings"]["LogLevels"]
                .get(level.as_str().unwrap())
                .is_some(),
            "{level:?} is mapped"
        );
    }
}

#[test]
fn session_audit_reads_each_listed_log_group_and_can_only_write_sessions() {
    let t = template();
    // One subscription filter per log group of the AuditLogGroups parameter (five slots), to
    // the audit function, each only when its slot is filled; CloudWatch Logs may invoke the
    // function for log groups of this account only.
    for i in 1..=5 {
        let filter = &t["Resources"][format!("AuditSubscription{i}").as_str()];
        assert_eq!(
            filter["Type"].as_str(),
            Some("AWS::Logs::SubscriptionFilter")
        );
        let group = text(&filter["Properties"]["LogGroupName"]);
        assert!(
            group.contains(&format!("!Select {} |", i - 1)) && group.contains("AuditLogGroups"),
            "{group}"
        );
        assert_eq!(
            text(&filter["Properties"]["DestinationArn"]),
            "!GetAtt AuditFunction.Arn"
        );
        assert_eq!(
            filter["Condition"].as_str(),
            Some(format!("HasAuditLogGroup{i}").as_str()),
            "no filter for an empty slot"
        );
        let condition = text(&t["Conditions"][format!("HasAuditLogGroup{i}").as_str()]);
        assert!(
            condition.contains(&format!("!Select {} |", i - 1)),
            "{condition}"
        );
    }
    let permission = &t["Resources"]["AuditFunctionLogsPermission"]["Properties"];
    assert_eq!(permission["Principal"].as_str(), Some("logs.amazonaws.com"));
    assert_eq!(text(&permission["SourceAccount"]), "!Ref AWS::AccountId");
    assert!(
        text(&permission["SourceArn"]).contains("log-group:/aws/rds/"),
        "only RDS log groups"
    );
    // It reads which integration and grant a line belongs to, and writes the sessions table: no
    // secrets, no database, no IAM, no other table written.
    let statements = statements(&t, "AuditFunction");
    let mut actions: Vec<String> = statements
        .iter()
        .flat_map(|s| strings(&s["Action"]))
        .collect();
    actions.sort();
    assert_eq!(
        actions,
        [
            "dynamodb:BatchWriteItem",
            "dynamodb:Query",
            "dynamodb:Query",
            "dynamodb:Scan"
        ]
    );
    let mut queried = Vec::new();
    for s in &statements {
        let resource = text(&s["Resource"]);
        if allows(s, "dynamodb:BatchWriteItem") {
            assert_eq!(resource, "!GetAtt SessionsTable.Arn");
        }
        if allows(s, "dynamodb:Query") {
            queried.push(resource);
        }
    }
    // The grants' db-user index (which grant a user is), and the sessions table itself (whether
    // a session's connection came in an earlier delivery: a Query the code makes, which moto
    // would let through without the right).
    queried.sort();
    assert_eq!(queried.len(), 2);
    assert!(
        queried[1].contains("GrantsTable.Arn}/index/db-user")
            && queried[0] == "!GetAtt SessionsTable.Arn",
        "{queried:?}"
    );
    // Entries expire after the retention; failed deliveries are kept and alarmed.
    let table = &t["Resources"]["SessionsTable"]["Properties"];
    assert_eq!(
        text(&table["TimeToLiveSpecification"]["AttributeName"]),
        "expires_at"
    );
    assert_eq!(
        text(&t["Globals"]["Function"]["Environment"]["Variables"]["PGJIT_SESSION_RETENTION_DAYS"]),
        "!Ref SessionRetentionDays"
    );
    let invoke = &t["Resources"]["AuditFunctionEventInvokeConfig"]["Properties"];
    assert_eq!(
        text(&invoke["DestinationConfig"]["OnFailure"]["Destination"]),
        "!GetAtt FailedInvocationsQueue.Arn"
    );
}

/// Cleanup's continuation is a schedule it makes itself: the function may create and update
/// only the continuation's names (never a revoke schedule), pass only the scheduler role, and
/// that role may invoke cleanup (moto enforces no IAM: a missing right shows only on AWS).
#[test]
fn cleanup_may_schedule_its_own_continuation_and_nothing_else() {
    let t = template();
    let cleanup = statements(&t, "CleanupFunction");
    let writes: Vec<&Value> = cleanup
        .iter()
        .filter(|s| allows(s, "scheduler:CreateSchedule") || allows(s, "scheduler:UpdateSchedule"))
        .collect();
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert!(
        allows(writes[0], "scheduler:GetSchedule"),
        "it reads the waiting one's count"
    );
    let resources = strings(&writes[0]["Resource"]);
    let names: Vec<String> = [
        pgjit::control::cleanup::Scope::Full,
        pgjit::control::cleanup::Scope::Overdue,
    ]
    .into_iter()
    .map(pgjit::control::cleanup::continuation_schedule_name)
    .collect();
    assert_eq!(resources.len(), names.len(), "{resources:?}");
    for (resource, name) in resources.iter().zip(&names) {
        assert!(
            resource.ends_with(&format!("schedule/${{RevokeScheduleGroup}}/{name}")),
            "{name} / {resource}"
        );
    }
    // No other function may touch them, and every other schedule right is on revoke schedules.
    for function in functions(&t) {
        for s in statements(&t, &function) {
            let resource = text(&s["Resource"]);
            if s["Effect"].as_str() != Some("Allow")
                || !strings(&s["Action"])
                    .iter()
                    .any(|a| a.starts_with("scheduler:"))
            {
                continue;
            }
            let continuation =
                function == "CleanupFunction" && resource.contains("/cleanup-continuation-");
            let start = function == "RequestsFunction"
                && resource.ends_with("schedule/${RevokeScheduleGroup}/start-*");
            assert!(
                continuation
                    || start
                    || resource.ends_with("schedule/${RevokeScheduleGroup}/pgjit-*"),
                "{function}: {resource}"
            );
        }
    }
    assert!(
        pgjit::aws::schedule::schedule_name("cleanup-continuation-full").starts_with("pgjit-"),
        "revoke schedules are apart"
    );
    assert!(
        pgjit::aws::schedule::start_schedule_name("pgjit-x").starts_with("start-"),
        "start schedules are apart from revokes"
    );
    let pass: Vec<String> = cleanup
        .iter()
        .filter(|s| allows(s, "iam:PassRole"))
        .map(|s| text(&s["Resource"]))
        .collect();
    assert_eq!(pass, ["!GetAtt SchedulerRole.Arn"]);
    let env = &t["Resources"]["CleanupFunction"]["Properties"]["Environment"]["Variables"];
    assert_eq!(
        text(&env["PGJIT_SCHEDULER_ROLE_ARN"]),
        "!GetAtt SchedulerRole.Arn"
    );
    let policy = &t["Resources"]["SchedulerInvokesCleanup"]["Properties"];
    assert_eq!(text(&policy["Roles"]), "!Ref SchedulerRole");
    let invoke = &policy["PolicyDocument"]["Statement"][0];
    assert!(
        allows(invoke, "lambda:InvokeFunction")
            && text(&invoke["Resource"]).contains("!GetAtt CleanupFunction.Arn"),
        "{invoke:?}"
    );
}

/// The approvals key's policy, read as KMS reads it for each caller that matters: a key's own
/// policy must allow a principal (by name, or the account, which then hands the decision to IAM
/// policies). So: the webhook and the approval senders make MACs, the grant and revoke functions
/// only verify them, the administrators never use the key, and the account is never delegated
/// its use (a requester's or a bystander's kms:* grants nothing).
#[test]
fn only_the_approval_senders_make_approval_macs() {
    let t = template();
    let key = &t["Resources"]["ApprovalsKey"]["Properties"];
    assert_eq!(
        (key["KeySpec"].as_str(), key["KeyUsage"].as_str()),
        (Some("HMAC_256"), Some("GENERATE_VERIFY_MAC"))
    );
    let statements = key["KeyPolicy"]["Statement"].as_sequence().unwrap();
    let who = |action: &str| -> Vec<String> {
        statements
            .iter()
            .filter(|s| {
                s["Effect"].as_str() == Some("Allow")
                    && strings(&s["Action"]).iter().any(|a| {
                        a == action
                            || a == "kms:*"
                            || (a.ends_with('*') && action.starts_with(a.trim_end_matches('*')))
                    })
            })
            .map(|s| text(&s["Principal"]["AWS"]))
            .collect()
    };
    let make = who("kms:GenerateMac");
    assert_eq!(make.len(), 1, "{make:?}");
    assert!(
        make[0].contains("!GetAtt WebhookFunctionRole.Arn")
            && make[0].contains("!GetAtt RequestsFunctionRole.Arn")
            && make[0].contains("!Ref ApprovalSenderArns"),
        "{make:?}"
    );
    let verify = who("kms:VerifyMac");
    assert_eq!(
        verify,
        ["!GetAtt GrantFunctionRole.Arn | !GetAtt RevokeFunctionRole.Arn"],
        "only pgjit's functions verify"
    );
    for (caller, sees) in [
        ("the grant function", "GrantFunctionRole"),
        ("the revoke function", "RevokeFunctionRole"),
    ] {
        assert!(
            !make.iter().any(|p| p.contains(sees)),
            "{caller} may not make a MAC"
        );
    }
    // The account (every IAM principal whose policy allows kms:*) and the administrators: never
    // a use of the key, nor a grant that would hand one out.
    for action in ["kms:GenerateMac", "kms:VerifyMac", "kms:CreateGrant"] {
        for principals in who(action) {
            assert!(
                !principals.contains(":root")
                    && !principals.contains("ApprovalsKeyAdministratorArns"),
                "{action} for {principals}"
            );
        }
    }
    let admin = statements
        .iter()
        .find(|s| text(&s["Principal"]["AWS"]).contains("ApprovalsKeyAdministratorArns"))
        .expect("an administrators' statement");
    assert!(
        strings(&admin["Action"]).iter().all(|a| !a.contains('*')
            && a != "kms:GenerateMac"
            && a != "kms:VerifyMac"
            && a != "kms:CreateGrant"),
        "{:?}",
        strings(&admin["Action"])
    );
    // Every function names the key by the alias the stack makes.
    let alias = text(&t["Resources"]["ApprovalsKeyAlias"]["Properties"]["AliasName"]);
    assert_eq!(
        text(&t["Globals"]["Function"]["Environment"]["Variables"]["PGJIT_APPROVALS_KEY_ID"]),
        alias
    );
    assert_eq!(
        text(&t["Resources"]["ApprovalsKeyAlias"]["Properties"]["TargetKeyId"]),
        "!Ref ApprovalsKey"
    );
}

/// Lines session audit cannot read in full may hide a statement: the metric the audit function
/// writes over every integration is alarmed.
#[test]
fn audit_lines_not_read_are_alarmed() {
    let t = template();
    for (alarm, metric) in [
        ("AuditLinesNotReadAlarm", "AuditLinesNotRead"),
        ("AuditLogGroupAmbiguousAlarm", "AuditLogGroupAmbiguous"),
    ] {
        let alarm = &t["Resources"][alarm]["Properties"];
        assert_eq!(
            (alarm["Namespace"].as_str(), alarm["MetricName"].as_str()),
            (Some("pgjit"), Some(metric))
        );
        assert!(
            alarm.get("Dimensions").is_none(),
            "{metric}: the total over every integration"
        );
        assert_eq!(
            (
                text(&alarm["Threshold"]),
                alarm["ComparisonOperator"].as_str()
            ),
            ("0".to_owned(), Some("GreaterThanThreshold"))
        );
    }
    // Functions in a VPC reach KMS (the approvals key) through an endpoint like the other services.
    assert_eq!(
        text(&t["Resources"]["KmsEndpoint"]["Properties"]["ServiceName"]),
        "!Sub com.amazonaws.${AWS::Region}.kms"
    );
}

#[test]
fn flows_and_people_are_read_by_the_deciding_functions_only_and_written_by_no_function() {
    let t = template();
    let flows_table = |s: &Value| text(&s["Resource"]).contains("FlowsTable");
    let people = |s: &Value| {
        strings(&s["Action"])
            .iter()
            .any(|a| a.starts_with("identitystore:"))
    };
    for function in functions(&t) {
        for s in statements(&t, &function) {
            let decides = function == "GrantFunction" || function == "RequestsFunction";
            if flows_table(&s) {
                assert!(decides && strings(&s["Action"]) == ["dynamodb:Scan"], "{function}: flows are read by the grant and requests functions only, and only read");
            }
            if people(&s) {
                assert!(
                    decides,
                    "{function}: people are read by the grant and requests functions only"
                );
                let mut actions = strings(&s["Action"]);
                actions.sort();
                assert_eq!(
                    actions,
                    [
                        "identitystore:DescribeGroup",
                        "identitystore:GetUserId",
                        "identitystore:ListGroupMembershipsForMember"
                    ],
                    "read-only"
                );
            }
        }
    }
    let grant = statements(&t, "GrantFunction");
    assert!(
        grant.iter().any(flows_table) && grant.iter().any(people),
        "the grant function checks approvals against the flows and their people"
    );
    let alarm = &t["Resources"]["BreakGlassUsedAlarm"]["Properties"];
    assert_eq!(
        (alarm["MetricName"].as_str(), alarm["Namespace"].as_str()),
        (Some("BreakGlassUsed"), Some("pgjit")),
        "break-glass use is alarmed"
    );
}

/// The front door: who SigV4 proved calls it through its URL, the callers named by
/// RequesterPrincipals only, the function only through the URL; it makes approval MACs and
/// puts approvals on the approval bus (exempt from the bus's Deny), and touches no database,
/// IAM policy or credentials.
#[test]
fn the_front_door_is_called_with_iam_identities_through_its_url_only() {
    let t = template();
    let f = &t["Resources"]["RequestsFunction"]["Properties"];
    assert_eq!(f["FunctionUrlConfig"]["AuthType"].as_str(), Some("AWS_IAM"));
    assert!(
        f.get("ReservedConcurrentExecutions").is_some(),
        "a flood of signed calls cannot starve grants and revokes"
    );
    let url = &t["Resources"]["RequestsUrlCallers"]["Properties"];
    assert_eq!(
        (url["Action"].as_str(), url["FunctionUrlAuthType"].as_str()),
        (Some("lambda:InvokeFunctionUrl"), Some("AWS_IAM"))
    );
    let invoke = &t["Resources"]["RequestsUrlInvokes"]["Properties"];
    assert_eq!(
        (
            invoke["Action"].as_str(),
            invoke["InvokedViaFunctionUrl"].as_bool()
        ),
        (Some("lambda:InvokeFunction"), Some(true)),
        "callers invoke it only through the URL"
    );
    for p in [url, invoke] {
        let principal = text(&p["Principal"]);
        // "*" only with the organization's condition; else the account named, or this one.
        assert!(
            principal.contains("RequestersAreOrganization")
                && principal.contains("!Ref RequesterPrincipals")
                && principal.contains("!Ref AWS::AccountId"),
            "{principal}"
        );
        assert!(
            text(&p["PrincipalOrgID"])
                .starts_with("!If RequestersAreOrganization | !Ref RequesterPrincipals"),
            "{:?}",
            p["PrincipalOrgID"]
        );
    }
    let permissions: Vec<String> = t["Resources"]
        .as_mapping()
        .unwrap()
        .iter()
        .filter(|(_, r)| {
            r["Type"].as_str() == Some("AWS::Lambda::Permission")
                && text(&r["Properties"]["FunctionName"]).contains("RequestsFunction")
        })
        .map(|(k, _)| text(k))
        .collect();
    assert_eq!(
        permissions,
        ["RequestsUrlCallers", "RequestsUrlInvokes"],
        "nothing else may invoke it (the scheduler's role does by its own policy)"
    );
    let statements = statements(&t, "RequestsFunction");
    let actions: Vec<String> = statements
        .iter()
        .flat_map(|s| strings(&s["Action"]))
        .collect();
    for forbidden in [
        "secretsmanager:",
        "iam:Put",
        "iam:Delete",
        "rds-db:",
        "kms:Decrypt",
        "dynamodb:DeleteItem",
        "dynamodb:UpdateItem",
    ] {
        assert!(
            actions.iter().all(|a| !a.starts_with(forbidden)),
            "the front door never does {forbidden}: {actions:?}"
        );
    }
    let writes: Vec<String> = statements
        .iter()
        .filter(|s| allows(s, "dynamodb:PutItem"))
        .map(|s| text(&s["Resource"]))
        .collect();
    assert!(
        writes.iter().all(
            |r| (r.contains("RequestsTable") || r.contains("AuditTable"))
                && !r.contains("GrantsTable")
                && !r.contains("FlowsTable")
                && !r.contains("IntegrationsTable")
        ),
        "{writes:?}"
    );
    let exempt = text(
        &t["Resources"]["ApprovalBusOnlySenders"]["Properties"]["Statement"]["Condition"]
            ["ArnNotLike"]["aws:PrincipalArn"],
    );
    assert!(
        exempt.contains("RequestsFunctionRole.Arn"),
        "it sends approvals: {exempt}"
    );
    let topic_rule = &t["Resources"]["RequestEventsToTopic"]["Properties"];
    let kinds = strings(&topic_rule["EventPattern"]["detail-type"]);
    for kind in [
        "Access Request Created",
        "Access Request Approved",
        "Access Request Denied",
        "Access Request Cancelled",
        "Access Request Expired",
        "Break Glass Used",
    ] {
        assert!(
            kinds.iter().any(|k| k == kind),
            "{kind} reaches the approvers"
        );
    }
    assert!(
        text(&topic_rule["EventBusName"]).contains("EventBusName"),
        "pgjit's own bus, never the approval bus"
    );
}

/// Access roles (IAM mode for Identity Center users) are pgjit's only IAM roles: made only under
/// `/pgjit/access/` and only with the stack's boundary, which allows `rds-db:connect` and
/// nothing else; no function can lift or change a boundary. (AWS documents `iam:PermissionsBoundary`
/// on CreateRole, PutRolePolicy, DeleteRolePolicy, DeleteRole, UpdateAssumeRolePolicy and
/// UpdateRole, so every write on an access role is conditioned on it.)
#[test]
fn access_roles_are_made_only_under_pgjits_path_with_the_boundary() {
    let t = template();
    let boundary = &t["Resources"]["AccessRoleBoundary"];
    assert_eq!(boundary["Type"].as_str(), Some("AWS::IAM::ManagedPolicy"));
    let granted = boundary["Properties"]["PolicyDocument"]["Statement"]
        .as_sequence()
        .unwrap();
    assert_eq!(granted.len(), 1);
    assert_eq!(
        (
            granted[0]["Effect"].as_str(),
            strings(&granted[0]["Action"])
        ),
        (Some("Allow"), vec!["rds-db:connect".to_owned()])
    );
    assert!(
        text(&granted[0]["Resource"]).contains(":dbuser:"),
        "{}",
        text(&granted[0]["Resource"])
    );
    let env = &t["Globals"]["Function"]["Environment"]["Variables"];
    assert_eq!(
        text(&env["PGJIT_ACCESS_ROLE_BOUNDARY_ARN"]),
        "!Ref AccessRoleBoundary"
    );
    let fenced = [
        "iam:CreateRole",
        "iam:DeleteRole",
        "iam:UpdateAssumeRolePolicy",
        "iam:UpdateRole",
    ];
    let never = [
        "iam:PutRolePermissionsBoundary",
        "iam:DeleteRolePermissionsBoundary",
        "iam:AttachRolePolicy",
        "iam:CreatePolicyVersion",
        "iam:PassRole",
    ];
    let mut creators = Vec::new();
    for function in functions(&t) {
        let statements = statements(&t, &function);
        for s in &statements {
            if s["Effect"].as_str() != Some("Allow") {
                continue;
            }
            for action in strings(&s["Action"]) {
                if fenced.contains(&action.as_str())
                    || (action == "iam:DeleteRolePolicy"
                        && text(&s["Resource"]).contains("pgjit/access"))
                {
                    assert_eq!(
                        strings(&s["Resource"]),
                        ["!Sub arn:${AWS::Partition}:iam::${AWS::AccountId}:role/pgjit/access/*"],
                        "{function}: {action}"
                    );
                    assert_eq!(
                        text(&s["Condition"]["StringEquals"]["iam:PermissionsBoundary"]),
                        "!Ref AccessRoleBoundary",
                        "{function}: {action} without the boundary condition"
                    );
                }
                if action == "iam:CreateRole" {
                    creators.push(function.clone());
                }
                if never.contains(&action.as_str()) && action != "iam:PassRole" {
                    panic!("{function} may {action}");
                }
            }
        }
        if statements
            .iter()
            .any(|s| fenced.iter().any(|a| allows(s, a)))
        {
            let denied: Vec<String> = statements
                .iter()
                .filter(|s| s["Effect"].as_str() == Some("Deny"))
                .flat_map(|s| strings(&s["Action"]))
                .collect();
            for action in [
                "iam:PutRolePermissionsBoundary",
                "iam:DeleteRolePermissionsBoundary",
                "iam:AttachRolePolicy",
            ] {
                assert!(
                    denied.contains(&action.to_owned()),
                    "{function}: {action} is not denied"
                );
            }
        }
    }
    assert_eq!(
        creators,
        ["GrantFunction"],
        "only the grant makes access roles"
    );
}
