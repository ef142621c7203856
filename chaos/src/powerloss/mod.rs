//! Power loss: a node's data directory on a filesystem that loses what was not fsynced when "the power goes"
//! ([`fs`], deciding with [`model`]), run as its own process (`sluice-lazyfs`) and told to cut through a
//! control socket ([`LazyFsProcess::cut`]). What it drops and what it cannot model: `docs/reliability.md`.
//!
//! What flows in: a node's file operations (through FUSE), and `cut` on the control socket. What flows out:
//! the same operations on the directory below, writes only when fsynced; on a cut, the pending data dropped and
//! the unsynced directory entries undone.

pub mod fs;
pub mod model;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::ChaosError;

/// A running `sluice-lazyfs`: `mount` shows `disk` through the lazy layer.
pub struct LazyFsProcess {
    pub mount: PathBuf,
    pub disk: PathBuf,
    control: PathBuf,
    child: Option<Child>,
}

fn failed(what: impl Into<String>) -> ChaosError {
    ChaosError::Setup(what.into())
}

impl LazyFsProcess {
    /// Mounts `disk` at `mount` (both created), with the control socket at `control`; returns once mounted.
    pub fn start(binary: &Path, disk: &Path, mount: &Path, control: &Path) -> Result<LazyFsProcess, ChaosError> {
        std::fs::create_dir_all(disk).map_err(|e| failed(format!("creating {}: {e}", disk.display())))?;
        std::fs::create_dir_all(mount).map_err(|e| failed(format!("creating {}: {e}", mount.display())))?;
        let mut child = Command::new(binary)
            .arg("--disk")
            .arg(disk)
            .arg("--mount")
            .arg(mount)
            .arg("--control")
            .arg(control)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| failed(format!("starting {}: {e}", binary.display())))?;
        // It says "mounted" once the mount is there and the control socket listens.
        let mut line = String::new();
        if let Some(stdout) = child.stdout.take() {
            let _ = BufReader::new(stdout).read_line(&mut line);
        }
        if line.trim() != "mounted" {
            let _ = child.kill();
            let _ = child.wait();
            return Err(failed(format!("sluice-lazyfs did not mount {}: {line:?}", mount.display())));
        }
        Ok(LazyFsProcess { mount: mount.into(), disk: disk.into(), control: control.into(), child: Some(child) })
    }

    fn ask(&self, command: &str) -> Result<String, ChaosError> {
        let mut stream = UnixStream::connect(&self.control)
            .map_err(|e| failed(format!("lazyfs control {}: {e}", self.control.display())))?;
        writeln!(stream, "{command}").map_err(|e| failed(format!("lazyfs control: {e}")))?;
        let mut answer = String::new();
        BufReader::new(stream).read_line(&mut answer).map_err(|e| failed(format!("lazyfs control: {e}")))?;
        Ok(answer.trim().to_string())
    }

    /// The power goes: what was not fsynced is dropped. Kill the node that uses the mount first.
    pub fn cut(&self) -> Result<String, ChaosError> {
        self.ask("cut")
    }

    /// A cut, answering what it lost: (bytes of data, directory entries).
    pub fn cut_counted(&self) -> Result<(u64, u64), ChaosError> {
        let answer = self.cut()?;
        let field = |name: &str| {
            answer
                .split_whitespace()
                .find_map(|part| part.strip_prefix(name)?.strip_prefix('=')?.parse::<u64>().ok())
                .ok_or_else(|| failed(format!("lazyfs answered {answer:?}")))
        };
        Ok((field("dropped_bytes")?, field("undone_entries")?))
    }
}

impl Drop for LazyFsProcess {
    fn drop(&mut self) {
        let _ = self.ask("quit");
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
        // A daemon that died leaves a dead mount behind.
        let _ = Command::new("umount").arg("-l").arg(&self.mount).stderr(Stdio::null()).status();
    }
}
