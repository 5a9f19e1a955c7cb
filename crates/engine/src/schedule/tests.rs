//! Scheduling decisions with an injected clock: no sleeping, no store.

use super::*;
use chrono::FixedOffset;

const IV: Intervals = Intervals { recent: 600, recent_nl: 1800, full: 3600, full_nl: 4800 };

fn folder(priority: &str, logged_in: bool, last_recent: Option<i64>, last_full: Option<i64>) -> SchedFolder {
    SchedFolder {
        account_id: 1,
        folder_id: Some(1),
        priority: Priority::parse(priority).expect("a priority"),
        last_recent_sync: last_recent,
        last_full_sync: last_full,
        sync_requested: None,
        logged_in,
        account_ready: true,
    }
}

fn at(h: u8, m: u8) -> TimeOfDay {
    TimeOfDay { hour: h, minute: m }
}

// 2026-11-23 00:00:00 UTC
const DAY: i64 = 1_795_392_000;

#[test]
fn never_synced_folder_gets_a_full_sync_whatever_its_priority() {
    for p in ["high", "low"] {
        assert_eq!(folder_due(&folder(p, false, None, None), DAY, &IV, DAY), Some(SyncDue::Full), "{p}");
    }
}

#[test]
fn off_folders_are_never_synced() {
    assert_eq!(folder_due(&folder("off", true, None, None), DAY, &IV, DAY), None);
    let mut f = folder("off", true, Some(0), Some(0));
    f.sync_requested = Some(DAY);
    assert_eq!(folder_due(&f, DAY, &IV, DAY), None);
}

#[test]
fn logged_in_owner_gets_the_short_recent_interval() {
    let t0 = DAY;
    let f = folder("high", true, Some(t0), Some(t0));
    assert_eq!(folder_due(&f, t0 + 599, &IV, 0), None);
    assert_eq!(folder_due(&f, t0 + 600, &IV, 0), Some(SyncDue::Recent));
    let nl = folder("high", false, Some(t0), Some(t0));
    assert_eq!(folder_due(&nl, t0 + 600, &IV, 0), None);
    assert_eq!(folder_due(&nl, t0 + 1799, &IV, 0), None);
    assert_eq!(folder_due(&nl, t0 + 1800, &IV, 0), Some(SyncDue::Recent));
}

#[test]
fn full_interval_depends_on_login_and_full_counts_as_recent() {
    let t0 = DAY;
    let f = folder("high", true, Some(t0 + 3000), Some(t0));
    assert_eq!(folder_due(&f, t0 + 3599, &IV, 0), None);
    assert_eq!(folder_due(&f, t0 + 3600, &IV, 0), Some(SyncDue::Full));
    let nl = folder("high", false, Some(t0 + 2900), Some(t0));
    assert_eq!(folder_due(&nl, t0 + 4799, &IV, 0), Some(SyncDue::Recent));
    assert_eq!(folder_due(&nl, t0 + 4800, &IV, 0), Some(SyncDue::Full));
    // a full sync just done: the recent one is not due either
    let fresh = folder("high", true, Some(t0 - 10_000), Some(t0));
    assert_eq!(folder_due(&fresh, t0 + 100, &IV, 0), None);
}

#[test]
fn a_login_changes_the_next_due_time() {
    let t0 = DAY;
    let mut f = folder("high", false, Some(t0), Some(t0));
    assert_eq!(folder_due(&f, t0 + 700, &IV, 0), None);
    f.logged_in = true;
    assert_eq!(folder_due(&f, t0 + 700, &IV, 0), Some(SyncDue::Recent));
}

#[test]
fn check_mail_now_forces_a_full_sync() {
    let mut f = folder("low", false, Some(DAY), Some(DAY));
    f.sync_requested = Some(DAY + 1);
    assert_eq!(folder_due(&f, DAY + 2, &IV, DAY - 86_400), Some(SyncDue::Full));
}

#[test]
fn daily_start_in_utc_and_other_zones() {
    let utc = FixedOffset::east_opt(0).unwrap();
    // 19:59 → yesterday's 20:00; 20:00 → today's
    assert_eq!(daily_start(&utc, DAY + 19 * 3600 + 59 * 60, at(20, 0)), DAY - 4 * 3600);
    assert_eq!(daily_start(&utc, DAY + 20 * 3600, at(20, 0)), DAY + 20 * 3600);
    // UTC+2: 20:00 local is 18:00 UTC
    let plus2 = FixedOffset::east_opt(7200).unwrap();
    assert_eq!(daily_start(&plus2, DAY + 18 * 3600 + 1, at(20, 0)), DAY + 18 * 3600);
}

