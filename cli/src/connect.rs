//! `pgjit connect REQ`: the requester into their grant, with their own AWS credentials. The
//! grant comes from the front door (or an `Access Granted` event's details, or, on the local
//! emulator, the store); the password from the credentials secret, which only the requester's
//! session may read, or an RDS IAM token made with the SDK's signer (after assuming the
//! grant's access role, for Identity Center users); and psql starts with `verify-full`, the
//! server's roots in a private file, and the password or token in its environment only.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use pgjit::aws::Services;
use pgjit::contract::connect::{shell_export, Settings, WayIn};
use pgjit::contract::integration::AccessMode;
use pgjit::contract::requests::Caller;
use pgjit::SecretString;
use serde_json::{json, Value};

pub struct Options {
    pub request_id: String,
    pub database: Option<String>,
    /// An `Access Granted` event (or its detail) instead of asking the front door.
    pub granted: Option<String>,
    /// The server's CA (PEM file), where the grant does not say it.
    pub ca: Option<String>,
    pub print_env: bool,
    pub url: bool,
    pub psql_args: Vec<String>,
}

pub async fn run(svc: &Services, o: Options) -> Result<(), String> {
    let me = me(svc).await?;
    let way = match &o.granted {
        Some(file) => WayIn::from_granted(&super::read_json(file)?)?,
        None => from_front_door(svc, &o.request_id).await?,
    };
    if way.request_id != o.request_id {
        return Err(format!(
            "{} describes request {}, not {}",
            o.granted.as_deref().unwrap_or("the answer"),
            way.request_id,
            o.request_id
        ));
    }
    way.check(&me, chrono::Utc::now())?;
    let dbname = way.database(o.database.as_deref())?;
    let (host, port, user) = match (&way.host, way.port, &way.db_user) {
        (Some(h), Some(p), Some(u)) => (h.clone(), p, u.clone()),
        _ => {
            return Err(format!(
                "the grant of request {} names no host, port or user",
                way.request_id
            ))
        }
    };
    let keep_ca = o.print_env || o.url;
    let sslrootcert = roots_file(&way, o.ca.as_deref(), keep_ca)?;
    let settings = Settings {
        host: host.clone(),
        port,
        dbname,
        user: user.clone(),
        sslrootcert: sslrootcert.path.clone(),
    };
    if o.url {
        println!("{}", settings.url());
        return Ok(());
    }
    let password = password(svc, &way, &me, &host, port, &user).await?;
    if o.print_env {
        for (name, value) in settings.env() {
            println!("{}", shell_export(name, &value));
        }
        println!("{}", shell_export("PGPASSWORD", password.expose()));
        return Ok(());
    }
    let psql = std::env::var("PGJIT_PSQL")
        .ok()
        .filter(|p| !p.trim().is_empty())
        .unwrap_or_else(|| "psql".into());
    let status = std::process::Command::new(&psql)
        .args(&o.psql_args)
        .env_remove("PGSERVICE")
        .env_remove("PGSSLCERT")
        .env_remove("PGSSLKEY")
        .envs(settings.env())
        .env("PGPASSWORD", password.expose())
        .status();
    drop(sslrootcert);
    match status {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("psql ended with {s}")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!(
            "{psql} is not installed (or not on PATH): install the PostgreSQL client (Debian/Ubuntu: apt install postgresql-client; RHEL/Amazon Linux: dnf install postgresql; macOS: brew install libpq) or name it in PGJIT_PSQL; `pgjit connect {} --print-env` gives the settings for any other client",
            o.request_id
        )),
        Err(e) => Err(format!("cannot start {psql}: {e}")),
    }
}

/// Who the caller's own credentials are.
async fn me(svc: &Services) -> Result<Caller, String> {
    let out = svc
        .sts
        .get_caller_identity()
        .send()
        .await
        .map_err(|e| super::chain(pgjit::aws::AwsError::new("sts:GetCallerIdentity", e)))?;
    Ok(Caller {
        arn: out
            .arn()
            .ok_or("sts:GetCallerIdentity named no ARN")?
            .to_owned(),
        user_id: out.user_id().unwrap_or_default().to_owned(),
        account: out.account().unwrap_or_default().to_owned(),
    })
}

/// The request and its grant from the front door; on the local emulator (no
/// `PGJIT_REQUESTS_URL`) a grant no request made (an approval tool's) is read from the store.
async fn from_front_door(svc: &Services, request_id: &str) -> Result<WayIn, String> {
    match super::front_door::call(svc, json!({"action": "get", "request_id": request_id})).await {
        Ok(requests) => WayIn::from_request(
            requests
                .first()
                .ok_or("the front door answered with no request")?,
        ),
        Err(e)
            if e.contains("unknown request")
                && std::env::var("PGJIT_REQUESTS_URL").map_or(true, |u| u.trim().is_empty()) =>
        {
            let record = svc
                .store
                .get_grant(request_id)
                .await
                .map_err(super::chain)?
                .ok_or_else(|| format!("unknown request {request_id:?}"))?;
            let requester = serde_json::to_value(&record.requester).map_err(|e| e.to_string())?;
            let view = pgjit::control::requests::grant_view(svc, record)
                .await
                .map_err(super::chain)?;
            WayIn::from_request(
                &json!({"request_id": request_id, "requester": requester["id"], "requester_arn": requester["iam_arn"],
                "status": "granted", "grant": serde_json::to_value(view).map_err(|e| e.to_string())?}),
            )
        }
        Err(e) => Err(e),
    }
}

