//! `backproc internal …`: the internal message service between users of one store: send,
//! drafts, folders, read marks, "check mail" and the poll interval.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use backproc_store::internal::{Importance, InternalDraft, InternalFolder, InternalMessage, POLL_INTERVAL_RANGE};
use backproc_store::now;
use clap::{Args, Subcommand, ValueEnum};

use super::{Env, print_json};

#[derive(Clone, Copy, ValueEnum)]
pub enum Imp {
    Normal,
    High,
}

impl From<Imp> for Importance {
    fn from(i: Imp) -> Importance {
        match i {
            Imp::Normal => Importance::Normal,
            Imp::High => Importance::High,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Folder {
    Inbox,
    Sent,
    Drafts,
}

impl Folder {
    fn name(self) -> &'static str {
        match self {
            Folder::Inbox => "inbox",
            Folder::Sent => "sent",
            Folder::Drafts => "drafts",
        }
    }
}

impl From<Folder> for InternalFolder {
    fn from(f: Folder) -> InternalFolder {
        match f {
            Folder::Inbox => InternalFolder::Inbox,
            Folder::Sent => InternalFolder::Sent,
            Folder::Drafts => InternalFolder::Drafts,
        }
    }
}

/// The text of a message: body, subject, importance.
#[derive(Args)]
pub struct Content {
    /// Recipient login (repeatable).
    #[arg(long, value_name = "LOGIN")]
    to: Vec<String>,
    /// One line.
    #[arg(long)]
    subject: Option<String>,
    /// Plain-text body.
    #[arg(long, conflicts_with = "body_file")]
    body: Option<String>,
    /// File holding the plain-text body (UTF-8).
    #[arg(long, value_name = "FILE")]
    body_file: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "normal")]
    importance: Imp,
}

#[derive(Subcommand)]
pub enum InternalCmd {
    /// Send a message (or, with --draft, a saved draft); prints the message id.
    Send {
        /// Login of the sender.
        #[arg(long, value_name = "LOGIN")]
        from: String,
        /// Send this saved draft of the sender instead of a new message.
        #[arg(long, value_name = "ID", conflicts_with_all = ["to", "subject", "body", "body_file"])]
        draft: Option<i64>,
        #[command(flatten)]
        content: Content,
    },
    /// Save a draft (with --id, replace that draft's fields); prints the draft id.
    Draft {
        /// Login of the author.
        #[arg(long, value_name = "LOGIN")]
        from: String,
        /// Edit this draft instead of saving a new one.
        #[arg(long, value_name = "ID")]
        id: Option<i64>,
        #[command(flatten)]
        content: Content,
    },
    /// List a user's folder, newest first.
    List {
        #[arg(long, value_name = "LOGIN")]
        user: String,
        #[arg(long, value_enum, default_value = "inbox")]
        folder: Folder,
        #[arg(long)]
        json: bool,
    },
    /// Mark a message read by a user (one of its recipients).
    Read {
        #[arg(long, value_name = "LOGIN")]
        user: String,
        id: i64,
    },
    /// What arrived since the user's last check (high importance apart); updates the last check.
    Check {
        #[arg(long, value_name = "LOGIN")]
        user: String,
        #[arg(long)]
        json: bool,
    },
    /// Print the user's client poll interval, or set it (10..=86400 seconds).
    PollInterval {
        #[arg(long, value_name = "LOGIN")]
        user: String,
        seconds: Option<i64>,
    },
}

/// Reads the body; an unreadable file is refused before anything is stored. A draft may
/// have none (empty).
fn body(c: &Content, required: bool) -> anyhow::Result<String> {
    match (&c.body, &c.body_file) {
        (Some(b), _) => Ok(b.clone()),
        (None, Some(f)) => {
            let raw = std::fs::read(f).with_context(|| format!("cannot read the body file {}", f.display()))?;
            String::from_utf8(raw).with_context(|| format!("the body file {} is not UTF-8", f.display()))
        }
        (None, None) if required => bail!("--body or --body-file is required"),
        (None, None) => Ok(String::new()),
    }
}

fn subject(c: &Content) -> anyhow::Result<&str> {
    c.subject.as_deref().context("--subject is required")
}

fn fmt_time(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| t.to_string())
}

fn mark(m: &InternalMessage) -> &'static str {
    match m.importance {
        Importance::High => "!",
        Importance::Normal => " ",
    }
}

