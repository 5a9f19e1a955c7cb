//! A home with sync enabled and accounts on a real Dovecot, and comparisons of store and server.

use std::process::Output;

use crate::util::{Home, stderr, stdout};

/// A home with sync enabled and one account on a real Dovecot.
pub struct MailWorld {
    pub home: Home,
    pub dovecot: backproc_testkit::Dovecot,
    pub user: String,
    pub password: String,
    pub account: i64,
}

/// Sync enabled and every interval at its minimum, so `run --once` after `Home::pass_time(2)`
/// does everything again; back-off at 1 s.
pub const EVERY_SECOND: &str = "<?php
define('EMAIL_BACKGROUND_SYNC_ENABLED', TRUE);
define('BG_TICK_INTERVAL', 1);
define('EMAIL_BG_HI_FOLDERS_RECENT_SYNC_INTERVAL', 1);
define('EMAIL_BG_HI_FOLDERS_RECENT_SYNC_INTERVAL_NL', 1);
define('EMAIL_BG_HI_FOLDERS_FOLDERS_FULL_SYNC_INTERVAL', 1);
define('EMAIL_BG_HI_FOLDERS_FOLDERS_FULL_SYNC_INTERVAL_NL', 1);
define('EMAIL_BG_SYNC_DELETE_INTERVAL', 1);
define('EMAIL_BG_PURGE_DELETED_INTERVAL', 1);
define('BG_BACKOFF_BASE', 1);
define('BG_BACKOFF_MAX', 1);
define('EMAIL_BG_SECONDARY_INTERVAL', 1);
";

impl MailWorld {
    pub fn start(config: &str) -> MailWorld {
        let dovecot = backproc_testkit::Dovecot::start().expect("start dovecot");
        let user = "alice".to_string();
        let password = "s3cr3t-Pa55".to_string();
        dovecot.add_user(&user, &password).expect("add user");
        let home = Home::with_config(config);
        let account = add_account(&home, &dovecot, &user, &password, "none", dovecot.imap_port(), &[]);
        MailWorld { home, dovecot, user, password, account }
    }

    pub fn store(&self) -> backproc_store::Store {
        backproc_store::Store::open(&self.home.file("data/backproc.sqlite")).expect("open store")
    }

    pub fn imap(&self) -> imap::Session<std::net::TcpStream> {
        self.dovecot.session(&self.user, &self.password).expect("imap session")
    }

    pub fn run_once(&self) -> Output {
        let o = self.home.run(&["run", "--once"]);
        assert!(o.status.success(), "run --once failed: {}\n{}", stderr(&o), self.home.log("l-info.log"));
        o
    }
}

/// `user add` (once) + `account add` on `dovecot`; returns the account id.
pub fn add_account(
    home: &Home,
    dovecot: &backproc_testkit::Dovecot,
    user: &str,
    password: &str,
    security: &str,
    port: u16,
    extra: &[&str],
) -> i64 {
    debug_assert_eq!(dovecot.host(), backproc_testkit::HOST);
    add_account_at(home, user, password, security, port, extra)
}

/// (uid, flags as IMAP text sorted, raw bytes) of every message in a server folder.
pub fn server_messages(s: &mut imap::Session<std::net::TcpStream>, folder: &str) -> Vec<(u32, String, Vec<u8>)> {
    s.examine(folder).expect("examine");
    let f = s.uid_fetch("1:*", "(UID FLAGS BODY.PEEK[])").expect("fetch");
    let mut v: Vec<_> = f
        .iter()
        .map(|m| {
            let mut fl: Vec<String> =
                m.flags().iter().filter(|f| !matches!(f, imap::types::Flag::Recent)).map(|f| f.to_string()).collect();
            fl.sort();
            (m.uid.unwrap(), fl.join(" "), m.body().unwrap_or_default().to_vec())
        })
        .collect();
    v.sort_by_key(|m| m.0);
    v
}

