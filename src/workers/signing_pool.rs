//! The threads that make RSA signatures: one per core, fed from a bounded
//! queue.
//!
//! An RSA-4096 signature takes milliseconds of CPU, too long for the async
//! runtime. It used to run on tokio's blocking pool behind a semaphore of one
//! permit per core; then every signature ended in a chain of hand-offs
//! (blocking thread -> runtime task drops its permit -> next task wakes ->
//! spawns a blocking job -> a blocking thread wakes) before the next one
//! started, and the cores idled in those gaps. Here a signing thread takes
//! the next job itself the moment it finishes one. The queue is bounded, so
//! a flood of requests waits in `run` (back-pressure), not in memory.

use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

type Job = Box<dyn FnOnce() + Send>;

/// Jobs waiting for a signing thread, per thread. Enough to keep the threads
/// busy between wake-ups; more would only hide queueing from the callers'
/// own limits.
const QUEUE_PER_THREAD: usize = 64;

/// Why a job did not run.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("the signing threads have stopped")]
    Stopped,
    #[error("a signing job panicked")]
    Panicked,
    #[error("could not start a signing thread: {0}")]
    Spawn(String),
}

/// A handle to the signing threads; they stop when it is dropped.
pub struct SigningPool {
    jobs: mpsc::Sender<Job>,
}

impl SigningPool {
    /// Starts `threads` signing threads.
    pub fn start(threads: usize) -> Result<Self, PoolError> {
        let threads = threads.max(1);
        let (jobs, queue) = mpsc::channel::<Job>(threads * QUEUE_PER_THREAD);
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..threads {
            let queue = queue.clone();
            let name = std::thread::Builder::new().name(format!("jwksd-sign-{i}"));
            super::spawn(name, move || {
                loop {
                    // The lock is held only while waiting for a job, so
                    // exactly one idle thread waits on the queue and the
                    // others wait for the lock; a job runs unlocked.
                    let job = {
                        let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
                        q.blocking_recv()
                    };
                    match job {
                        Some(job) => job(),
                        None => break,
                    }
                }
            })
            .map_err(|e| PoolError::Spawn(e.to_string()))?;
        }
        Ok(SigningPool { jobs })
    }

    /// Runs `job` on a signing thread and waits for its result; waits for
    /// room first when the queue is full.
    pub async fn run<T, F>(&self, job: F) -> Result<T, PoolError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move || {
            // A panic drops `done` unsent: the caller gets `Panicked`, and
            // the thread goes on with the next job.
            if let Ok(v) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)) {
                let _ = done.send(v);
            }
        });
        self.jobs.send(job).await.map_err(|_| PoolError::Stopped)?;
        result.await.map_err(|_| PoolError::Panicked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jobs_run_on_the_signing_threads_and_return_their_results() {
        let pool = Arc::new(SigningPool::start(2).unwrap());
        let mut tasks = Vec::new();
        for i in 0..200u32 {
            let pool = pool.clone();
            tasks.push(tokio::spawn(async move {
                pool.run(move || {
                    let name = std::thread::current().name().map(str::to_owned);
                    (i * 2, name)
                })
                .await
                .unwrap()
            }));
        }
        for (i, t) in tasks.into_iter().enumerate() {
            let (v, name) = t.await.unwrap();
            assert_eq!(v, i as u32 * 2);
            let name = name.unwrap();
            assert!(name.starts_with("jwksd-sign-"), "{name}");
        }
    }

    #[tokio::test]
    async fn a_panicking_job_fails_alone_and_the_thread_goes_on() {
        let pool = SigningPool::start(1).unwrap();
        let r: Result<(), _> = pool.run(|| panic!("boom")).await;
        assert!(matches!(r, Err(PoolError::Panicked)), "{r:?}");
        assert_eq!(pool.run(|| 7).await.unwrap(), 7);
    }
}
