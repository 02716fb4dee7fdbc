//! Where the safe-state command tasks run: threads of their own, so that no application
//! work can hold them back.
//!
//! The node's actors share one tokio runtime, whose tasks are cooperative: a site's dispatch
//! cycle over 10,000 sessions, or a burst of link actors, keeps a worker for tens of
//! milliseconds without yielding. A safe-state write queued behind it waits that long (the
//! tail of `bench site`'s `islanding_commanded_p99` was exactly that). On threads of their
//! own the safety tasks are scheduled by the operating system, which preempts: a busy
//! application worker costs them a time slice, never a whole dispatch cycle. Where the
//! process may, the threads also run at a higher priority ([`SAFETY_NICE`]).
//!
//! A current-thread runtime keeps its safety tasks: that is the chaos runner's paused clock,
//! whose one thread is what makes a run deterministic, and the unit tests'.
//!
//! Device connections made on the node's runtime stay usable from these threads: a tokio
//! socket is driven by the reactor of the runtime that made it, whichever task polls it.

use std::sync::OnceLock;

use tokio::runtime::{Handle, Runtime, RuntimeFlavor};

/// How many threads the safety runtime has (at most the machine's cores).
pub const SAFETY_WORKERS: usize = 2;
/// The nice value the safety threads ask for (lower runs first; -20..=19). Lowering it needs
/// root or `CAP_SYS_NICE`; without either the threads run at the process's priority, and the
/// node says so once in its log.
pub const SAFETY_NICE: i32 = -5;

/// The runtime the safe-state tasks of a node running on `current` are spawned on.
pub fn handle(current: &Handle) -> Handle {
    if current.runtime_flavor() == RuntimeFlavor::CurrentThread {
        return current.clone();
    }
    static SAFETY: OnceLock<Option<Runtime>> = OnceLock::new();
    match SAFETY.get_or_init(build) {
        Some(rt) => rt.handle().clone(),
        None => current.clone(),
    }
}

/// The safety runtime, or None (logged) when the system refuses its threads.
fn build() -> Option<Runtime> {
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, SAFETY_WORKERS);
    let built = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("gridvisor-safety")
        .on_thread_start(raise_priority)
        .enable_all()
        .build();
    match built {
        Ok(rt) => Some(rt),
        Err(error) => {
            tracing::error!(%error, "the safety runtime could not start: safe-state commands share the node's runtime");
            None
        }
    }
}

/// Ask for [`SAFETY_NICE`] for the calling thread (Linux: a thread's nice value is its own).
fn raise_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid and setpriority take plain integers and touch no memory of ours.
        let refused = unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, SAFETY_NICE) != 0
        };
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| {
            if refused {
                let error = std::io::Error::last_os_error();
                tracing::warn!(%error, nice = SAFETY_NICE, "the safety threads run at the process's priority (raising it needs CAP_SYS_NICE)");
            } else {
                tracing::info!(nice = SAFETY_NICE, "the safety threads run at a raised priority");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn thread_name(h: &Handle) -> Option<String> {
        h.spawn(async { std::thread::current().name().map(str::to_owned) })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_current_thread_runtime_keeps_its_safety_tasks() {
        let h = handle(&Handle::current());
        assert_ne!(thread_name(&h).await.as_deref(), Some("gridvisor-safety"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_multi_thread_node_gets_safety_threads_of_their_own() {
        let h = handle(&Handle::current());
        assert_eq!(thread_name(&h).await.as_deref(), Some("gridvisor-safety"));
        let again = handle(&Handle::current());
        assert_eq!(
            thread_name(&again).await.as_deref(),
            Some("gridvisor-safety")
        );
    }
}