/// The same view of the store's folder.
pub fn store_messages(store: &backproc_store::Store, folder_id: i64) -> Vec<(u32, String, Vec<u8>)> {
    store
        .folder_messages(folder_id)
        .unwrap()
        .into_iter()
        .map(|(uid, _, f, _)| {
            let mut fl = Vec::new();
            for (on, n) in [
                (f.answered, "\\Answered"),
                (f.deleted, "\\Deleted"),
                (f.draft, "\\Draft"),
                (f.flagged, "\\Flagged"),
                (f.seen, "\\Seen"),
            ] {
                if on {
                    fl.push(n.to_string());
                }
            }
            fl.sort();
            (uid as u32, fl.join(" "), store.message_raw(folder_id, uid).unwrap().unwrap_or_default())
        })
        .collect()
}

pub fn folder_id(store: &backproc_store::Store, account: i64, display: &str) -> i64 {
    store
        .folders(Some(account))
        .unwrap()
        .into_iter()
        .find(|f| f.display_name == display)
        .unwrap_or_else(|| panic!("folder {display} not in the store"))
        .id
}

/// `user add` (once) + `account add` for `user` on 127.0.0.1:`port`, whatever server (or
/// proxy) listens there; returns the account id.
pub fn add_account_at(home: &Home, user: &str, password: &str, security: &str, port: u16, extra: &[&str]) -> i64 {
    let owner = format!("owner-{user}");
    let _ = home.run(&["user", "add", &owner]);
    let port = port.to_string();
    let email = format!("{user}@backproc.test");
    let mut args = vec![
        "account",
        "add",
        "--owner",
        &owner,
        "--email",
        &email,
        "--imap-host",
        backproc_testkit::HOST,
        "--imap-port",
        &port,
        "--imap-security",
        security,
        "--login",
        user,
        "--password-stdin",
    ];
    args.extend_from_slice(extra);
    let o = home.run_stdin(&args, password);
    assert!(o.status.success(), "account add: {}", stderr(&o));
    stdout(&o).trim().parse().expect("account id")
}

/// Sets every folder of the store (all accounts) to high priority, so that with
/// `EVERY_SECOND` each one's full sync is due a second later.
pub fn set_all_folders_high(home: &Home) {
    let store = backproc_store::Store::open(&home.file("data/backproc.sqlite")).expect("open store");
    for f in store.folders(None).unwrap() {
        let o = home.run(&["folder", "set-priority", &f.id.to_string(), "high"]);
        assert!(o.status.success(), "folder set-priority {}: {}", f.id, stderr(&o));
    }
}

/// Adds one account per `(login, password)` on `host:port` (plain IMAP) straight through the
/// store, as `bench/sched.rs` does: much faster than one `account add` process each (300
/// accounts: well under a second instead of about 10 s). Returns the ids.
pub fn add_accounts_direct(home: &Home, host: &str, port: u16, users: &[(String, String)]) -> Vec<i64> {
    let at: Vec<(u16, String, String)> = users.iter().map(|(u, p)| (port, u.clone(), p.clone())).collect();
    add_accounts_at(home, host, &at)
}

/// `add_accounts_direct` with a port per account: `(port, login, password)`. All accounts
/// belong to one owner, `owner`, added (with the home's store) by a `user add` through the
/// binary if it is not there yet.
pub fn add_accounts_at(home: &Home, host: &str, accounts: &[(u16, String, String)]) -> Vec<i64> {
    let _ = home.run(&["user", "add", "owner"]);
    let mut store = backproc_store::Store::open(&home.file("data/backproc.sqlite")).expect("open store");
    let now = backproc_store::now();
    accounts
        .iter()
        .map(|(port, login, password)| {
            store
                .add_account(
                    &backproc_store::NewAccount {
                        owner_login: "owner".into(),
                        email: format!("{login}@backproc.test"),
                        imap_host: host.into(),
                        imap_port: *port,
                        imap_security: Some(backproc_store::Security::None),
                        login: login.clone(),
                        password: Some(password.clone()),
                        ..Default::default()
                    },
                    now,
                )
                .expect("add account")
        })
        .collect()
}

/// The rows of history that are not Started/Finished (failures, cancellations), as
/// `history --json --errors` prints them.
pub fn history_errors(home: &Home) -> Vec<serde_json::Value> {
    let o = home.run(&["history", "--json", "--errors"]);
    assert!(o.status.success(), "history: {}", stderr(&o));
    serde_json::from_slice(&o.stdout).expect("history --json")
}
