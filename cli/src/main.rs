//! `pgjit`: the operator's command line. It runs the functions' own handlers in-process, against
//! the AWS account (or emulator) the standard AWS variables point at.

use std::io::IsTerminal;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use lambda_runtime::{Context, LambdaEvent};
use pgjit::aws::Services;
use pgjit::engine::postgres::error_chain;
use pgjit::engine::setup::Flavor;
use serde_json::{json, Value};

mod connect;
mod front_door;

#[derive(Parser)]
#[command(
    name = "pgjit",
    version,
    about = "Just-in-time PostgreSQL access: operator commands"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the DynamoDB tables, the schedule group and the approvals key (for a local emulator;
    /// SAM does it in AWS).
    Bootstrap,
    /// Register or list integrations.
    Integration {
        #[command(subcommand)]
        command: IntegrationCommand,
    },
    /// Ask for access at the front door, as yourself (your AWS identity): the integration's
    /// access flows decide who approves.
    Request {
        #[arg(long)]
        integration: String,
        /// The flow to ask under (default: the first that allows the request).
        #[arg(long)]
        flow: Option<String>,
        /// The database (default: the integration's).
        #[arg(long)]
        database: Option<String>,
        /// A table as SCHEMA.TABLE (`SCHEMA.*` for every table of the schema).
        #[arg(long)]
        table: Option<String>,
        /// A schema (with --privileges USAGE or CREATE).
        #[arg(long, conflicts_with = "table")]
        schema: Option<String>,
        /// Membership of an existing role.
        #[arg(long, conflicts_with_all = ["table", "schema"])]
        role: Option<String>,
        /// Comma-separated privileges (SELECT,INSERT,… or ALL).
        #[arg(long, value_delimiter = ',')]
        privileges: Vec<String>,
        /// The access list as a JSON file instead (the approval's `access` shape).
        #[arg(long, value_name = "FILE", conflicts_with_all = ["table", "schema", "role"])]
        access: Option<String>,
        /// How long: 7200, 90m, 2h, 1d, 1h30m.
        #[arg(long = "for", value_name = "DURATION")]
        duration: String,
        #[arg(long)]
        reason: Option<String>,
        #[arg(long)]
        ticket: Option<String>,
        /// Start later (RFC 3339, at most 7 days ahead).
        #[arg(long, value_name = "RFC3339")]
        start_at: Option<String>,
        /// Makes a retry the same request (default: a new one each run).
        #[arg(long)]
        client_token: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Approve a request (as yourself: one of its flow's approvers, never its requester).
    Approve {
        request_id: String,
        #[arg(long)]
        json: bool,
    },
    /// Deny a request, saying why.
    Deny {
        request_id: String,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        json: bool,
    },
    /// Cancel your own request.
    Cancel {
        request_id: String,
        #[arg(long)]
        json: bool,
    },
    /// Your requests (default), or those awaiting your approval.
    Requests {
        #[arg(long, conflicts_with = "to_approve")]
        mine: bool,
        #[arg(long)]
        to_approve: bool,
        #[arg(long)]
        json: bool,
    },
    /// Store, list or remove access flows: who may ask for what, for how long, and who approves.
    Flow {
        #[command(subcommand)]
        command: FlowCommand,
    },
    /// Record that you reviewed a break-glass grant (your AWS identity is the reviewer).
    Review {
        request_id: String,
        #[arg(long)]
        note: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Run the grant handler on an approval event (the EventBridge event as the function receives
    /// it); one without `detail.mac` gets the approvals key's MAC first (you are its sender).
    Grant {
        #[arg(long, value_name = "FILE")]
        event: String,
        #[arg(long)]
        json: bool,
    },
    /// Print an approval, extension or early revoke event with the approvals key's MAC added
    /// (`detail.mac`): what an approval tool sends (README: "Approvals pgjit can verify").
    SignApproval {
        #[arg(value_name = "FILE")]
        file: String,
    },
    /// Revoke a grant now (what an `Access Revoke Requested` event does), with your own AWS and
    /// database rights.
    Revoke {
        request_id: String,
        #[arg(long)]
        json: bool,
    },
    /// Extend an active grant (as an `Access Extension Approved` event would): the same user,
    /// password and privileges, a later expiry.
    Extend {
        request_id: String,
        /// How long from now: 7200, 90m, 2h, 1d, 1h30m.
        #[arg(long)]
        duration: String,
        /// Who approved the extension (not the requester).
        #[arg(long)]
        approver: String,
        #[arg(long)]
        reason: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Break glass: revoke every active grant of an integration now.
    RevokeAll {
        integration: String,
        /// Required: this ends every temporary session on the integration.
        #[arg(long)]
        yes: bool,
        #[arg(long)]
        json: bool,
    },
    /// Who had access: every grant, with requester, approver, access and when (newest first).
    Audit {
        /// Only this integration.
        #[arg(long)]
        integration: Option<String>,
        /// Only grants that touched this database.
        #[arg(long)]
        database: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Active grants and when they expire (`--all`: every grant in any state).
    Grants {
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Print a grant's credentials (the one command that shows a password).
    Credentials { request_id: String },
    /// Connect to your grant with psql, as yourself (your AWS identity): verify-full, the server's
    /// roots, and the password or IAM token through the environment only. Arguments after `--`
    /// go to psql.
    Connect {
        request_id: String,
        /// One of the grant's databases (default: its first).
        #[arg(long)]
        database: Option<String>,
        /// Print `export PG…=` lines for other clients (the one output with the password).
        #[arg(long, conflicts_with = "url")]
        print_env: bool,
        /// Print a libpq connection URI (no password in it).
        #[arg(long)]
        url: bool,
        /// The grant's `Access Granted` event (JSON file), where no front door knows it.
        #[arg(long, value_name = "FILE")]
        granted: Option<String>,
        /// The CA that signed the server's certificate (PEM), where the grant does not say it.
        #[arg(long, value_name = "FILE")]
        ca: Option<String>,
        #[arg(last = true)]
        psql_args: Vec<String>,
    },
    /// Run the cleanup sweep (`--now` pretends it is another time).
    Cleanup {
        #[arg(long, value_name = "RFC3339")]
        now: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Run discovery: register tagged instances, inventory every integration.
    Discover {
        #[arg(long)]
        json: bool,
    },
    /// The discovered objects of an integration.
    Inventory {
        integration: String,
        #[arg(long)]
        json: bool,
    },
    /// What a grant's temporary user did: its sessions and every audited statement
    /// (`sessions ingest` reads a self-hosted server's log file into the sessions table).
    #[command(args_conflicts_with_subcommands = true)]
    Sessions {
        #[command(subcommand)]
        command: Option<SessionsCommand>,
        request_id: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Check the admin role of an integration and name what it is missing.
    Doctor {
        integration: String,
        #[arg(long)]
        json: bool,
    },
    /// Print the SQL that prepares pgjit's admin role (run it as the master user in each database).
    SetupSql {
        /// postgres, rds, aurora, azure, cloudsql or alloydb
        #[arg(long)]
        flavor: Flavor,
        /// The admin role pgjit logs in as.
        #[arg(long)]
        admin_user: String,
        /// The powerless role that receives what departed temporary users owned.
        #[arg(long, default_value = pgjit::contract::integration::DEFAULT_HOLDING_ROLE)]
        holding_role: String,
        /// An existing role requests may ask membership of (repeatable; the integration's
        /// grantable_roles): from PostgreSQL 16 the admin needs ADMIN OPTION on it.
        #[arg(long = "grantable-role")]
        grantable_roles: Vec<String>,
        /// The integration's user_prefix, to repair roles created before an upgrade to 16.
        #[arg(long, default_value = "pgjit_")]
        user_prefix: String,
    },
}

#[derive(Subcommand)]
enum SessionsCommand {
    /// Read a server log file (stderr format, the integration's log_line_prefix) into the
    /// sessions table, as the audit function does with CloudWatch Logs.
    Ingest {
        #[arg(long)]
        integration: String,
        file: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum FlowCommand {
    /// Validate and store (or replace) a flow from a JSON file.
    Put { file: String },
    /// Every flow, or those of one integration.
    List {
        #[arg(long)]
        integration: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Remove a flow.
    Delete { name: String },
}

#[derive(Subcommand)]
enum IntegrationCommand {
    /// Validate and store an integration from a JSON file.
    Put { file: String },
    List {
        #[arg(long)]
        json: bool,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
    }
    match run(cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("pgjit: error: {}", message.replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

type Outcome = Result<(), String>;

fn chain<E: std::error::Error + 'static>(e: E) -> String {
    error_chain(&e)
}

/// Text a database user wrote, safe for a terminal: control characters (carriage returns,
/// escape sequences) are shown escaped, so nothing can redraw or hide what is printed.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() && c != '\n' {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A grant and what its user did, for a person to read.
fn print_sessions(
    g: &pgjit::aws::store::GrantRecord,
    sessions: &[pgjit::control::sessions::view::Session],
) {
    let time = |t: &DateTime<Utc>| t.format("%Y-%m-%d %H:%M:%S").to_string();
    println!(
        "{} {} {} as {} on {}",
        g.request_id,
        g.status.as_str(),
        g.requester.id,
        g.db_user,
        g.integration
    );
    println!(
        "  approved by {}: {}",
        g.approver,
        g.reason.as_deref().unwrap_or("no reason given")
    );
    let access: Vec<String> = g
        .access
        .iter()
        .map(|a| serde_json::to_string(a).unwrap_or_default())
        .collect();
    println!("  access: {}", access.join(" "));
    let ended = g
        .revoked_at
        .map(|t| format!("revoked {}", time(&t)))
        .unwrap_or_else(|| format!("expires {}", time(&g.expires_at)));
    println!("  granted {}, {}", time(&g.created_at), ended);
    match &g.session_audit {
        Some(pgjit::engine::roles::grant::SessionAudit::On { classes }) => {
            println!("  session audit: {classes}")
        }
        Some(pgjit::engine::roles::grant::SessionAudit::Off { reason }) => {
            println!("  session audit: off ({reason})")
        }
        None => println!("  session audit: not enabled for {}", g.integration),
    }
    if sessions.is_empty() {
        println!("\nno sessions recorded");
    }
    for s in sessions {
        let from = s.client.as_deref().unwrap_or("?");
        let start = s
            .connected_at
            .as_ref()
            .map(time)
            .unwrap_or_else(|| "(connection not in the log)".into());
        let end = s
            .disconnected_at
            .as_ref()
            .map(time)
            .unwrap_or_else(|| "(still open, or not in the log)".into());
        println!(
            "\nsession {} from {} to {}: {} to {}",
            s.session
                .map(|p| p.to_string())
                .unwrap_or_else(|| "?".into()),
            from,
            s.database.as_deref().unwrap_or("?"),
            start,
            end
        );
        for d in &s.details {
            println!("  {}", printable(d));
        }
        for e in &s.statements {
            let object = e
                .object
                .as_deref()
                .map(|o| format!(" {o}"))
                .unwrap_or_default();
            let cut = e
                .statement_bytes
                .map(|n| format!(" [cut from {n} bytes]"))
                .unwrap_or_default();
            let statement =
                printable(e.statement.as_deref().unwrap_or("")).replace('\n', "\n      ");
            let suspect = e
                .suspect
                .as_deref()
                .map(|why| format!(" [SUSPECT: {why}]"))
                .unwrap_or_default();
            println!(
                "  {} {} {}{}{}{}\n      {}",
                e.at.format("%H:%M:%S"),
                printable(e.class.as_deref().unwrap_or("")),
                printable(e.command.as_deref().unwrap_or("")),
                printable(&object),
                cut,
                suspect,
                statement
            );
        }
    }
}

/// One action at the front door, printed: the request in a line, or as JSON.
async fn front_door_out(body: Value, json: bool) -> Outcome {
    let svc = services().await?;
    let requests = front_door::call(&svc, body).await?;
    let request = requests
        .into_iter()
        .next()
        .ok_or("the front door answered with no request")?;
    if json {
        return print_json(&request);
    }
    println!("{}", front_door::line(&request));
    Ok(())
}

/// A flow's approval rule in a few words.
fn describe_mode(flow: &pgjit::contract::flow::Flow) -> String {
    use pgjit::contract::flow::Mode;
    match flow.approval.mode() {
        Mode::Auto => "auto-approved".into(),
        Mode::BreakGlass => "break-glass".into(),
        Mode::Approvers => format!("{} approval(s)", flow.approval.required()),
    }
}

fn print_json(value: &impl serde::Serialize) -> Outcome {
    println!("{}", serde_json::to_string_pretty(value).map_err(chain)?);
    Ok(())
}

async fn services() -> Result<Services, String> {
    Services::from_env().await.map_err(chain)
}

fn read_json(path: &str) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("{path} is not JSON: {e}"))
}

async fn run(command: Command) -> Outcome {
    match command {
        Command::SetupSql {
            flavor,
            admin_user,
            holding_role,
            grantable_roles,
            user_prefix,
        } => {
            let options = pgjit::engine::setup::SetupOptions {
                grantable_roles,
                user_prefix,
            };
            print!(
                "{}",
                pgjit::engine::setup::setup_sql(flavor, &admin_user, &holding_role, &options)?
            );
            Ok(())
        }
        Command::Bootstrap => {
            let svc = services().await?;
            let created = svc.store.create_tables().await.map_err(chain)?;
            let group = pgjit::aws::schedule::ensure_group(&svc)
                .await
                .map_err(chain)?;
            println!(
                "tables created: {}",
                if created.is_empty() {
                    "none (all exist)".to_owned()
                } else {
                    created.join(", ")
                }
            );
            println!(
                "schedule group {:?}: {}",
                svc.config.schedule_group,
                if group { "created" } else { "exists" }
            );
            let key = pgjit::aws::approval_mac::ensure_key(&svc)
                .await
                .map_err(chain)?;
            println!(
                "approvals key {:?}: {}",
                svc.config.approvals_key_id,
                if key { "created" } else { "exists" }
            );
            Ok(())
        }
        Command::Integration {
            command: IntegrationCommand::Put { file },
        } => {
            let text =
                std::fs::read_to_string(&file).map_err(|e| format!("cannot read {file}: {e}"))?;
            let integration =
                pgjit::contract::integration::Integration::from_json(&text).map_err(chain)?;
            let svc = services().await?;
            svc.store
                .put_integration(&integration)
                .await
                .map_err(chain)?;
            println!(
                "integration {:?} stored ({} at {})",
                integration.name,
                integration.kind,
                integration.host.as_deref().unwrap_or("its RDS endpoint")
            );
            Ok(())
        }
        Command::Integration {
            command: IntegrationCommand::List { json },
        } => {
            let svc = services().await?;
            let list = svc.store.list_integrations().await.map_err(chain)?;
            if json {
                return print_json(&list);
            }
            for i in &list {
                let discovered = match &i.discovery {
                    Some(d) if d.error.is_some() => {
                        format!("discovery failed {}", d.at.format("%Y-%m-%d %H:%M"))
                    }
                    Some(d) => format!("{} objects, {}", d.objects, d.at.format("%Y-%m-%d %H:%M")),
                    None => "not discovered yet".into(),
                };
                println!(
                    "{:<24} {:<9} {:<30} {:<9} max {}s  {}",
                    i.name,
                    i.kind.as_str(),
                    i.host.as_deref().unwrap_or("-"),
                    format!("{:?}", i.access_mode).to_lowercase(),
                    i.max_duration_seconds,
                    discovered
                );
            }
            Ok(())
        }
        Command::Request {
            integration,
            flow,
            database,
            table,
            schema,
            role,
            privileges,
            access,
            duration,
            reason,
            ticket,
            start_at,
            client_token,
            json,
        } => {
            let duration_seconds = pgjit::contract::events::parse_duration(&duration)?;
            let access = match access {
                Some(file) => read_json(&file)?,
                None => {
                    let mut entry = serde_json::Map::new();
                    if let Some(db) = database {
                        entry.insert("database".into(), json!(db));
                    }
                    match (table, schema, role) {
                        (Some(t), _, _) => {
                            let (s, t) = t
                                .split_once('.')
                                .ok_or_else(|| format!("--table {t:?}: write SCHEMA.TABLE"))?;
                            entry.insert("schema".into(), json!(s));
                            entry.insert("table".into(), json!(t));
                        }
                        (None, Some(s), _) => {
                            entry.insert("schema".into(), json!(s));
                        }
                        (None, None, Some(r)) => {
                            entry.insert("role".into(), json!(r));
                        }
                        (None, None, None) => {}
                    }
                    if !privileges.is_empty() {
                        entry.insert("privileges".into(), json!(privileges));
                    }
                    json!([entry])
                }
            };
            let token = client_token.unwrap_or_else(|| {
                format!(
                    "cli-{}",
                    Utc::now().timestamp_nanos_opt().unwrap_or_default()
                )
            });
            let mut body = json!({"action": "create", "client_token": token, "integration": integration, "access": access, "duration_seconds": duration_seconds});
            for (field, value) in [
                ("flow", flow),
                ("reason", reason),
                ("ticket", ticket),
                ("start_at", start_at),
            ] {
                if let Some(v) = value {
                    body[field] = json!(v);
                }
            }
            front_door_out(body, json).await
        }
        Command::Approve { request_id, json } => {
            front_door_out(json!({"action": "approve", "request_id": request_id}), json).await
        }
        Command::Deny {
            request_id,
            reason,
            json,
        } => {
            front_door_out(
                json!({"action": "deny", "request_id": request_id, "reason": reason}),
                json,
            )
            .await
        }
        Command::Cancel { request_id, json } => {
            front_door_out(json!({"action": "cancel", "request_id": request_id}), json).await
        }
        Command::Requests {
            mine: _,
            to_approve,
            json,
        } => {
            let svc = services().await?;
            let filter = if to_approve { "to_approve" } else { "mine" };
            let list = front_door::call(&svc, json!({"action": "list", "filter": filter})).await?;
            if json {
                return print_json(&list);
            }
            if list.is_empty() {
                println!("no requests");
            }
            for r in &list {
                println!("{}", front_door::line(r));
            }
            Ok(())
        }
        Command::Flow {
            command: FlowCommand::Put { file },
        } => {
            let text =
                std::fs::read_to_string(&file).map_err(|e| format!("cannot read {file}: {e}"))?;
            let flow = pgjit::contract::flow::Flow::from_json(&text).map_err(chain)?;
            let svc = services().await?;
            svc.store.put_flow(&flow).await.map_err(chain)?;
            println!(
                "flow {:?} stored: {} on {}",
                flow.name,
                describe_mode(&flow),
                flow.integrations.join(", ")
            );
            Ok(())
        }
        Command::Flow {
            command: FlowCommand::List { integration, json },
        } => {
            let svc = services().await?;
            let flows = svc
                .store
                .list_flows(integration.as_deref())
                .await
                .map_err(chain)?;
            if json {
                return print_json(&flows);
            }
            for f in &flows {
                println!(
                    "{:<24} {:<28} max {}s  on {}",
                    f.name,
                    describe_mode(f),
                    f.max_duration_seconds,
                    f.integrations.join(",")
                );
            }
            Ok(())
        }
        Command::Flow {
            command: FlowCommand::Delete { name },
        } => {
            let svc = services().await?;
            if !svc.store.delete_flow(&name).await.map_err(chain)? {
                return Err(format!("no flow {name:?}"));
            }
            println!("flow {name:?} removed");
            Ok(())
        }
        Command::Review {
            request_id,
            note,
            json,
        } => {
            let svc = services().await?;
            let me = svc
                .sts
                .get_caller_identity()
                .send()
                .await
                .map_err(|e| chain(pgjit::aws::AwsError::new("sts:GetCallerIdentity", e)))?;
            let reviewer = me
                .arn()
                .ok_or("sts:GetCallerIdentity named no ARN")?
                .to_owned();
            let record =
                pgjit::control::flows::review(&svc, &request_id, &reviewer, note, Utc::now())
                    .await
                    .map_err(chain)?;
            if json {
                return print_json(&record);
            }
            println!(
                "break-glass grant {request_id} reviewed by {} at {}",
                record.reviewed_by.as_deref().unwrap_or("?"),
                record
                    .reviewed_at
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_default()
            );
            Ok(())
        }
        Command::SignApproval { file } => {
            let mut event = read_json(&file)?;
            let svc = services().await?;
            pgjit::aws::approval_mac::sign(&svc, &mut event)
                .await
                .map_err(chain)?;
            print_json(&event)
        }
        Command::Grant { event, json } => {
            let mut payload = read_json(&event)?;
            let svc = services().await?;
            if payload
                .get("detail")
                .is_some_and(|d| d.get(pgjit::aws::approval_mac::MAC_FIELD).is_none())
            {
                pgjit::aws::approval_mac::sign(&svc, &mut payload)
                    .await
                    .map_err(chain)?;
            }
            let result = pgjit::control::handlers::grant(
                &svc,
                LambdaEvent::new(payload, Context::default()),
            )
            .await
            .map_err(|e| e.to_string())?;
            if json {
                return print_json(&json!({
                    "request_id": result.request_id, "status": result.status, "db_user": result.db_user,
                    "expires_at": result.expires_at, "secret_arn": result.secret_arn, "repeated": result.repeated
                }));
            }
            let how = match &result.secret_arn {
                Some(arn) => format!("credentials in {arn}"),
                None => "log in with an RDS IAM auth token".into(),
            };
            let again = if result.repeated {
                " (already granted: nothing changed)"
            } else {
                ""
            };
            println!(
                "{}: {} as {} until {}; {how}{again}",
                result.request_id,
                result.status,
                result.db_user,
                result.expires_at.format("%Y-%m-%d %H:%M:%S UTC")
            );
            Ok(())
        }
        Command::Revoke { request_id, json } => {
            let svc = services().await?;
            // An operator with pgjit's rights revokes directly, as revoke-all does (the MAC is
            // for what reaches the functions; the operator needs no VerifyMac).
            let result = pgjit::control::grants::revoke::revoke(
                &svc,
                &request_id,
                pgjit::contract::events::RevokeTrigger::Early,
                Utc::now(),
            )
            .await
            .map_err(chain)?;
            if json {
                return print_json(&result);
            }
            let note = if result.repeated {
                " (nothing left to do)".to_owned()
            } else {
                format!(", {} session(s) ended", result.sessions_ended)
            };
            println!(
                "{}: {} ({}){note}",
                result.request_id, result.status, result.db_user
            );
            Ok(())
        }
        Command::Extend {
            request_id,
            duration,
            approver,
            reason,
            json,
        } => {
            let duration_seconds = pgjit::contract::events::parse_duration(&duration)?;
            let svc = services().await?;
            let now = Utc::now();
            let extension = pgjit::contract::events::Extension {
                request_id,
                approver,
                approvers: Vec::new(),
                duration_seconds,
                reason,
                sent_at: Some(now),
                // Each run of the command is an extension of its own.
                event_id: Some(format!(
                    "cli-{}",
                    now.timestamp_nanos_opt().unwrap_or_default()
                )),
                signed_at: None,
            };
            let result = pgjit::control::extension::extend(&svc, &extension, now)
                .await
                .map_err(chain)?;
            if json {
                return print_json(&result);
            }
            println!(
                "{}: {} ({}) until {}",
                result.request_id,
                result.status,
                result.db_user,
                result.expires_at.format("%Y-%m-%d %H:%M:%S UTC")
            );
            Ok(())
        }
        Command::RevokeAll {
            integration,
            yes,
            json,
        } => {
            if !yes {
                return Err(format!("revoke-all ends every temporary access to {integration:?}: run it again with --yes"));
            }
            let svc = services().await?;
            let results =
                pgjit::control::grants::revoke::revoke_all(&svc, &integration, Utc::now())
                    .await
                    .map_err(chain)?;
            let failed = results.iter().filter(|(_, r)| r.is_err()).count();
            if json {
                let rows: Vec<Value> = results
                    .iter()
                    .map(|(id, r)| match r {
                        Ok(r) => {
                            json!({"request_id": id, "status": r.status, "db_user": r.db_user})
                        }
                        Err(e) => json!({"request_id": id, "error": e}),
                    })
                    .collect();
                print_json(&rows)?;
            } else {
                for (id, r) in &results {
                    match r {
                        Ok(r) => println!("{id}: {} ({})", r.status, r.db_user),
                        Err(e) => println!("{id}: FAILED: {e}"),
                    }
                }
                println!(
                    "{} grant(s) revoked on {integration}, {failed} failed",
                    results.len() - failed
                );
            }
            if failed > 0 {
                return Err(format!(
                    "{failed} revoke(s) failed; run revoke-all again or see the errors above"
                ));
            }
            Ok(())
        }
        Command::Audit {
            integration,
            database,
            json,
        } => {
            let svc = services().await?;
            let mut list: Vec<_> = svc
                .store
                .all_grants()
                .await
                .map_err(chain)?
                .into_iter()
                .filter(|g| integration.as_ref().is_none_or(|i| &g.integration == i))
                .filter(|g| {
                    database
                        .as_ref()
                        .is_none_or(|d| g.access.iter().any(|a| &a.database == d))
                })
                .collect();
            list.sort_by(|a, b| b.created_at.cmp(&a.created_at));
            let mut audited = Vec::with_capacity(list.len());
            for g in &list {
                audited.push(match &g.session_audit {
                    Some(pgjit::engine::roles::grant::SessionAudit::On { .. }) => Some(
                        svc.store
                            .audited_statement_count(&g.request_id)
                            .await
                            .map_err(chain)?,
                    ),
                    _ => None,
                });
            }
            if json {
                let rows: Vec<Value> = list
                    .iter()
                    .zip(&audited)
                    .map(|(g, n)| {
                        let mut row = serde_json::to_value(g).unwrap_or_default();
                        row["audited_statements"] = json!(n);
                        row
                    })
                    .collect();
                return print_json(&rows);
            }
            for (g, audited) in list.iter().zip(&audited) {
                let until = g
                    .revoked_at
                    .map(|t| format!("revoked {}", t.format("%Y-%m-%d %H:%M")))
                    .unwrap_or_else(|| format!("until {}", g.expires_at.format("%Y-%m-%d %H:%M")));
                let access: Vec<String> = g
                    .access
                    .iter()
                    .map(|a| serde_json::to_string(a).unwrap_or_default())
                    .collect();
                let session_audit = match (&g.session_audit, audited) {
                    (Some(pgjit::engine::roles::grant::SessionAudit::On { .. }), Some(n)) => {
                        format!(", {n} audited statements")
                    }
                    (Some(pgjit::engine::roles::grant::SessionAudit::Off { reason }), _) => {
                        format!(", session audit off: {reason}")
                    }
                    _ => String::new(),
                };
                println!(
                    "{} {} {} as {} on {}, approved by {}, granted {} {} [{}]{}{}\n    {}",
                    g.request_id,
                    g.status.as_str(),
                    g.requester.id,
                    g.db_user,
                    g.integration,
                    g.approver,
                    g.created_at.format("%Y-%m-%d %H:%M"),
                    until,
                    g.reason.as_deref().unwrap_or("no reason given"),
                    g.failure
                        .as_deref()
                        .map(|f| format!(" failed: {f}"))
                        .unwrap_or_default(),
                    session_audit,
                    access.join(" ")
                );
            }
            Ok(())
        }
        Command::Grants { all, json } => {
            let svc = services().await?;
            let mut list = if all {
                svc.store.all_grants().await.map_err(chain)?
            } else {
                svc.store
                    .grants_in(pgjit::aws::store::GrantStatus::Active)
                    .await
                    .map_err(chain)?
            };
            list.sort_by(|a, b| a.expires_at.cmp(&b.expires_at));
            if json {
                return print_json(&list);
            }
            let now = Utc::now();
            if list.is_empty() {
                println!("{}", if all { "no grants" } else { "no active grants" });
            }
            for g in &list {
                let left = g.expires_at - now;
                let remaining = if g.status == pgjit::aws::store::GrantStatus::Active
                    && left.num_seconds() > 0
                {
                    format!("{}h{:02}m left", left.num_hours(), left.num_minutes() % 60)
                } else {
                    String::new()
                };
                let what: Vec<String> = g
                    .access
                    .iter()
                    .map(|a| {
                        let object = [
                            a.schema.as_deref(),
                            a.table
                                .as_deref()
                                .or(a.sequence.as_deref())
                                .or(a.function.as_deref())
                                .or(a.role.as_deref()),
                        ]
                        .into_iter()
                        .flatten()
                        .collect::<Vec<_>>()
                        .join(".");
                        format!(
                            "{}{}{} {}",
                            a.database,
                            if object.is_empty() { "" } else { ":" },
                            object,
                            a.privileges.join(",")
                        )
                    })
                    .collect();
                println!(
                    "{:<16} {:<8} {:<18} {:<28} {} {:<14} approved by {}: {}",
                    g.request_id,
                    g.status.as_str(),
                    g.integration,
                    g.db_user,
                    g.expires_at.format("%Y-%m-%d %H:%M"),
                    remaining,
                    g.approver,
                    what.join("; ")
                );
            }
            Ok(())
        }
        Command::Connect {
            request_id,
            database,
            print_env,
            url,
            granted,
            ca,
            psql_args,
        } => {
            let svc = services().await?;
            connect::run(
                &svc,
                connect::Options {
                    request_id,
                    database,
                    granted,
                    ca,
                    print_env,
                    url,
                    psql_args,
                },
            )
            .await
        }
        Command::Credentials { request_id } => {
            let svc = services().await?;
            let record = svc
                .store
                .get_grant(&request_id)
                .await
                .map_err(chain)?
                .ok_or_else(|| format!("unknown request {request_id:?}"))?;
            let arn = record.secret_arn.ok_or_else(|| {
                format!(
                    "request {request_id:?} has no credentials secret (IAM mode, or not granted)"
                )
            })?;
            if record.status != pgjit::aws::store::GrantStatus::Active {
                return Err(format!(
                    "request {request_id:?} is {}: its credentials are gone",
                    record.status
                ));
            }
            let secret = pgjit::aws::credentials::read(&svc, &arn)
                .await
                .map_err(chain)?;
            println!("{}", secret.expose());
            Ok(())
        }
        Command::Cleanup { now, json } => {
            let now = match now {
                Some(text) => DateTime::parse_from_rfc3339(&text)
                    .map_err(|e| format!("--now {text:?}: {e}"))?
                    .with_timezone(&Utc),
                None => Utc::now(),
            };
            let svc = services().await?;
            let report = pgjit::control::cleanup::run(&svc, now)
                .await
                .map_err(chain)?;
            if json {
                return print_json(&report);
            }
            println!(
                "cleanup as of {}: {} deleted, {} overdue revoked, {} finished, {} rotated, {} orphan(s) removed, {} error(s)",
                now.format("%Y-%m-%d %H:%M:%S UTC"),
                report.deleted.len(),
                report.revoked_overdue.len(),
                report.finished.len(),
                report.rotated.len(),
                report.orphans.len(),
                report.errors.len()
            );
            for o in &report.orphans {
                println!("  orphan removed: {o}");
            }
            println!(
                "  profile roles: {} ({} unused past their retention, dropped)",
                report.profile_roles,
                report.profiles_dropped.len()
            );
            println!(
                "  {} connection(s) to the servers, {} due item(s) read",
                report.connections, report.items_read
            );
            for (table, entries) in &report.largest_acls {
                println!("  largest ACL: {table}, {entries} entries");
            }
            for e in &report.errors {
                println!("  error: {e}");
            }
            Ok(())
        }
        Command::Discover { json } => {
            let svc = services().await?;
            let terminal = std::io::stderr().is_terminal() && !json;
            let report = pgjit::control::discovery::run(&svc, Utc::now(), |line| {
                if terminal {
                    eprintln!("{line}");
                }
            })
            .await
            .map_err(chain)?;
            if json {
                return print_json(&report);
            }
            for name in &report.registered {
                println!("registered {name}");
            }
            for (name, n) in &report.inventoried {
                println!("{name}: {n} objects");
            }
            for (name, why) in &report.failed {
                println!("{name}: failed: {why}");
            }
            Ok(())
        }
        Command::Inventory { integration, json } => {
            let svc = services().await?;
            let items = svc.store.inventory(&integration).await.map_err(chain)?;
            if items.is_empty()
                && svc
                    .store
                    .get_integration(&integration)
                    .await
                    .map_err(chain)?
                    .is_none()
            {
                return Err(format!("unknown integration {integration:?}"));
            }
            if json {
                return print_json(&items);
            }
            for i in &items {
                let name = match &i.schema {
                    Some(s) => format!("{s}.{}", i.name),
                    None => i.name.clone(),
                };
                println!("{:<10} {:<18} {}", i.database, i.kind, name);
            }
            Ok(())
        }
        Command::Sessions {
            command:
                Some(SessionsCommand::Ingest {
                    integration,
                    file,
                    json,
                }),
            ..
        } => {
            let svc = services().await?;
            let i = svc
                .store
                .get_integration(&integration)
                .await
                .map_err(chain)?
                .ok_or_else(|| format!("unknown integration {integration:?}"))?;
            let bytes = std::fs::read(&file).map_err(|e| format!("{file}: {e}"))?;
            let text = String::from_utf8_lossy(&bytes);
            let ingested = pgjit::control::sessions::ingest_file(
                &svc.store,
                &i,
                &text,
                svc.config.session_retention_days,
                Utc::now(),
            )
            .await
            .map_err(chain)?;
            if json {
                return print_json(&ingested);
            }
            println!(
                "{} records read, {} entries written ({} statements), {} lines of managed users without a grant, {} lines unparsed, {} AUDIT lines not in pgaudit's shape",
                ingested.records, ingested.written, ingested.statements, ingested.unattributed, ingested.unparsed, ingested.malformed
            );
            Ok(())
        }
        Command::Sessions {
            command: None,
            request_id: Some(request_id),
            json,
        } => {
            let svc = services().await?;
            let grant = svc
                .store
                .get_grant(&request_id)
                .await
                .map_err(chain)?
                .ok_or_else(|| format!("unknown request {request_id:?}"))?;
            let entries = svc
                .store
                .session_entries(&request_id)
                .await
                .map_err(chain)?;
            let sessions = pgjit::control::sessions::view::sessions_of(&entries);
            if json {
                return print_json(&json!({"grant": grant, "sessions": sessions}));
            }
            print_sessions(&grant, &sessions);
            Ok(())
        }
        Command::Sessions {
            command: None,
            request_id: None,
            ..
        } => Err("sessions: give a REQUEST_ID (or `sessions ingest --integration I FILE`)".into()),
        Command::Doctor { integration, json } => {
            let svc = services().await?;
            let i = svc
                .store
                .get_integration(&integration)
                .await
                .map_err(chain)?
                .ok_or_else(|| format!("unknown integration {integration:?}"))?;
            let target = pgjit::control::endpoint::resolve(&svc, &i)
                .await
                .map_err(chain)?;
            let mut findings =
                pgjit::engine::doctor::doctor(&target.connector, &i.doctor_scope(), &[])
                    .await
                    .map_err(chain)?;
            if i.enable_audit {
                findings.extend(pgjit::control::sessions::log_export_finding(&svc, &i).await);
            }
            findings.push(pgjit::control::flows::doctor_finding(&svc, &i).await);
            findings.extend(pgjit::aws::access_role::doctor_finding(&svc, &i).await);
            if json {
                return print_json(&findings);
            }
            for f in &findings {
                println!(
                    "[{}] {}: {}",
                    if f.ok {
                        "ok"
                    } else if f.warning {
                        "WARN"
                    } else {
                        "MISSING"
                    },
                    f.capability,
                    f.detail
                );
            }
            let missing = findings.iter().filter(|f| !f.ok && !f.warning).count();
            if missing > 0 {
                return Err(format!("{missing} capability(ies) missing; run `pgjit setup-sql --flavor {} --admin-user NAME` as the master user", i.kind));
            }
            Ok(())
        }
    }
}
