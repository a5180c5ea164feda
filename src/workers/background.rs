//! CPU-heavy work that must never delay a request: RSA key generation.
//!
//! An RSA-4096 key takes up to seconds of one core. On tokio's blocking pool
//! it runs at the same priority as the signing threads, so on a 2-core
//! machine a generation takes half the CPU from signing while it lasts, and
//! signing latency shows it (BENCHMARKS.md, "key generation under
//! SCHED_IDLE"). Here each job gets
//! its own thread at the lowest scheduling priority (nice 19, SCHED_IDLE):
//! the kernel gives it only what signing leaves idle, and a successor is
//! needed days ahead (`publish_ahead`), not within the second. At most `cores` such jobs
//! run at once, so a first start with many sets does not spawn hundreds of
//! threads.

use std::sync::OnceLock;

use tokio::sync::{Semaphore, oneshot};

/// The niceness given to background threads: the lowest. It orders them
/// where SCHED_IDLE is refused; under SCHED_IDLE niceness has no effect.
const BACKGROUND_NICE: libc::c_int = 19;

/// Why a background job produced no result.
#[derive(Debug, thiserror::Error)]
pub enum BackgroundError {
    #[error("could not start a background thread: {0}")]
    Spawn(String),
    #[error("the background job panicked")]
    Panicked,
}

fn slots() -> &'static Semaphore {
    static SLOTS: OnceLock<Semaphore> = OnceLock::new();
    SLOTS
        .get_or_init(|| Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get())))
}

/// Runs `job` on a new thread at nice 19 under SCHED_IDLE and waits for its
/// result without blocking the runtime.
pub async fn run_low_priority<T, F>(name: &str, job: F) -> Result<T, BackgroundError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    // The semaphore is never closed, so acquiring cannot fail.
    let _slot = slots()
        .acquire()
        .await
        .map_err(|e| BackgroundError::Spawn(e.to_string()))?;
    let (done, result) = oneshot::channel();
    super::spawn(
        std::thread::Builder::new().name(name.to_owned()),
        move || {
            lower_this_thread_priority();
            let _ = done.send(job());
        },
    )
    .map_err(|e| BackgroundError::Spawn(e.to_string()))?;
    // A dropped sender means the job panicked before sending.
    result.await.map_err(|_| BackgroundError::Panicked)
}

/// Sets the calling thread's niceness. On Linux nice is per thread
/// (`setpriority` with a thread id), so the rest of the process keeps its
/// priority. Raising niceness needs no privilege; a failure only costs
/// latency, so it is logged and the job runs anyway.
fn lower_this_thread_priority() {
    let tid = nix::unistd::gettid().as_raw();
    // SAFETY: setpriority reads only its integer arguments.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, BACKGROUND_NICE) };
    if rc != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "could not lower a key-generation thread's priority");
    }
    // SCHED_IDLE on top: the kernel preempts a SCHED_IDLE thread as soon as
    // a normal one wakes on its core, where a nice-19 thread may run on to
    // the end of its slice (milliseconds) first, and every request hops
    // through several wake-ups. It is not starvation: such a thread still
    // gets a small share of a fully busy core (weight 3 against nice 19's
    // 15 and nice 0's 1,024). The price: while signing keeps every core
    // busy, a generation takes about five times longer than at nice 19
    // alone, and so does an admin rotate or revoke, which answers once the
    // successor exists. While a pending key is ready (rule 4) signing
    // never waits for a generation; a set whose keys were all revoked
    // does, longer under full load than it did.
    // Allowed without privilege.
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler reads `param` only during the call.
    let rc = unsafe { libc::sched_setscheduler(tid, libc::SCHED_IDLE, &param) };
    if rc != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "could not move a key-generation thread to SCHED_IDLE");
    }
}

/// Whether the calling thread runs under SCHED_IDLE (tests read it from
/// inside a job).
pub fn this_thread_is_sched_idle() -> std::io::Result<bool> {
    // SAFETY: sched_getscheduler reads only its integer argument (0: the
    // calling thread).
    let policy = unsafe { libc::sched_getscheduler(0) };
    if policy == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(policy == libc::SCHED_IDLE)
}

/// The niceness of the calling thread (tests read it from inside a job).
pub fn this_thread_niceness() -> std::io::Result<i32> {
    let tid = nix::unistd::gettid().as_raw();
    // getpriority may legitimately return -1, so errno tells failure apart.
    nix::errno::Errno::clear();
    // SAFETY: getpriority reads only its integer arguments.
    let prio = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t) };
    if prio == -1 && nix::errno::Errno::last_raw() != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(prio)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_job_runs_at_nice_19_under_sched_idle_while_the_runtime_keeps_its_priority() {
        let before = this_thread_niceness().unwrap();
        assert!(!this_thread_is_sched_idle().unwrap());
        let (nice, idle) = run_low_priority("test-bg", || {
            (this_thread_niceness(), this_thread_is_sched_idle())
        })
        .await
        .unwrap();
        assert_eq!(nice.unwrap(), BACKGROUND_NICE);
        assert!(idle.unwrap(), "the job's thread is not SCHED_IDLE");
        assert_eq!(this_thread_niceness().unwrap(), before);
        assert!(!this_thread_is_sched_idle().unwrap());
    }

    #[tokio::test]
    async fn a_panicking_job_is_an_error_not_a_hang() {
        let r: Result<(), _> = run_low_priority("test-bg", || panic!("boom")).await;
        assert!(matches!(r, Err(BackgroundError::Panicked)), "{r:?}");
    }
}