#[test]
fn low_priority_runs_once_a_day_with_catch_up() {
    let utc = FixedOffset::east_opt(0).unwrap();
    let start = |now| daily_start(&utc, now, at(20, 0));
    // synced yesterday at 20:05
    let last = DAY - 4 * 3600 + 300;
    let f = folder("low", true, Some(last), Some(last));
    // today 19:00: not yet
    let now = DAY + 19 * 3600;
    assert_eq!(folder_due(&f, now, &IV, start(now)), None);
    // today 20:00: due
    let now = DAY + 20 * 3600;
    assert_eq!(folder_due(&f, now, &IV, start(now)), Some(SyncDue::Full));
    // ran at 20:00:30 → not again the same day
    let ran = folder("low", true, Some(now + 30), Some(now + 30));
    assert_eq!(folder_due(&ran, DAY + 23 * 3600, &IV, start(DAY + 23 * 3600)), None);
    // the engine was down at 20:00 yesterday and today until 10:00: catch up once at once
    let stale = folder("low", true, Some(DAY - 3 * 86_400), Some(DAY - 3 * 86_400));
    let now = DAY + 10 * 3600;
    assert_eq!(folder_due(&stale, now, &IV, start(now)), Some(SyncDue::Full));
    let caught_up = folder("low", true, Some(now), Some(now));
    assert_eq!(folder_due(&caught_up, now + 3600, &IV, start(now + 3600)), None);
    // and tonight's run happens as usual
    let tonight = DAY + 20 * 3600 + 1;
    assert_eq!(folder_due(&caught_up, tonight, &IV, start(tonight)), Some(SyncDue::Full));
}

#[test]
fn a_changed_start_time_applies_at_once() {
    let utc = FixedOffset::east_opt(0).unwrap();
    let last = DAY - 4 * 3600 + 300; // yesterday 20:05
    let f = folder("low", false, Some(last), Some(last));
    let now = DAY + 9 * 3600; // 09:00
    assert_eq!(folder_due(&f, now, &IV, daily_start(&utc, now, at(20, 0))), None);
    assert_eq!(folder_due(&f, now, &IV, daily_start(&utc, now, at(8, 30))), Some(SyncDue::Full));
}

#[test]
fn priority_change_switches_rules() {
    let t0 = DAY + 21 * 3600;
    let low = folder("low", true, Some(t0), Some(t0));
    let utc = FixedOffset::east_opt(0).unwrap();
    let now = t0 + 3600;
    assert_eq!(folder_due(&low, now, &IV, daily_start(&utc, now, at(20, 0))), None);
    let high = folder("high", true, Some(t0), Some(t0));
    assert_eq!(folder_due(&high, now, &IV, daily_start(&utc, now, at(20, 0))), Some(SyncDue::Full));
}

#[test]
fn per_host_budget_limits_concurrent_accounts_on_one_server() {
    use crate::task::{FolderOf, Task};
    let hosts: HashMap<i64, String> =
        (1..=10).map(|a| (a, if a <= 8 { "imap.big.test".to_string() } else { "other.test".to_string() })).collect();
    let due: Vec<Task> = (1..=10).map(|a| Task::SyncFull(FolderOf { account: a, folder: a })).collect();
    let mut in_flight = HashMap::new();
    in_flight.insert(Task::Receive(FolderOf { account: 1, folder: 1 }), 0);
    let kept = budget(due, &in_flight, &hosts, 3, 3);
    let accounts: Vec<i64> = kept.iter().filter_map(|t| t.account()).collect();
    // account 1 already holds a connection; two more of the big host fit; the other host is free
    assert_eq!(accounts, vec![1, 2, 3, 9, 10]);
}

#[test]
fn connections_an_account_uses_table() {
    use crate::task::{Job, Task};
    let t = |job, folder| Task::of(job, Some(1), folder).expect("the ids the job needs");
    #[rustfmt::skip]
    let cases: &[(&str, Vec<Task>, usize, usize)] = &[
        ("no tasks, no connection", vec![], 3, 0),
        ("folder discovery", vec![t(Job::ListFolders, None)], 3, 1),
        ("a sync", vec![t(Job::SyncFull, Some(1))], 3, 1),
        ("a sync and a receive of its folder: one after the other", vec![t(Job::SyncFull, Some(1)), t(Job::Receive, Some(1))], 3, 1),
        ("receives of two folders", vec![t(Job::Receive, Some(1)), t(Job::Receive, Some(2))], 3, 2),
        ("a sync and a receive of another folder", vec![t(Job::SyncFull, Some(2)), t(Job::Receive, Some(1))], 3, 2),
        ("four folders, three connections", (1..=4).map(|f| t(Job::Receive, Some(f))).collect(), 3, 3),
        ("one connection an account", (1..=4).map(|f| t(Job::Receive, Some(f))).collect(), 1, 1),
        ("account-wide work beside folders", vec![t(Job::SyncDelete, Some(1)), t(Job::Receive, Some(2))], 3, 1),
    ];
    for (name, tasks, parallel, want) in cases {
        assert_eq!(connections(tasks, *parallel), *want, "{name}");
    }
}