/// The roots file psql trusts: a private file (0600, made new) of the grant's PEM roots, or
/// `system`. Removed when dropped unless kept for `--print-env` and `--url`.
struct RootsFile {
    path: String,
    remove: bool,
}

impl Drop for RootsFile {
    fn drop(&mut self) {
        if self.remove {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn roots_file(way: &WayIn, ca: Option<&str>, keep: bool) -> Result<RootsFile, String> {
    let pem = match (ca, way.roots.as_str()) {
        (Some(file), _) => std::fs::read_to_string(file).map_err(|e| format!("--ca {file}: {e}"))?,
        (None, "rds") => pgjit::engine::postgres::RDS_CA_BUNDLE.to_owned(),
        (None, "pem") => way.ca_pem.clone().ok_or("the grant says its server's roots are PEM and gives none")?,
        (None, "system") => return Ok(RootsFile { path: "system".into(), remove: false }),
        (None, _) => {
            return Err(format!(
                "the CA that signed the server's certificate is not known for request {}: give it with --ca FILE (pgjit connects with verify-full only)",
                way.request_id
            ))
        }
    };
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err("the server's roots hold no PEM certificate".into());
    }
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let tag: String = way
        .request_id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(40)
        .collect();
    let path = dir.join(format!("pgjit-{tag}-{:08x}.pem", rand_suffix()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| format!("cannot write the server's roots to {}: {e}", path.display()))?;
    file.write_all(pem.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(RootsFile {
        path: path.to_string_lossy().into_owned(),
        remove: !keep,
    })
}

fn rand_suffix() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    nanos ^ std::process::id().rotate_left(16)
}

/// The login secret: the credentials secret's password (read as the caller), or an RDS IAM
/// token signed with the caller's credentials, or the access role's.
async fn password(
    svc: &Services,
    way: &WayIn,
    me: &Caller,
    host: &str,
    port: u16,
    user: &str,
) -> Result<SecretString, String> {
    match way.access_mode {
        AccessMode::Password => {
            let arn = way.secret_arn.as_deref().ok_or_else(|| {
                format!(
                    "the grant of request {} has no credentials secret",
                    way.request_id
                )
            })?;
            let secret = pgjit::aws::credentials::read(svc, arn).await.map_err(|e| {
                format!(
                    "cannot read the credentials secret (only the requester's own session may): {}",
                    super::chain(e)
                )
            })?;
            let value: Value = serde_json::from_str(secret.expose())
                .map_err(|_| "the credentials secret is not JSON".to_owned())?;
            value["password"]
                .as_str()
                .map(SecretString::new)
                .ok_or_else(|| "the credentials secret has no password".into())
        }
        AccessMode::Iam => {
            let mut config = svc.sdk_config.clone();
            if let Some(role) = &way.access_role_arn {
                config = assume(svc, role, me).await?;
            }
            if let Some(region) = &way.region {
                config = config
                    .into_builder()
                    .region(aws_config::Region::new(region.clone()))
                    .build();
            }
            pgjit::aws::admin::RdsIamTokens::new(user, config)
                .fresh_token(host, port)
                .await
                .map_err(super::chain)
        }
    }
}

/// The access role's credentials (role chaining: an hour at most, which AWS enforces).
async fn assume(svc: &Services, role: &str, me: &Caller) -> Result<aws_config::SdkConfig, String> {
    let session: String = me
        .id()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "=,.@_-".contains(*c))
        .take(64)
        .collect();
    let session = if session.len() < 2 {
        "pgjit-connect".to_owned()
    } else {
        session
    };
    let out = svc.sts.assume_role().role_arn(role).role_session_name(session).duration_seconds(3600).send().await.map_err(|e| {
        let pattern = role.rsplit_once('/').map(|(head, _)| format!("{head}/*")).unwrap_or_else(|| role.to_owned());
        format!(
            "cannot assume the grant's access role {role}: your identity (your Identity Center permission set) needs sts:AssumeRole on {pattern}: {}",
            super::chain(pgjit::aws::AwsError::new("sts:AssumeRole", e))
        )
    })?;
    let c = out
        .credentials()
        .ok_or("sts:AssumeRole returned no credentials")?;
    let expiry = std::time::SystemTime::try_from(*c.expiration()).ok();
    let credentials = aws_credential_types::Credentials::new(
        c.access_key_id(),
        c.secret_access_key(),
        Some(c.session_token().to_owned()),
        expiry,
        "pgjit-access-role",
    );
    Ok(svc
        .sdk_config
        .clone()
        .into_builder()
        .credentials_provider(
            aws_credential_types::provider::SharedCredentialsProvider::new(credentials),
        )
        .build())
}
