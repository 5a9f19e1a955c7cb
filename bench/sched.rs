//! Scheduler scale (issue 4): a store with many accounts × folders, all synced recently (so
//! nothing is due for sync), and the cost of what the master does every tick. Runs as its own
//! process (`bench sched-scale …`) so the RSS is that of a master-sized process, not the bench's.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use backproc_store::{FolderListing, Lane, NewAccount, Security, Store, SyncApply};

/// `bench sched-scale ACCOUNTS FOLDERS ITERATIONS DIR`: prints one JSON object.
pub fn main(args: &[String]) -> anyhow::Result<()> {
    let [accounts, folders, iters, dir] = args else {
        anyhow::bail!("usage: bench sched-scale ACCOUNTS FOLDERS ITERATIONS DIR");
    };
    let (accounts, folders, iters): (usize, usize, usize) = (accounts.parse()?, folders.parse()?, iters.parse()?);
    let path = Path::new(dir).join("sched.sqlite");
    let _ = std::fs::remove_file(&path);
    let mut store = Store::open(&path)?;
    let now = backproc_store::now();

    let started = Instant::now();
    let names: Vec<FolderListing> = (0..folders)
        .map(|i| {
            let name = if i == 0 { "INBOX".to_owned() } else { format!("Folder {i}") };
            FolderListing {
                display_name: name.clone(),
                name,
                delimiter: Some("/".into()),
                special_use: (i == 0).then_some(backproc_store::SpecialUse::Inbox),
                unusable: None,
            }
        })
        .collect();
    for a in 0..accounts {
        let login = format!("user{a}");
        store.add_user(&login, now)?;
        if a % 10 == 0 {
            // one owner in ten is logged in: both interval sets are exercised
            store.set_session(&login, Some(now + 86_400))?;
        }
        let id = store.add_account(
            &NewAccount {
                owner_login: login.clone(),
                email: format!("{login}@example.test"),
                imap_host: format!("imap{}.example.test", a % 50),
                imap_port: 993,
                imap_security: Some(Security::Ssl),
                login,
                password: Some("pw".into()),
                ..Default::default()
            },
            now,
        )?;
        for folder in store.record_folder_list(id, &names)? {
            let done =
                SyncApply { full: true, uidvalidity: Some(1), watermarks: Some((100, None)), ..Default::default() };
            store.apply_sync(folder, &done, now)?;
        }
    }
    let build_secs = started.elapsed().as_secs_f64();

    let config = backproc_config::Config {
        email_background_sync_enabled: true,
        email_outbox_enabled: true,
        ..Default::default()
    };
    let data_dir = Path::new(dir);
    let in_flight = HashMap::new();

    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1000.0;
    let (mut rows_ms, mut due_ms, mut tick_ms) = (Vec::new(), Vec::new(), Vec::new());
    let mut rows = 0;
    let mut due_first = (0.0, 0);
    let mut due_tasks = 0;
    // One scheduler for all iterations, as one master keeps it: the first tick of a fresh
    // master also lists every account's folders, later ticks find little to do.
    let mut scheduler = backproc_engine::schedule::Scheduler::new(backproc_engine::Clock::system());
    for i in 0..iters {
        let t = Instant::now();
        let now = backproc_store::now();
        // the cuts of the default intervals: what one tick asks the store for
        let cuts = backproc_store::DueCuts { recent: now - 600, full: now - 3600, low_start: now - 86_400 };
        rows = store.schedule_candidates(now, cuts)?.len();
        rows_ms.push(ms(t));

        let t = Instant::now();
        store.master_heartbeat(backproc_store::now())?;
        backproc_engine::metrics::write_file(&store, data_dir, true)?;
        let td = Instant::now();
        let due = scheduler.due(&mut store, &config, &in_flight, &|_| true)?;
        let _ = store.folders_with_due_receive(Lane::Primary, backproc_store::now())?;
        let d = ms(td);
        let total = ms(t);
        if i == 0 {
            due_first = (d, due.len());
        } else {
            due_ms.push(d);
            tick_ms.push(total);
            due_tasks = due.len();
        }
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = |key: &str| -> f64 {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    };
    let st = |v: &[f64]| {
        let (m, lo, hi) = crate::measure::stats(v);
        serde_json::json!({"median": m, "min": lo, "max": hi})
    };
    let out = serde_json::json!({
        "accounts": accounts,
        "folders": accounts * folders,
        "rows": rows,
        "build_secs": build_secs,
        "schedule_candidates_ms": st(&rows_ms),
        "due_first_ms": due_first.0,
        "due_first_tasks": due_first.1,
        "due_ms": st(&due_ms),
        "due_tasks": due_tasks,
        "tick_ms": st(&tick_ms),
        "vm_hwm_mb": kb("VmHWM:") / 1024.0,
        "vm_rss_mb": kb("VmRSS:") / 1024.0,
        "store_mb": crate::measure::du_mb(data_dir),
    });
    println!("{out}");
    Ok(())
}