#[test]
fn receives_side_by_side_take_connections_of_the_host_budget() {
    use crate::task::{FolderOf, Task};
    let hosts: HashMap<i64, String> = (1..=4).map(|a| (a, "imap.test".to_string())).collect();
    // account 1 receives INBOX; its other folders' receives want connections of their own
    let in_flight: HashMap<Task, usize> = [(Task::Receive(FolderOf { account: 1, folder: 1 }), 0)].into();
    let due: Vec<Task> = (2..=4)
        .map(|f| Task::Receive(FolderOf { account: 1, folder: f }))
        .chain((2..=4).map(|a| Task::SyncFull(FolderOf { account: a, folder: 10 + a })))
        .collect();
    let kept = |per_host, parallel| -> Vec<(i64, i64)> {
        budget(due.clone(), &in_flight, &hosts, per_host, parallel)
            .iter()
            .map(|t| (t.account().unwrap(), t.folder().unwrap()))
            .collect()
    };
    // 3 an account: folders 2 and 3 beside INBOX, folder 4 after one of them on the same
    // connections; two more accounts fit
    assert_eq!(kept(5, 3), vec![(1, 2), (1, 3), (1, 4), (2, 12), (3, 13)]);
    // a full host: the receives beside wait for the accounts' turn
    assert_eq!(kept(2, 3), vec![(1, 2)]);
    // one connection an account: its receives queue behind INBOX on the connection it holds
    assert_eq!(kept(2, 1), vec![(1, 2), (1, 3), (1, 4), (2, 12)]);
}

#[test]
fn open_connections_in_the_budget_table() {
    use crate::task::{FolderOf, Task};
    let hosts: HashMap<i64, String> = (1..=5).map(|a| (a, "imap.test".to_string())).collect();
    let recv = |a| Task::Receive(FolderOf { account: a, folder: 10 * a });
    let list = |a| Task::ListFolders(a);
    // accounts 1 and 2 hold the host's two connections with work in flight
    let full: HashMap<Task, usize> = [(list(1), 0), (list(2), 0)].into();
    // account 3's sync of another folder waits for the connection it has open, idle now
    let queued: HashMap<Task, usize> = [(list(1), 0), (Task::SyncFull(FolderOf { account: 3, folder: 31 }), 0)].into();
    let none: HashMap<Task, usize> = HashMap::new();
    // name, in flight, due, connections open per account, kept
    type Case<'a> = (&'a str, &'a HashMap<Task, usize>, Vec<Task>, Vec<(i64, usize)>, Vec<Task>);
    #[rustfmt::skip]
    let cases: &[Case] = &[
        ("a full host holds back an account without a session", &full, vec![recv(3)], vec![], vec![]),
        ("an account's idle session carries its receive on a full host", &full, vec![recv(3)], vec![(3, 1)], vec![recv(3)]),
        ("the idle session is not a slot for another account", &full, vec![recv(4)], vec![(3, 1)], vec![]),
        ("a second folder beside the first needs a second session", &full,
            vec![recv(3), Task::Receive(FolderOf { account: 3, folder: 31 })], vec![(3, 1)], vec![recv(3)]),
        ("two idle sessions carry two folders", &full,
            vec![recv(3), Task::Receive(FolderOf { account: 3, folder: 31 })], vec![(3, 2)],
            vec![recv(3), Task::Receive(FolderOf { account: 3, folder: 31 })]),
        ("a receive beside its account's queued sync needs a connection more", &queued, vec![recv(3)], vec![(3, 1)], vec![]),
        ("a receive after its account's queued sync runs on their connection", &queued,
            vec![Task::Receive(FolderOf { account: 3, folder: 31 })], vec![(3, 1)], vec![Task::Receive(FolderOf { account: 3, folder: 31 })]),
        ("its session busy once taken: the next account waits", &none,
            vec![recv(3), list(4), list(5)], vec![(3, 1)], vec![recv(3), list(4)]),
    ];
    for (name, in_flight, due, open, want) in cases {
        let open: HashMap<i64, usize> = open.iter().copied().collect();
        let kept = budget_lowered(due.clone(), in_flight, &hosts, 2, 3, &HashMap::new(), &open);
        assert_eq!(&kept, want, "{name}");
    }
    // A lowered host counts no idle session as held: its account waits like a new one.
    let lowered: HashMap<String, usize> = [("imap.test".to_string(), 2)].into();
    let open: HashMap<i64, usize> = [(3, 1)].into();
    assert_eq!(budget_lowered(vec![recv(3)], &full, &hosts, 8, 3, &lowered, &open), vec![], "lowered");
}

