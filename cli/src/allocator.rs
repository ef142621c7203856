//! jemalloc's own figures as gauges. In: its counters, read every few seconds. Out:
//! `sluice_allocator_bytes{kind}`: `allocated` (what the process asked for and holds), `active` (the pages
//! that holds), `metadata` (jemalloc's bookkeeping), `resident` (what it has mapped and resident) and
//! `retained` (mapped, given back to the system, kept for reuse). `resident` minus `allocated` is memory
//! the allocator keeps for reuse rather than data: the figure to read beside the RSS when a node's memory
//! grows (docs/operations.md, "Storage tuning").

use std::ffi::{CStr, c_void};
use std::time::Duration;

const KINDS: [(&str, &CStr); 5] = [
    ("allocated", c"stats.allocated"),
    ("active", c"stats.active"),
    ("metadata", c"stats.metadata"),
    ("resident", c"stats.resident"),
    ("retained", c"stats.retained"),
];

/// The counters now, by kind; `None` if jemalloc refuses to say (a build without its statistics).
pub(crate) fn read() -> Option<Vec<(&'static str, u64)>> {
    // jemalloc caches its statistics; advancing its epoch refreshes them.
    let mut epoch: u64 = 1;
    mallctl_write(c"epoch", &mut epoch)?;
    KINDS.iter().map(|(kind, name)| mallctl_read::<usize>(name).map(|bytes| (*kind, bytes as u64))).collect()
}

#[allow(unsafe_code)]
fn mallctl_write(name: &CStr, value: &mut u64) -> Option<()> {
    let size = std::mem::size_of::<u64>();
    // SAFETY: `name` is NUL-terminated; `value` is a live u64 of the size given, which is what jemalloc
    // reads for "epoch"; no old value is asked for.
    let status = unsafe {
        tikv_jemalloc_sys::mallctl(
            name.as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            (value as *mut u64).cast::<c_void>(),
            size,
        )
    };
    (status == 0).then_some(())
}

/// The integer types jemalloc's read-only controls hold (`size_t`, `unsigned`, `ssize_t`): any bit pattern
/// jemalloc writes is a valid value of them.
trait MallctlInteger: Copy + Default {}
impl MallctlInteger for usize {}
impl MallctlInteger for u32 {}
impl MallctlInteger for isize {}

/// A control's value, read as the integer type jemalloc keeps it in (`None` if jemalloc refuses, e.g. for a
/// name it does not know or a type of another size).
#[allow(unsafe_code)]
fn mallctl_read<T: MallctlInteger>(name: &CStr) -> Option<T> {
    let mut value = T::default();
    let mut size = std::mem::size_of::<T>();
    // SAFETY: `name` is NUL-terminated; jemalloc writes at most `size` bytes into `value`, a live integer of
    // that size (it refuses a size other than its type's), and writes nothing through the null new value.
    let status = unsafe {
        tikv_jemalloc_sys::mallctl(
            name.as_ptr(),
            (&mut value as *mut T).cast::<c_void>(),
            &mut size,
            std::ptr::null_mut(),
            0,
        )
    };
    (status == 0 && size == std::mem::size_of::<T>()).then_some(value)
}

/// The number of automatic arenas jemalloc was started with (`opt.narenas`, an `unsigned`), as `malloc_conf` in
/// `main.rs` and `MALLOC_CONF` set it (the arena of very large allocations comes on top).
pub(crate) fn arenas() -> Option<u32> {
    mallctl_read(c"opt.narenas")
}

/// Sets the gauges every `period` until the task is aborted; ends at once if jemalloc has no statistics.
pub(crate) fn publish_every(period: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        tracing::info!(arenas = arenas(), "jemalloc");
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            let Some(figures) = read() else {
                tracing::warn!("jemalloc gives no statistics: sluice_allocator_bytes is not published");
                return;
            };
            for (kind, bytes) in figures {
                metrics::gauge!("sluice_allocator_bytes", "kind" => kind).set(bytes as f64);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figure(figures: &[(&str, u64)], kind: &str) -> u64 {
        figures.iter().find(|(k, _)| *k == kind).map(|(_, bytes)| *bytes).expect("every kind is read")
    }

    /// The options in `main.rs` reach jemalloc (a misspelt one is only warned about on standard error).
    #[test]
    fn jemalloc_runs_with_the_options_main_asks_for() {
        if std::env::var_os("MALLOC_CONF").is_none() {
            assert_eq!(arenas(), Some(2));
            // `ssize_t`s.
            assert_eq!(mallctl_read::<isize>(c"opt.dirty_decay_ms"), Some(1000));
            assert_eq!(mallctl_read::<isize>(c"opt.muzzy_decay_ms"), Some(0));
        }
    }

    /// Other tests of this binary allocate and free alongside, so the figures move by the 128 MiB held
    /// give or take their few MiB (a first version asked for the exact 64 MiB and failed in CI when a
    /// neighbour freed 270 kB in between).
    #[test]
    fn the_counters_follow_an_allocation_and_its_release() {
        const HELD: u64 = 128 << 20;
        const SLACK: u64 = 16 << 20;
        let before = read().expect("jemalloc is built with statistics");
        let held = vec![1u8; HELD as usize];
        let during = read().expect("statistics");
        assert!(figure(&during, "allocated") + SLACK >= figure(&before, "allocated") + HELD, "{before:?} → {during:?}");
        assert!(figure(&during, "resident") >= figure(&during, "active"));
        assert!(figure(&during, "active") >= figure(&during, "allocated"));
        assert!(figure(&during, "metadata") > 0);
        drop(std::hint::black_box(held));
        let after = read().expect("statistics");
        assert!(figure(&after, "allocated") + HELD <= figure(&during, "allocated") + SLACK, "{during:?} → {after:?}");
    }
}
