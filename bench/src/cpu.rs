//! CPU time and memory of the processes under test, from `/proc`: in: pids, before and after a run; out: CPU
//! microseconds per acknowledged event (the figure the other processes on shared cores disturb least), and
//! resident memory.

/// Linux reports `utime`/`stime` in USER_HZ ticks, which is 100 on every architecture it runs on here.
const USER_HZ: u64 = 100;

/// User + system CPU time of a process (all its threads, those that exited too), in microseconds.
pub(crate) fn process_cpu_us(pid: u32) -> Option<u64> {
    parse_stat_cpu_us(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Fields 14 and 15 (utime, stime) of a `/proc/PID/stat` line. The command name (field 2) is in
/// parentheses and may hold spaces or parentheses itself, so fields are counted after its last `)`.
fn parse_stat_cpu_us(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace();
    // After the name: field 3 (state) is the first; utime is field 14, the 12th after it.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) * 1_000_000 / USER_HZ)
}

/// CPU time of the live threads of `pids`, summed by thread name (`tokio-rt-worker`, `rocksdb:high`, …): where
/// a node's CPU goes. A thread that has exited is not counted.
pub(crate) fn thread_cpu_us_by_name(pids: &[u32]) -> std::collections::BTreeMap<String, u64> {
    let mut by_name = std::collections::BTreeMap::new();
    for pid in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { continue };
        for task in tasks.filter_map(Result::ok) {
            let (Ok(name), Ok(stat)) =
                (std::fs::read_to_string(task.path().join("comm")), std::fs::read_to_string(task.path().join("stat")))
            else {
                continue;
            };
            if let Some(cpu_us) = parse_stat_cpu_us(&stat) {
                *by_name.entry(name.trim().to_string()).or_default() += cpu_us;
            }
        }
    }
    by_name
}

/// The summed CPU time of `pids` (a pid that cannot be read counts as nothing).
pub(crate) fn total_cpu_us(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|pid| process_cpu_us(*pid)).sum()
}

/// The summed CPU time of every live process whose process group is one of `groups`: the peers' wrapper
/// scripts (rabbitmq-server) fork the process that does the work, and it stays in the group they lead.
pub(crate) fn group_cpu_us(groups: &[u32]) -> u64 {
    live_stats()
        .filter(|(_, stat)| parse_stat_group(stat).is_some_and(|group| groups.contains(&group)))
        .filter_map(|(_, stat)| parse_stat_cpu_us(&stat))
        .sum()
}

/// The live processes whose parent is `pid` (a node's revision instances).
pub(crate) fn children_of(pid: u32) -> Vec<u32> {
    live_stats().filter(|(_, stat)| parse_stat_parent(stat) == Some(pid)).map(|(child, _)| child).collect()
}

/// Every live process with its `/proc/PID/stat` line (one that exits while being read is skipped).
fn live_stats() -> impl Iterator<Item = (u32, String)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)))
}

/// Field 4 (ppid) of a `/proc/PID/stat` line.
fn parse_stat_parent(stat: &str) -> Option<u32> {
    stat[stat.rfind(')')? + 1..].split_whitespace().nth(1)?.parse().ok()
}

/// Field 5 (pgrp) of a `/proc/PID/stat` line.
fn parse_stat_group(stat: &str) -> Option<u32> {
    stat[stat.rfind(')')? + 1..].split_whitespace().nth(2)?.parse().ok()
}

/// Resident memory of a process (`VmRSS` of `/proc/PID/status`), in bytes.
pub(crate) fn rss_bytes(pid: u32) -> Option<u64> {
    parse_status_rss(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

fn parse_status_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utime_and_stime_are_read_after_the_command_name() {
        // A name with a space and a parenthesis; utime 250 ticks, stime 50 ticks.
        let stat = "4242 (sluice (node) x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 9 0 100 0 0";
        assert_eq!(parse_stat_cpu_us(stat), Some(3_000_000));
        assert_eq!(parse_stat_cpu_us("4242 (x) S 1 2"), None, "too few fields");
        assert_eq!(parse_stat_cpu_us("no name here"), None);
        assert_eq!(parse_stat_group(stat), Some(4242));
        assert_eq!(parse_stat_parent(stat), Some(1));
        assert_eq!(parse_stat_group("4242 (x) S 1"), None);
    }

    #[test]
    fn resident_memory_is_read_from_vmrss() {
        assert_eq!(parse_status_rss("Name:\tsluice\nVmPeak:\t 900 kB\nVmRSS:\t  61440 kB\n"), Some(61440 * 1024));
        assert_eq!(parse_status_rss("Name:\tsluice\n"), None);
        assert!(rss_bytes(std::process::id()).is_some_and(|bytes| bytes > 0));
    }

    #[test]
    fn this_process_has_used_some_cpu() {
        let spin: u64 = (0..5_000_000u64).fold(0, |a, b| a.wrapping_add(b * b));
        assert!(spin > 0);
        assert!(process_cpu_us(std::process::id()).is_some_and(|us| us > 0));
        let own_group = std::fs::read_to_string("/proc/self/stat").ok().and_then(|s| parse_stat_group(&s));
        assert!(own_group.is_some_and(|group| group_cpu_us(&[group]) > 0));
    }
}
