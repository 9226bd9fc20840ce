//! Process facts through `sysinfo`, which its maintainers test on Linux, macOS and Windows:
//! the implementation on macOS (and, for what Windows does not answer better itself, on
//! Windows). On Linux it is compiled for the tests only, which check it against /proc.

use std::path::PathBuf;

use sysinfo::{Pid, ProcessRefreshKind, ProcessStatus, ProcessesToUpdate, System, UpdateKind};

/// A table of processes with what `kind` asks for; `only` limits it to one pid.
fn table(only: Option<u32>, kind: ProcessRefreshKind) -> Option<System> {
    let mut system = System::new().ok()?;
    let pids = only.map(|pid| [Pid::from_u32(pid)]);
    let which = match &pids {
        Some(pids) => ProcessesToUpdate::Some(pids),
        None => ProcessesToUpdate::All,
    };
    system.refresh_processes_specifics(which, true, kind);
    Some(system)
}

fn with_process<T>(
    pid: u32,
    kind: ProcessRefreshKind,
    read: impl FnOnce(&sysinfo::Process) -> Option<T>,
) -> Option<T> {
    let system = table(Some(pid), kind)?;
    read(system.process(Pid::from_u32(pid))?)
}

/// Whether `pid` exists and has not exited (a zombie has).
pub fn is_alive(pid: u32) -> bool {
    with_process(pid, ProcessRefreshKind::nothing(), |p| {
        Some(!matches!(
            p.status(),
            ProcessStatus::Zombie | ProcessStatus::Dead
        ))
    })
    .unwrap_or(false)
}

/// When `pid` started, in seconds since the epoch: with the pid it names one process (a pid
/// reused within the same second would be taken for the old one).
pub fn start_time(pid: u32) -> Option<u64> {
    with_process(pid, ProcessRefreshKind::nothing(), |p| Some(p.start_time()))
}

/// The command line of `pid`, space-separated.
pub fn command_line(pid: u32) -> Option<String> {
    with_process(
        pid,
        ProcessRefreshKind::nothing().with_cmd(UpdateKind::Always),
        |p| {
            let text = p
                .cmd()
                .iter()
                .map(|part| part.to_string_lossy())
                .filter(|part| !part.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            (!text.is_empty()).then_some(text)
        },
    )
}

/// The working directory of `pid`.
pub fn working_dir(pid: u32) -> Option<PathBuf> {
    with_process(
        pid,
        ProcessRefreshKind::nothing().with_cwd(UpdateKind::Always),
        |p| p.cwd().map(PathBuf::from),
    )
}

/// The names (never the values) of the environment `pid` was started with, sorted.
pub fn environment_keys(pid: u32) -> Option<Vec<String>> {
    with_process(
        pid,
        ProcessRefreshKind::nothing().with_environ(UpdateKind::Always),
        |p| {
            let mut keys: Vec<String> = p
                .environ()
                .iter()
                .filter_map(|entry| {
                    let entry = entry.to_string_lossy();
                    let (key, _) = entry.split_once('=')?;
                    Some(key.to_owned())
                })
                .filter(|key| !key.is_empty())
                .collect();
            keys.sort();
            keys.dedup();
            Some(keys)
        },
    )
}

/// `pid` and every live process below it, parents first.
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut children: std::collections::HashMap<u32, Vec<u32>> = Default::default();
    if let Some(system) = table(None, ProcessRefreshKind::nothing()) {
        for (child, process) in system.processes() {
            if let Some(parent) = process.parent() {
                children
                    .entry(parent.as_u32())
                    .or_default()
                    .push(child.as_u32());
            }
        }
    }
    let mut tree = vec![pid];
    let mut next = 0;
    while let Some(&parent) = tree.get(next) {
        let mut below = children.remove(&parent).unwrap_or_default();
        below.sort_unstable();
        tree.extend(below);
        next += 1;
    }
    tree
}

/// Every live process, with its pid (for a scan by process group, say).
pub fn all_pids() -> Vec<u32> {
    table(None, ProcessRefreshKind::nothing())
        .map(|system| {
            system
                .processes()
                .iter()
                .filter(|(_, p)| !matches!(p.status(), ProcessStatus::Zombie | ProcessStatus::Dead))
                .map(|(pid, _)| pid.as_u32())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    //! The macOS/Windows implementation agrees with the /proc one on this machine.
    use super::*;

    #[test]
    fn portable_facts_agree_with_proc() {
        let pid = std::process::id();
        assert!(is_alive(pid));
        assert_eq!(command_line(pid), crate::platform::command_line(pid));
        assert_eq!(working_dir(pid), crate::platform::working_dir(pid));
        assert_eq!(
            environment_keys(pid),
            crate::platform::environment_keys(pid)
        );
        assert!(start_time(pid).is_some());
        assert!(all_pids().contains(&pid));
    }

    #[test]
    fn a_process_tree_lists_children_and_a_dead_pid_is_not_alive() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let tree = process_tree(std::process::id());
        assert!(tree.contains(&child.id()), "{tree:?}");
        assert_eq!(
            process_tree(child.id()),
            crate::platform::process_tree(child.id())
        );
        child.kill().expect("kill");
        child.wait().expect("wait");
        assert!(!is_alive(child.id()));
        assert_eq!(start_time(child.id()), None);
    }
}
