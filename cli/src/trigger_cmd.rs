//! `sluice trigger`: see docs/operations.md.

use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum Command {
    /// Not available yet in this build.
    Unavailable,
}

pub async fn run(command: Command) -> Result<()> {
    match command {
        Command::Unavailable => anyhow::bail!("sluice trigger is not available in this build"),
    }
}
