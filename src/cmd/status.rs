//! `backproc status` and `backproc history`: what runs now, what ran, what failed.

use std::path::PathBuf;
use std::process::ExitCode;

use backproc_store::{HistoryFilter, Store, now};
use clap::{Args, ValueEnum};
use serde_json::json;

use super::accounts::fmt_time;
use super::print_json;
use crate::pidlock;

#[derive(Args)]
pub struct StatusArgs {
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Period {
    #[value(name = "24h")]
    Day,
    #[value(name = "3d")]
    ThreeDays,
    #[value(name = "1w")]
    Week,
}

#[derive(Args)]
pub struct HistoryArgs {
    /// How far back: 24h, 3d or 1w.
    #[arg(long, value_enum, default_value = "24h")]
    period: Period,
    /// Only this process type (e.g. "Receive", "Sync (full)").
    #[arg(long)]
    process: Option<String>,
    #[arg(long)]
    account: Option<i64>,
    /// Only errors.
    #[arg(long)]
    errors: bool,
    #[arg(long)]
    json: bool,
}

/// Reading status must never block the master or change anything: read-only connection,
/// no logging setup, no migration.
fn open_read_only(home: &std::path::Path) -> anyhow::Result<Option<Store>> {
    let path = home.join("data").join("backproc.sqlite");
    if !path.exists() {
        return Ok(None);
    }
    Ok(Some(Store::open_read_only(&path)?))
}

pub fn status(home: PathBuf, args: StatusArgs) -> anyhow::Result<ExitCode> {
    let loaded = super::load_config(&home.join("config.inc"))?;
    let cfg = &loaded.config;
    let held = pidlock::is_held(&home.join(&cfg.backproc_pid_location));
    let store = open_read_only(&home)?;
    let t = now();
    let master = store.as_ref().map(|s| s.master()).transpose()?.flatten();
    let state = match (&master, held) {
        (Some(m), true) if t - m.heartbeat > cfg.bg_heartbeat_stale as i64 => "stalled",
        (_, true) => "running",
        (_, false) => "not running",
    };
    let workers = if held { store.as_ref().map(|s| s.workers()).transpose()?.unwrap_or_default() } else { Vec::new() };
    let (rp, rs, rf) = store.as_ref().map(|s| s.receive_queue_depths()).transpose()?.unwrap_or((0, 0, 0));
    let outbox = store.as_ref().map(|s| s.outbox_depths()).transpose()?.unwrap_or_default();
    let accounts = store.as_ref().map(|s| s.accounts()).transpose()?.unwrap_or_default();
    let push: std::collections::HashMap<i64, backproc_store::PushRow> = if held {
        store
            .as_ref()
            .map(|s| s.push_states())
            .transpose()?
            .unwrap_or_default()
            .into_iter()
            .map(|p| (p.account_id, p))
            .collect()
    } else {
        Default::default()
    };
    if args.json {
        print_json(&json!({
            "master": {
                "state": state,
                "pid": master.as_ref().map(|m| m.pid),
                "since": master.as_ref().map(|m| m.started),
                "heartbeat": master.as_ref().map(|m| m.heartbeat),
            },
            "workers": workers.iter().map(|w| json!({
                "thread": format!("t{}", w.thread), "task": w.task, "done": w.done, "total": w.total, "since": w.since,
            })).collect::<Vec<_>>(),
            "queues": {
                "receive_primary": rp, "receive_secondary": rs, "receive_failed": rf,
                "outbox": outbox.iter().map(|(s, n)| (s.clone(), json!(n))).collect::<serde_json::Map<_, _>>(),
            },
            "accounts": accounts.iter().map(|a| json!({
                "id": a.id, "email": a.email, "last_success": a.last_success,
                "last_error": a.last_error, "last_error_at": a.last_error_at,
                "retry_after": a.retry_after.filter(|t| *t != backproc_store::NEVER),
                "needs_authorization": a.needs_authorization,
                "push": push.get(&a.id).map(|p| json!({ "mode": p.mode, "since": p.since, "note": p.note })),
            })).collect::<Vec<_>>(),
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    match &master {
        Some(m) if held => println!(
            "master: {state} (pid {}, since {}, last heartbeat {}s ago)",
            m.pid,
            fmt_time(Some(m.started)),
            t - m.heartbeat
        ),
        Some(m) => println!(
            "master: not running (last: pid {}, heartbeat {}{})",
            m.pid,
            fmt_time(Some(m.heartbeat)),
            if m.stopped.is_some() { ", stopped cleanly" } else { ", did not stop cleanly" }
        ),
        None => println!("master: {state}"),
    }
    println!("running background processes:");
    let busy: Vec<_> = workers.iter().filter(|w| w.task.is_some()).collect();
    if busy.is_empty() {
        println!("  none");
    }
    for w in busy {
        let progress = match (w.done, w.total) {
            (Some(d), Some(n)) => format!(" {}/{}", group(d), group(n)),
            _ => String::new(),
        };
        println!("  t{}  {}{progress}", w.thread, w.task.as_deref().unwrap_or(""));
    }
    println!("queues: receive {rp} primary, {rs} secondary, {rf} failed");
    let ob: Vec<String> = outbox.iter().map(|(s, n)| format!("{n} {s}")).collect();
    println!("outbox: {}", if ob.is_empty() { "empty".into() } else { ob.join(", ") });
    for a in accounts {
        if let Some(p) = push.get(&a.id) {
            let note = p.note.as_ref().map(|n| format!(": {n}")).unwrap_or_default();
            println!("account {} ({}): push {} since {}{note}", a.id, a.email, p.mode, fmt_time(Some(p.since)));
        }
        if let Some(why) = &a.needs_authorization {
            println!(
                "account {} ({}): needs authorization (not tried until `backproc account authorize {}`): {why}",
                a.id, a.email, a.id
            );
        } else if let Some(e) = &a.last_error {
            println!("account {} ({}): last error at {}: {e}", a.id, a.email, fmt_time(a.last_error_at));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// 31468 → "31,468", as the original's status page shows counts.
fn group(n: i64) -> String {
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

pub fn history(home: PathBuf, args: HistoryArgs) -> anyhow::Result<ExitCode> {
    super::load_config(&home.join("config.inc"))?;
    let secs = match args.period {
        Period::Day => 86_400,
        Period::ThreeDays => 3 * 86_400,
        Period::Week => 7 * 86_400,
    };
    let rows = match open_read_only(&home)? {
        Some(s) => s.history(&HistoryFilter {
            since: now() - secs,
            process: args.process.clone(),
            account_id: args.account,
            errors_only: args.errors,
            ..HistoryFilter::default()
        })?,
        None => Vec::new(),
    };
    if args.json {
        print_json(&rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        println!("No background process history for the selected period");
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<19}  {:<28}  {:<10}  {:<48}  detail", "time", "process", "[acct,fld]", "status");
    for r in rows {
        let ctx = match (r.account_id, r.folder_id) {
            (None, None) => String::new(),
            (a, f) => format!(
                "[{},{}]",
                a.map(|v| v.to_string()).unwrap_or_default(),
                f.map(|v| v.to_string()).unwrap_or_default()
            ),
        };
        let mut status = r.status.clone();
        if let Some(c) = r.count.filter(|_| r.status == "Finished") {
            status.push_str(&format!(" ({c} in {:.1}s)", r.duration_ms.unwrap_or(0) as f64 / 1000.0));
        }
        println!(
            "{:<19}  {:<28}  {:<10}  {:<48}  {}",
            fmt_time(Some(r.time)),
            r.process,
            ctx,
            status,
            r.detail.unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #[test]
    fn groups_thousands() {
        assert_eq!(super::group(31468), "31,468");
        assert_eq!(super::group(1200), "1,200");
        assert_eq!(super::group(999), "999");
        assert_eq!(super::group(1_000_000), "1,000,000");
    }
}
