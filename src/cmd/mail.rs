//! `backproc mail …`: what a user does in the application, applied to the store at once and
//! pushed to the server by the engine (flags on the next full sync, deletions and moves by
//! Sync Delete).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use backproc_store::now;
use clap::{ArgGroup, Subcommand};

use super::accounts::fmt_time;
use super::{Env, print_json};

#[derive(Subcommand)]
pub enum MailCmd {
    /// List messages, newest first.
    List {
        #[arg(long)]
        account: i64,
        /// Folder name (as shown by `folder list`).
        #[arg(long)]
        folder: Option<String>,
        #[arg(long)]
        unread: bool,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// Show a message's fields, or its raw RFC 822 bytes with --raw.
    Show {
        id: i64,
        #[arg(long)]
        raw: bool,
    },
    /// Change flags and keywords (here at once; on the server at the next full sync, as
    /// what changed only: the server keeps the keywords other clients set).
    #[command(group(ArgGroup::new("flag").required(true).multiple(true)))]
    Flag {
        id: i64,
        #[arg(long, group = "flag", conflicts_with = "unseen")]
        seen: bool,
        #[arg(long, group = "flag")]
        unseen: bool,
        #[arg(long, group = "flag", conflicts_with = "unflagged")]
        flagged: bool,
        #[arg(long, group = "flag")]
        unflagged: bool,
        /// Add a keyword (e.g. $Label1, NonJunk); repeatable.
        #[arg(long = "add", value_name = "KEYWORD", group = "flag")]
        add: Vec<String>,
        /// Remove a keyword; repeatable.
        #[arg(long = "remove", value_name = "KEYWORD", group = "flag")]
        remove: Vec<String>,
    },
    /// Delete (here at once; on the server, to Trash where there is one, by Sync Delete).
    Delete { id: i64 },
    /// Move to another folder of the account.
    Move {
        id: i64,
        #[arg(long)]
        to: String,
    },
    /// Let the next Sync Delete of a folder delete more than the safety brake allows.
    ConfirmDeletions {
        #[arg(long)]
        folder: i64,
    },
}

fn tri(on: bool, off: bool) -> Option<bool> {
    match (on, off) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    }
}

pub fn run(home: PathBuf, cmd: MailCmd) -> anyhow::Result<ExitCode> {
    let env = Env::open(home)?;
    let mut store = env.store()?;
    match cmd {
        MailCmd::List { account, folder, unread, limit, json } => {
            let rows = store.mail_list(account, folder.as_deref(), unread, limit)?;
            if json {
                print_json(&rows)?;
            } else {
                for m in rows {
                    println!(
                        "{:>7}  {}{}  {:<16}  {:<19}  {:<28.28}  {}",
                        m.id,
                        if m.flags.seen { ' ' } else { 'N' },
                        if m.flags.flagged { '!' } else { ' ' },
                        m.folder,
                        fmt_time(m.internal_date.or(m.date)),
                        m.from.unwrap_or_default(),
                        m.subject.unwrap_or_default()
                    );
                }
            }
        }
        MailCmd::Show { id, raw } => {
            if raw {
                std::io::stdout().write_all(&store.mail_raw(id)?)?;
            } else {
                print_json(&store.mail(id)?)?;
            }
        }
        MailCmd::Flag { id, seen, unseen, flagged, unflagged, add, remove } => {
            if let Some(k) = add.iter().find(|k| remove.contains(k)) {
                bail!("the keyword {k:?} is both added and removed");
            }
            let edit =
                backproc_store::FlagEdit { seen: tri(seen, unseen), flagged: tri(flagged, unflagged), add, remove };
            store.mail_set_flags(id, &edit, now())?;
            println!("message {id} updated; the server follows at the next full sync");
        }
        MailCmd::Delete { id } => {
            store.mail_delete(id, now())?;
            println!("message {id} deleted; the server follows at the next Sync Delete");
        }
        MailCmd::Move { id, to } => {
            if to.chars().any(char::is_control) {
                bail!("invalid folder name {to:?}");
            }
            store.mail_move(id, &to)?;
            println!("message {id} moving to {to}; the server follows at the next Sync Delete");
        }
        MailCmd::ConfirmDeletions { folder } => {
            store.confirm_deletions(folder)?;
            log::warn!("deletions confirmed by an administrator for folder {folder}");
            println!("the next Sync Delete of folder {folder} deletes what it finds, beyond the safety brake");
        }
    }
    Ok(ExitCode::SUCCESS)
}
