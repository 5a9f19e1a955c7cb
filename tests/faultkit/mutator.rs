//! A concurrent "mutator": another IMAP client that expunges, re-flags and appends messages
//! in one folder from its own thread while the engine syncs.

use std::net::TcpStream;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::Rng;

/// One change the mutator makes.
#[derive(Debug, Clone)]
pub enum Op {
    /// `UID STORE uid +FLAGS.SILENT (\Deleted)` then `UID EXPUNGE uid` (only that message).
    Expunge(u32),
    /// `UID STORE uid <change>`, e.g. `+FLAGS (\Seen)` or `-FLAGS (\Flagged)`.
    Flag(u32, String),
    /// APPEND a new message (its UID is looked up by Message-ID afterwards).
    Append { raw: Vec<u8>, message_id: String },
}

/// What the mutator did.
#[derive(Debug, Default, Clone)]
pub struct MutatorLog {
    pub expunged: Vec<u32>,
    pub flagged: Vec<u32>,
    /// (uid, raw bytes) of each appended message.
    pub appended: Vec<(u32, Vec<u8>)>,
    pub errors: Vec<String>,
    /// When each successful change was acknowledged by the server.
    pub times: Vec<Instant>,
}

pub struct Mutator {
    handle: Option<JoinHandle<MutatorLog>>,
}

/// A shuffled plan: expunge `expunge` of `uids`, re-flag `reflag` others, append `appends`.
pub fn plan(seed: u64, uids: &[u32], expunge: usize, reflag: usize, appends: Vec<(Vec<u8>, String)>) -> Vec<Op> {
    let mut rng = Rng::new(seed);
    let mut pool: Vec<u32> = uids.to_vec();
    shuffle(&mut rng, &mut pool);
    let changes = ["+FLAGS (\\Seen)", "-FLAGS (\\Seen)", "+FLAGS (\\Flagged)", "+FLAGS (\\Answered \\Seen)"];
    let mut ops: Vec<Op> = pool[..expunge].iter().map(|u| Op::Expunge(*u)).collect();
    ops.extend(pool[expunge..expunge + reflag].iter().map(|u| Op::Flag(*u, rng.pick(&changes).to_string())));
    ops.extend(appends.into_iter().map(|(raw, message_id)| Op::Append { raw, message_id }));
    shuffle(&mut rng, &mut ops);
    ops
}

fn shuffle<T>(rng: &mut Rng, v: &mut [T]) {
    for i in (1..v.len()).rev() {
        let j = rng.range(0, i as u64 + 1) as usize;
        v.swap(i, j);
    }
}

impl Mutator {
    /// Selects `folder` on `session` (already logged in) and applies `ops` one by one, `pace`
    /// apart, in a thread of its own.
    pub fn start(mut session: imap::Session<TcpStream>, folder: &str, ops: Vec<Op>, pace: Duration) -> Mutator {
        let folder = folder.to_string();
        session.select(&folder).expect("mutator: select");
        let handle = std::thread::Builder::new()
            .name("imap-mutator".into())
            .spawn(move || {
                let mut log = MutatorLog::default();
                for op in ops {
                    let r = apply(&mut session, &folder, &op, &mut log);
                    match r {
                        Ok(()) => log.times.push(Instant::now()),
                        Err(e) => log.errors.push(format!("{op:?}: {e}")),
                    }
                    std::thread::sleep(pace);
                }
                let _ = session.logout();
                log
            })
            .expect("spawn mutator");
        Mutator { handle: Some(handle) }
    }

    /// Waits for the mutator to finish; panics if its thread panicked.
    pub fn join(mut self) -> MutatorLog {
        self.handle.take().expect("joined once").join().expect("the mutator thread panicked")
    }
}

fn apply(s: &mut imap::Session<TcpStream>, folder: &str, op: &Op, log: &mut MutatorLog) -> imap::Result<()> {
    match op {
        Op::Expunge(uid) => {
            s.uid_store(uid.to_string(), "+FLAGS.SILENT (\\Deleted)")?;
            s.uid_expunge(uid.to_string())?;
            log.expunged.push(*uid);
        }
        Op::Flag(uid, change) => {
            s.uid_store(uid.to_string(), change)?;
            log.flagged.push(*uid);
        }
        Op::Append { raw, message_id } => {
            s.append(folder, raw).finish()?;
            let found = s.uid_search(format!("HEADER Message-ID \"{message_id}\""))?;
            let uid = found.into_iter().max().ok_or(imap::Error::Append)?;
            log.appended.push((uid, raw.clone()));
        }
    }
    Ok(())
}