fn line(m: &InternalMessage) -> String {
    format!("{:>6} {} {}  {:<16} {}", m.id, mark(m), fmt_time(m.created), m.from, m.subject)
}

pub fn run(home: PathBuf, cmd: InternalCmd) -> anyhow::Result<ExitCode> {
    let env = Env::open(home)?;
    let mut store = env.store()?;
    match cmd {
        InternalCmd::Send { from, draft: Some(id), .. } => {
            store.internal_send_draft(id, &from, now())?;
            log::info!("internal message {id} (a draft) sent by {from}");
            println!("{id}");
        }
        InternalCmd::Send { from, draft: None, content } => {
            if content.to.is_empty() {
                bail!("a message needs at least one recipient (--to LOGIN)");
            }
            let body = body(&content, true)?;
            let m = InternalDraft {
                from: &from,
                to: &content.to,
                subject: subject(&content)?,
                body: &body,
                importance: content.importance.into(),
            };
            let id = store.internal_create(&m, false, now())?;
            log::info!("internal message {id} sent by {from} to {}", content.to.join(", "));
            println!("{id}");
        }
        InternalCmd::Draft { from, id, content } => {
            let body = body(&content, false)?;
            let m = InternalDraft {
                from: &from,
                to: &content.to,
                subject: content.subject.as_deref().unwrap_or(""),
                body: &body,
                importance: content.importance.into(),
            };
            let id = match id {
                Some(id) => {
                    store.internal_update_draft(id, &m, now())?;
                    id
                }
                None => store.internal_create(&m, true, now())?,
            };
            println!("{id}");
        }
        InternalCmd::List { user, folder, json } => {
            let msgs = store.internal_list(&user, folder.into())?;
            // the inbox's unread count, whichever folder is shown
            let unread = store.internal_unread_count(&user)?;
            if json {
                print_json(&serde_json::json!({ "folder": folder.name(), "unread": unread, "messages": msgs }))?;
                return Ok(ExitCode::SUCCESS);
            }
            match folder {
                Folder::Inbox => println!("Inbox ({unread} unread)"),
                Folder::Sent => println!("Sent ({})", msgs.len()),
                Folder::Drafts => println!("Drafts ({})", msgs.len()),
            }
            for m in &msgs {
                match folder {
                    Folder::Inbox => println!("{} {}", if m.read { " " } else { "*" }, line(m)),
                    Folder::Sent | Folder::Drafts => {
                        let to = if m.to.is_empty() { "(no recipient)".to_owned() } else { m.to.join(", ") };
                        println!("  {:>6} {} {}  to {}  {}", m.id, mark(m), fmt_time(m.created), to, m.subject);
                        if !m.not_delivered.is_empty() {
                            println!("           not delivered: {}", m.not_delivered.join(", "));
                        }
                    }
                }
            }
        }
        InternalCmd::Read { user, id } => {
            if store.internal_mark_read(id, &user, now())? {
                println!("message {id} marked read for {user}");
            } else {
                println!("message {id} was already read by {user}");
            }
        }
        InternalCmd::Check { user, json } => {
            let (high, normal): (Vec<_>, Vec<_>) =
                store.internal_check(&user, now())?.into_iter().partition(|m| m.importance == Importance::High);
            if json {
                print_json(&serde_json::json!({ "high": high, "normal": normal }))?;
            } else if high.is_empty() && normal.is_empty() {
                println!("No new messages");
            } else {
                if !high.is_empty() {
                    println!("High importance (show as a modal):");
                    for m in &high {
                        println!("{}", line(m));
                    }
                }
                if !normal.is_empty() {
                    println!("New:");
                    for m in &normal {
                        println!("{}", line(m));
                    }
                }
            }
        }
        InternalCmd::PollInterval { user, seconds } => {
            if let Some(s) = seconds
                && !POLL_INTERVAL_RANGE.contains(&s)
            {
                bail!(
                    "poll interval {s} s is out of range: expected {}..={} seconds",
                    POLL_INTERVAL_RANGE.start(),
                    POLL_INTERVAL_RANGE.end()
                );
            }
            let v = store.internal_poll_interval(&user, seconds)?;
            let v = v.unwrap_or(env.config().internal_msg_poll_interval as i64);
            println!("{v}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
