//! `sluice-lazyfs --disk DIR --mount DIR --control SOCKET`: mounts DIR through a layer that keeps writes in
//! memory until they are fsynced (`sluice_chaos::powerloss`), prints `mounted`, and takes commands on the
//! control socket, one line each: `cut` (the power goes: drop what was not fsynced), `stats`, `quit` (unmount
//! and exit).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Context, Result};
use clap::Parser;
use sluice_chaos::powerloss::fs::{LazyFs, State};

#[derive(Parser)]
struct Args {
    /// The directory below: what is durable.
    #[arg(long)]
    disk: PathBuf,
    /// Where the layer is mounted.
    #[arg(long)]
    mount: PathBuf,
    /// The control socket.
    #[arg(long)]
    control: PathBuf,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let state = Arc::new(Mutex::new(State::new(args.disk.clone()).context("the disk directory")?));
    let _ = std::fs::remove_file(&args.control);
    let listener = UnixListener::bind(&args.control).context("the control socket")?;
    let options = [fuser::MountOption::FSName("sluice-lazyfs".into()), fuser::MountOption::Subtype("lazy".into())];
    let session = fuser::spawn_mount2(LazyFs { state: state.clone() }, &args.mount, &options)
        .with_context(|| format!("mounting {}", args.mount.display()))?;
    println!("mounted");
    std::io::stdout().flush()?;
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let mut line = String::new();
        if BufReader::new(&stream).read_line(&mut line).is_err() {
            continue;
        }
        let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
        let command = line.trim();
        let answer = match command {
            // What this cut lost.
            "cut" => {
                let (dropped, undone) = state.cut();
                format!("ok cuts={} dropped_bytes={dropped} undone_entries={undone}", state.cuts)
            }
            // What every cut so far lost.
            _ => format!(
                "ok cuts={} dropped_bytes={} undone_entries={}",
                state.cuts, state.dropped_bytes, state.undone_entries
            ),
        };
        let _ = writeln!(stream, "{answer}");
        if command == "quit" {
            break;
        }
    }
    drop(session);
    Ok(())
}
