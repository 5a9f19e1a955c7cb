//! `backproc outbox …`: queue messages and read their delivery records.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use backproc_store::now;
use clap::Subcommand;

use super::{Env, print_json};

#[derive(Subcommand)]
pub enum OutboxCmd {
    /// Queue a message; prints the entry id.
    Add {
        #[arg(long)]
        account: i64,
        #[arg(long, value_name = "ADDRESS")]
        to: Vec<String>,
        #[arg(long, value_name = "ADDRESS")]
        cc: Vec<String>,
        #[arg(long, value_name = "ADDRESS")]
        bcc: Vec<String>,
        #[arg(long, required_unless_present = "eml")]
        subject: Option<String>,
        /// Plain-text body.
        #[arg(long, conflicts_with_all = ["body_file", "eml"], required_unless_present_any = ["body_file", "eml"])]
        body: Option<String>,
        /// File holding the plain-text body.
        #[arg(long, value_name = "FILE", conflicts_with = "eml")]
        body_file: Option<PathBuf>,
        /// A ready message (RFC 5322); its Message-ID is kept or one is added, Bcc is removed.
        #[arg(long, value_name = "FILE")]
        eml: Option<PathBuf>,
        /// HTML alternative of the body.
        #[arg(long, value_name = "FILE", conflicts_with = "eml")]
        html: Option<PathBuf>,
        /// A file to attach (repeatable).
        #[arg(long, value_name = "FILE", conflicts_with = "eml")]
        attach: Vec<PathBuf>,
    },
    /// Print an entry's delivery record as JSON.
    Show { id: i64 },
    /// List entries, newest first.
    List {
        /// PENDING, PROCESSING, SUCCESS, ERROR or RETRY.
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Send an entry again on purpose (state RETRY; counts one more attempt).
    Retry { id: i64 },
}

fn message_id(email: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    h.write_u128(nanos);
    let domain = email.rsplit_once('@').map(|(_, d)| d).filter(|d| !d.is_empty()).unwrap_or("backproc.localhost");
    format!("{nanos:x}.{:016x}@{domain}", h.finish())
}

fn read(p: &PathBuf, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("cannot read the {what} {}", p.display()))
}

pub fn run(home: PathBuf, cmd: OutboxCmd) -> anyhow::Result<ExitCode> {
    let env = Env::open(home)?;
    let mut store = env.store()?;
    match cmd {
        OutboxCmd::Add { account, to, cc, bcc, subject, body, body_file, eml, html, attach } => {
            let acc = store.account(account)?;
            let mid = message_id(&acc.email);
            let (raw, rcpts, mid) = if let Some(f) = eml {
                let (raw, id) = backproc_smtp::read_eml(&read(&f, ".eml file")?, &mid)?;
                let rcpts: Vec<String> = to.iter().chain(&cc).chain(&bcc).cloned().collect();
                for r in &rcpts {
                    backproc_smtp::check_address(r)?;
                }
                if rcpts.is_empty() {
                    bail!("a message needs at least one recipient (--to, --cc or --bcc)");
                }
                (raw, rcpts, id)
            } else {
                let text = match (body, body_file) {
                    (Some(b), _) => b,
                    (None, Some(f)) => {
                        String::from_utf8(read(&f, "body file")?).context("the body file is not UTF-8")?
                    }
                    (None, None) => bail!("--body or --body-file is required"),
                };
                let html = match html {
                    Some(f) => Some(String::from_utf8(read(&f, "HTML file")?).context("the HTML file is not UTF-8")?),
                    None => None,
                };
                let mut attachments = Vec::new();
                for a in &attach {
                    let name =
                        a.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "attachment".into());
                    attachments.push((name, read(a, "attachment")?));
                }
                let draft = backproc_smtp::Draft {
                    from: acc.email.clone(),
                    to,
                    cc,
                    bcc,
                    subject: subject.unwrap_or_default(),
                    text,
                    html,
                    attachments,
                    message_id: mid.clone(),
                };
                let (raw, rcpts) = backproc_smtp::build_message(&draft)?;
                (raw, rcpts, mid)
            };
            let id = store.outbox_add(account, &mid, &acc.email, &rcpts, &raw, acc.sent_append, now())?;
            log::info!("queued outbox entry {id} <{mid}> for {} recipient(s)", rcpts.len());
            println!("{id}");
        }
        OutboxCmd::Show { id } => print_json(&store.outbox_record(id)?)?,
        OutboxCmd::List { state, json } => {
            let recs = store.outbox_records(None, state.as_deref())?;
            if json {
                print_json(&recs)?;
            } else {
                for r in recs {
                    println!(
                        "{:>6}  {:<10}  acct {:<4} attempts {:<3} {:<40} {}",
                        r.id,
                        r.state,
                        r.account_id,
                        r.attempts,
                        r.message_id,
                        r.error.unwrap_or_default()
                    );
                }
            }
        }
        OutboxCmd::Retry { id } => {
            store.outbox_retry(id, now())?;
            println!("outbox entry {id} set to RETRY");
        }
    }
    Ok(ExitCode::SUCCESS)
}
