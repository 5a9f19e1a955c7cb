//! Benchmark for issue 8: N users × 10 messages each; `internal_list` (inbox, sent) and
//! `internal_check` for one user must stay fast (indexed), i.e. flat as N grows.
//!
//! Run: `cargo run --release -p backproc-store --example internal_bench [USERS...]`
//! (default: 1000 10000). Prints median/min/max in microseconds per operation and size.

use std::time::Instant;

use backproc_store::Store;
use backproc_store::internal::{Importance, InternalDraft, InternalFolder};

const MESSAGES_PER_USER: usize = 10;
const ITERATIONS: usize = 100;

struct Stats {
    median: u128,
    min: u128,
    max: u128,
}

fn time(mut f: impl FnMut()) -> Stats {
    let mut v: Vec<u128> = (0..ITERATIONS)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_micros()
        })
        .collect();
    v.sort_unstable();
    Stats { median: v[v.len() / 2], min: v[0], max: v[v.len() - 1] }
}

/// Fills a store: `users` users, each sending 10 messages to the next users (ring), so each
/// user has 10 sent and 10 received messages; the probed user "u0" sees a typical mix.
fn fill(s: &mut Store, users: usize) -> f64 {
    let t = Instant::now();
    for i in 0..users {
        s.add_user(&format!("u{i}"), 1).unwrap();
    }
    let mut now = 1_000_000;
    for k in 0..MESSAGES_PER_USER {
        for i in 0..users {
            let to = vec![format!("u{}", (i + k + 1) % users)];
            let from = format!("u{i}");
            let imp = if k % 5 == 0 { Importance::High } else { Importance::Normal };
            let m = InternalDraft {
                from: &from,
                to: &to,
                subject: "benchmark subject",
                body: "body text",
                importance: imp,
            };
            s.internal_create(&m, false, now).unwrap();
            now += 1;
        }
    }
    t.elapsed().as_secs_f64()
}

fn main() {
    let sizes: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("a number of users")).collect();
    let sizes = if sizes.is_empty() { vec![1000, 10_000] } else { sizes };
    println!("internal message service: users × {MESSAGES_PER_USER} messages, {ITERATIONS} iterations, times in µs");
    println!("{:>7} {:>9} {:>10} {:>8} {:>8} {:>8}", "users", "messages", "operation", "median", "min", "max");
    for users in sizes {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("bench.sqlite")).unwrap();
        let fill_s = fill(&mut s, users);
        let probe = "u0";
        let inbox_len = s.internal_list(probe, InternalFolder::Inbox).unwrap().len();
        let sent_len = s.internal_list(probe, InternalFolder::Sent).unwrap().len();
        assert_eq!((inbox_len, sent_len), (MESSAGES_PER_USER, MESSAGES_PER_USER));
        let inbox = time(|| assert_eq!(s.internal_list(probe, InternalFolder::Inbox).unwrap().len(), inbox_len));
        let sent = time(|| assert_eq!(s.internal_list(probe, InternalFolder::Sent).unwrap().len(), sent_len));
        let unread = time(|| assert_eq!(s.internal_unread_count(probe).unwrap(), inbox_len as i64));
        // the first check sees all 10; the following ones find nothing new (the common case)
        assert_eq!(s.internal_check(probe, 2_000_000).unwrap().len(), inbox_len);
        let check = time(|| assert!(s.internal_check(probe, 2_000_001).unwrap().is_empty()));
        let total = users * MESSAGES_PER_USER;
        for (name, st) in [("list inbox", inbox), ("list sent", sent), ("unread", unread), ("check", check)] {
            println!("{users:>7} {total:>9} {name:>10} {:>8} {:>8} {:>8}", st.median, st.min, st.max);
        }
        println!("{users:>7} {total:>9} {:>10} {:>8.1} s (one transaction per message)", "fill", fill_s);
    }
}
