//! The chaos suite in one binary, so it is compiled and linked once: real `sluice node` clusters under
//! faults, checked by `sluice_chaos::checker`, a module per scenario numbered from basic to exotic. libtest
//! runs as many tests at once as there are cores; each run has its own namespaces, bridge, ports and data
//! directories, so two clusters under faults side by side only share the CPU (the checks are of safety, not
//! of timing). Filter by module: `scripts/test.sh t81_`. Needs the workspace built with
//! `--features sluice/planted-bugs` (scripts/test.sh does).

mod t80_chaos;
mod t81_chaos_self_test;
mod t82_chaos_loopback_membership;
mod t83_power_loss_filesystem;
mod t84_chaos_power_loss;
