//! Threads for CPU-heavy crypto, kept off the async runtime so that a slow
//! operation never delays a request: the RSA signing threads
//! ([`signing_pool`]) and low-priority key generation ([`background`]).

pub mod background;
pub mod signing_pool;

use std::thread::{Builder, JoinHandle};

/// Starts a thread that logs where the code that started it logs. A new
/// thread otherwise logs to the process's global subscriber: the same in
/// `jwksd serve`, but not where the daemon has a subscriber of its own (a
/// test running daemons in its process, each with its own log file).
fn spawn<T, F>(builder: Builder, job: F) -> std::io::Result<JoinHandle<T>>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let log = tracing::dispatcher::get_default(Clone::clone);
    builder.spawn(move || tracing::dispatcher::with_default(&log, job))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// What a subscriber wrote.
    #[derive(Clone, Default)]
    struct Written(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Written {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_thread_logs_where_the_code_that_started_it_logs() {
        let written = Written::default();
        let writer = written.clone();
        let log = tracing::Dispatch::new(
            tracing_subscriber::fmt()
                .with_writer(move || writer.clone())
                .finish(),
        );
        tracing::dispatcher::with_default(&log, || {
            spawn(Builder::new(), || tracing::info!("from the started thread"))
                .unwrap()
                .join()
                .unwrap();
        });
        let text = String::from_utf8(written.0.lock().unwrap().clone()).unwrap();
        assert!(text.contains("from the started thread"), "{text:?}");
    }
}
