//! Hand-offs between the backup pipeline's threads, made to wake a thread rarely.
//!
//! On the bench's 2-core machine a wake-up per file and per small chunk, each a round
//! of spinning, yielding and parking, cost more CPU than reading the small files did
//! (280 000 `sched_yield` and 360 000 context switches in one 9 s backup). So work goes
//! out in batches, and a directory's results come back with one wake-up, not one per
//! file.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use anyhow::{Result, anyhow};
use crossbeam_channel::Sender;

/// Items sent in batches: a batch goes when it holds `max_items` items or `max_weight`
/// (bytes, say) of them, on `flush`, and when the batcher is dropped, so that nothing
/// pushed is ever lost silently.
pub struct Batcher<T> {
    /// The stage that receives the batches, named in the error once it has stopped.
    to: &'static str,
    tx: Sender<Vec<T>>,
    items: Vec<T>,
    weight: u64,
    max_items: usize,
    max_weight: u64,
}

impl<T> Batcher<T> {
    pub fn new(to: &'static str, tx: Sender<Vec<T>>, max_items: usize, max_weight: u64) -> Self {
        Batcher {
            to,
            tx,
            items: Vec::new(),
            weight: 0,
            max_items,
            max_weight,
        }
    }

    pub fn push(&mut self, item: T, weight: u64) -> Result<()> {
        self.items.push(item);
        self.weight += weight;
        if self.items.len() >= self.max_items || self.weight >= self.max_weight {
            self.flush()
        } else {
            Ok(())
        }
    }

    /// Sends what is held now; call it before waiting on anything that may wait on
    /// these items.
    pub fn flush(&mut self) -> Result<()> {
        if self.items.is_empty() {
            return Ok(());
        }
        self.weight = 0;
        self.tx
            .send(std::mem::take(&mut self.items))
            .map_err(|_| anyhow!("{} stopped", self.to))
    }
}

impl<T> Drop for Batcher<T> {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// The results of the jobs one directory sent out, collected for a single wait.
pub struct Gather<R> {
    state: Mutex<GatherState<R>>,
    all_in: Condvar,
}

struct GatherState<R> {
    sent: usize,
    pending: usize,
    results: Vec<(usize, Option<R>)>,
}

impl<R> Default for Gather<R> {
    fn default() -> Self {
        Gather {
            state: Mutex::new(GatherState {
                sent: 0,
                pending: 0,
                results: Vec::new(),
            }),
            all_in: Condvar::new(),
        }
    }
}

impl<R> Gather<R> {
    /// Counts one more job out; its result comes back through the promise.
    pub fn promise(self: &Arc<Self>) -> Promise<R> {
        let mut s = self.lock();
        s.pending += 1;
        s.sent += 1;
        Promise {
            gather: Some(self.clone()),
            seq: s.sent - 1,
        }
    }

    /// Waits for every promise made so far; their results in the order they were made,
    /// None for one dropped unkept (its job failed or never ran).
    pub fn wait(&self) -> Vec<Option<R>> {
        let mut s = self.lock();
        while s.pending > 0 {
            s = self.all_in.wait(s).expect("gather poisoned");
        }
        let mut results = std::mem::take(&mut s.results);
        results.sort_unstable_by_key(|r| r.0);
        results.into_iter().map(|r| r.1).collect()
    }

    fn put(&self, seq: usize, result: Option<R>) {
        let mut s = self.lock();
        s.results.push((seq, result));
        s.pending -= 1;
        if s.pending == 0 {
            self.all_in.notify_all();
        }
    }

    fn lock(&self) -> MutexGuard<'_, GatherState<R>> {
        self.state.lock().expect("gather poisoned")
    }
}

/// One job's result, owed to its directory's `Gather`: kept with a result, or on drop
/// with none, so that the waiter never waits for a job that is gone.
pub struct Promise<R> {
    gather: Option<Arc<Gather<R>>>,
    seq: usize,
}

impl<R> Promise<R> {
    pub fn keep(mut self, result: Option<R>) {
        if let Some(g) = self.gather.take() {
            g.put(self.seq, result);
        }
    }
}

impl<R> Drop for Promise<R> {
    fn drop(&mut self) {
        if let Some(g) = self.gather.take() {
            g.put(self.seq, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::bounded;

    #[test]
    fn batches_go_when_full_on_flush_and_on_drop() {
        let (tx, rx) = bounded(8);
        let mut b = Batcher::new("test", tx, 3, 100);
        for i in 0..4 {
            b.push(i, 1).unwrap();
        }
        assert_eq!(rx.try_recv().unwrap(), vec![0, 1, 2]);
        assert!(rx.try_recv().is_err());
        b.push(4, 100).unwrap(); // weight reached
        assert_eq!(rx.try_recv().unwrap(), vec![3, 4]);
        b.push(5, 1).unwrap();
        b.flush().unwrap();
        assert_eq!(rx.try_recv().unwrap(), vec![5]);
        b.flush().unwrap(); // nothing held: nothing sent
        b.push(6, 1).unwrap();
        drop(b);
        assert_eq!(rx.try_recv().unwrap(), vec![6]);
        assert!(rx.recv().is_err()); // closed, nothing else
    }

    #[test]
    fn a_closed_receiver_is_reported() {
        let (tx, rx) = bounded::<Vec<u8>>(1);
        drop(rx);
        let mut b = Batcher::new("test", tx, 1, 1);
        assert!(b.push(1, 1).is_err());
    }

    #[test]
    fn gather_returns_results_in_promise_order_and_none_for_dropped_ones() {
        let g = Arc::new(Gather::default());
        let promises: Vec<_> = (0..50).map(|_| g.promise()).collect();
        let workers: Vec<_> = promises
            .into_iter()
            .enumerate()
            .rev()
            .map(|(i, p)| {
                std::thread::spawn(move || {
                    if i % 7 == 3 {
                        drop(p); // a job that failed without a result
                    } else {
                        p.keep(Some(i));
                    }
                })
            })
            .collect();
        let got = g.wait();
        for w in workers {
            w.join().unwrap();
        }
        let want: Vec<_> = (0..50).map(|i| (i % 7 != 3).then_some(i)).collect();
        assert_eq!(got, want);
        assert!(g.wait().is_empty()); // nothing more was promised
    }
}
