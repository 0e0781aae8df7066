//! `pgjit`: the operator's command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pgjit::setup::Flavor;

#[derive(Parser)]
#[command(name = "pgjit", version, about = "Just-in-time PostgreSQL access: operator commands")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the SQL that prepares pgjit's admin role (run it as the master user in each database).
    SetupSql {
        /// postgres, rds, aurora, azure, cloudsql or alloydb
        #[arg(long)]
        flavor: Flavor,
        /// The admin role pgjit logs in as.
        #[arg(long)]
        admin_user: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::SetupSql { flavor, admin_user } => pgjit::setup::setup_sql(flavor, &admin_user).map(|sql| print!("{sql}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("pgjit: error: {message}");
            ExitCode::FAILURE
        }
    }
}