#[test]
fn idle_sessions_to_close_table() {
    use crate::task::{FolderOf, Task};
    let hosts: HashMap<i64, String> = [(1, "busy.test"), (2, "busy.test"), (3, "busy.test"), (4, "calm.test")]
        .map(|(a, h)| (a, h.to_string()))
        .into();
    let busy_host: HashSet<String> = ["busy.test".to_string()].into();
    let in_flight_2: HashMap<Task, usize> = [(Task::SyncFull(FolderOf { account: 2, folder: 20 }), 0)].into();
    let none: HashMap<Task, usize> = HashMap::new();
    let open: HashMap<i64, usize> = [(1, 1), (2, 1), (3, 2), (4, 1)].into();
    // name, in flight, accounts with work due, hosts where work waits, accounts to close
    type Case<'a> = (&'a str, &'a HashMap<Task, usize>, Vec<i64>, HashSet<String>, Vec<i64>);
    #[rustfmt::skip]
    let cases: &[Case] = &[
        ("nothing waits: every session stays", &none, vec![], HashSet::new(), vec![]),
        ("work waits: the accounts with nothing to do close theirs", &none, vec![], busy_host.clone(), vec![1, 2, 3]),
        ("an account with a task in flight keeps its session", &in_flight_2, vec![], busy_host.clone(), vec![1, 3]),
        ("an account with work due keeps its session", &none, vec![1], busy_host.clone(), vec![2, 3]),
        ("another host's waiting work leaves this host's sessions", &none, vec![], ["calm.test".to_string()].into(), vec![4]),
    ];
    for (name, in_flight, due, held, want) in cases {
        let due: HashSet<i64> = due.iter().copied().collect();
        assert_eq!(&idle_to_close(&open, in_flight, &due, &hosts, held), want, "{name}");
    }
}

#[test]
fn a_lowered_host_budget_holds_its_accounts_in_flight_to_it() {
    use crate::task::{FolderOf, Task};
    let hosts: HashMap<i64, String> =
        (1..=10).map(|a| (a, if a <= 8 { "imap.gmail.test".to_string() } else { "other.test".to_string() })).collect();
    let due: Vec<Task> = (1..=10).map(|a| Task::SyncFull(FolderOf { account: a, folder: a })).collect();
    let in_flight: HashMap<Task, usize> = [(Task::Receive(FolderOf { account: 1, folder: 1 }), 0)].into();
    let lowered: HashMap<String, usize> = [("imap.gmail.test".to_string(), 2)].into();
    let kept = budget_lowered(due.clone(), &in_flight, &hosts, 8, 3, &lowered, &HashMap::new());
    let accounts: Vec<i64> = kept.iter().filter_map(|t| t.account()).collect();
    // account 1 holds one of the 2; one more fits; the other host keeps the configured budget
    assert_eq!(accounts, vec![1, 2, 9, 10]);
    // a lowered budget never raises the configured one
    let raised: HashMap<String, usize> = [("imap.gmail.test".to_string(), 50)].into();
    assert_eq!(budget_lowered(due, &in_flight, &hosts, 3, 3, &raised, &HashMap::new()).len(), 5);
}

#[test]
fn a_task_failing_again_and_again_waits_longer_each_time() {
    let hold = |n: u32| super::backoff(&Config::default()).after(i64::from(n));
    let cases: &[(&str, u32, i64)] = &[
        ("first failure: the base", 1, 60),
        ("second: doubled", 2, 120),
        ("third", 3, 240),
        ("capped at the maximum", 7, 3600),
        ("far beyond: still the maximum, no overflow", 1000, 3600),
        ("no failure counted yet: the base", 0, 60),
    ];
    for (name, n, want) in cases {
        assert_eq!(hold(*n), *want, "{name}: BG_BACKOFF_BASE 60, BG_BACKOFF_MAX 3600");
    }
}
