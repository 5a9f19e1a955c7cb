//! Disk full during receive and during send (issue 11, item 8).
//!
//! The home's `data/` directory (the SQLite store and its WAL) is a small tmpfs mounted by the
//! test; logs stay on the ordinary disk, so the engine can still say what went wrong. Space
//! is freed by growing the tmpfs (`mount -o remount,size=`) or by shrinking a filler file.
//!
//! Why a real tmpfs and not `strace -e inject=write:error=ENOSPC`: a full file system fails
//! every allocating write of every file at once (database, WAL, shared-memory index), the way
//! production fails, while an injected errno hits one system call chosen by count. Mounting
//! needs root (CAP_SYS_ADMIN); these tests run as root here and in CI. `unshare -m -r` would
//! give an unprivileged user a mount namespace, but only for the process it starts, and the
//! test spawns the engine many times and reads the store itself; so instead a non-root run
//! fails at once with a message saying what is needed, never passes silently.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::faultkit::outbox::{LEASE, check_send_invariants, queue, sink_counts};
use crate::mailworld::*;
use crate::util::*;
use backproc_testkit::{SinkOptions, SmtpSink, mailgen};

/// A tmpfs mounted on a directory for the life of the value; unmounted on drop (also when the
/// test panics), before the temp dir holding it is removed.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, bytes: u64) -> Tmpfs {
        let uid = Command::new("id").arg("-u").output().expect("run id -u");
        assert!(
            String::from_utf8_lossy(&uid.stdout).trim() == "0",
            "the disk-full tests mount a small tmpfs and need root (CAP_SYS_ADMIN); \
             run them as root (CI does), e.g. `sudo -E cargo test --test tests diskfull::`"
        );
        std::fs::create_dir_all(dir).unwrap();
        let o = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes},mode=0770"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(o.status.success(), "mount -t tmpfs on {}: {}", dir.display(), stderr(&o));
        Tmpfs { dir: dir.to_path_buf() }
    }

    /// Grows (or shrinks) the file system in place; its files stay.
    fn resize(&self, bytes: u64) {
        let o = Command::new("mount")
            .args(["-o", &format!("remount,size={bytes}")])
            .arg(&self.dir)
            .output()
            .expect("run mount");
        assert!(o.status.success(), "remount {}: {}", self.dir.display(), stderr(&o));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount").arg(&self.dir).status().is_ok_and(|s| s.success());
        if !ok {
            // something still holds a file open (a stray engine): detach it anyway
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// A file that takes all the free space of its file system but `leave` bytes.
struct Filler {
    path: PathBuf,
}

impl Filler {
    fn new(dir: &Path) -> Filler {
        Filler { path: dir.join("filler") }
    }

    /// Writes zeros until ENOSPC, then gives back `leave` bytes (tmpfs frees the pages of a
    /// truncated tail at once).
    fn leave(&self, leave: u64) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&self.path).expect("open filler");
        let chunk = vec![0u8; 4096];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                Err(e) => panic!("filler: {e}"),
            }
        }
        let len = f.metadata().unwrap().len();
        f.set_len(len.saturating_sub(leave)).unwrap();
    }

    fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A copy of the store (database and WAL) on the ordinary disk, to read what the engine left:
/// opening it in place could need space the full tmpfs does not have (a new WAL index), and a
/// reader must not change what it inspects.
fn copy_of_store(home: &Home) -> (tempfile::TempDir, backproc_store::Store) {
    let copy = tempfile::tempdir().unwrap();
    for suffix in ["", "-wal"] {
        let from = home.file(&format!("data/backproc.sqlite{suffix}"));
        if from.exists() {
            std::fs::copy(&from, copy.path().join(format!("backproc.sqlite{suffix}"))).unwrap();
        }
    }
    // and the message bodies' packs (the copy's integrity check reads every reference)
    let packs = home.file("data/backproc.packs");
    if packs.exists() {
        std::fs::create_dir(copy.path().join("backproc.packs")).unwrap();
        for e in std::fs::read_dir(&packs).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), copy.path().join("backproc.packs").join(e.file_name())).unwrap();
        }
    }
    let store = backproc_store::Store::open(&copy.path().join("backproc.sqlite")).expect("open the copied store");
    (copy, store)
}

fn logs(home: &Home) -> String {
    ["l-info.log", "l-error.log", "l-debug.log", "l-threading-error.txt"]
        .iter()
        .map(|l| home.log(l))
        .collect::<Vec<_>>()
        .join("\n")
}

fn panics(home: &Home) -> Vec<String> {
    home.log("l-threading-error.txt").lines().filter(|l| l.to_lowercase().contains("panic")).map(String::from).collect()
}

/// Words of SQLite's and the OS's disk-full errors, as the engine reports them.
fn says_disk_full(text: &str) -> bool {
    let t = text.to_lowercase();
    t.contains("database or disk is full") || t.contains("no space left on device")
}

/// Runs `run --once` to completion (killing it after 120 s so a hang fails the test rather
/// than the CI job); returns its output.
fn run_once_bounded(home: &Home) -> std::process::Output {
    let child = home.spawn(&["run", "--once"]);
    let pid = child.id();
    let guard = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(120));
        // only this pid, and only if it is still ours to kill
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    });
    let out = child.wait_with_output().expect("wait for run --once");
    drop(guard); // detached: it finds the pid gone
    out
}

// ---------------------------------------------------------------------------------------------
// Receive: a mailbox larger than the store's file system

#[test]
fn disk_full_during_receive_corrupts_nothing_records_nothing_unstored_and_recovers() {
    const SEED: u64 = 0x6b11_8008;
    let started = Instant::now();
    let dovecot = backproc_testkit::Dovecot::start().expect("start dovecot");
    let (user, password) = ("alice".to_string(), "s3cr3t-Pa55".to_string());
    dovecot.add_user(&user, &password).expect("add user");
    // ~13 MB of mail (text, attachments, a few 200 KB-1 MB messages) for an 8 MB store
    let msgs = mailgen::mailbox(SEED, 280);
    let total: usize = msgs.iter().map(Vec::len).sum();
    dovecot.populate(&user, &password, "INBOX", &msgs).unwrap();
    let home = Home::with_config(&format!("{EVERY_SECOND}define('EMAIL_BG_RECEIVE_BATCH_MESSAGES', 20);\n"));
    let tmpfs = Tmpfs::mount(&home.file("data"), 8 << 20);
    let account = add_account(&home, &dovecot, &user, &password, "none", dovecot.imap_port(), &[]);
    let w = MailWorld { home, dovecot, user, password, account };

    let o = run_once_bounded(&w.home);
    let text = format!("{}\n{}", stderr(&o), logs(&w.home));
    eprintln!(
        "mailbox {total} bytes; first run exit {:?}; l-info.log tail:\n{}",
        o.status.code(),
        tail(&w.home.log("l-info.log"), 8)
    );
    assert!(o.status.code().is_some(), "run --once did not exit by itself: {o:?}\n{text}");
    assert!(says_disk_full(&text), "no disk-full error in stderr or the logs:\n{text}");
    assert!(panics(&w.home).is_empty(), "{:?}", panics(&w.home));

    // Nothing is marked received that is not stored: every UID under the folder's watermark is
    // a stored row (with the server's bytes) or still queued, and the store is not complete.
    let (_copy, store) = copy_of_store(&w.home);
    assert_eq!(store.integrity_check().unwrap(), "ok", "the store on the full disk is corrupt");
    let f = store.folders(Some(w.account)).unwrap().into_iter().find(|f| f.display_name == "INBOX").expect("INBOX");
    let (rows, queued) = store.folder_sync_rows(f.id).unwrap();
    assert!(rows.len() < msgs.len(), "all {} messages fit in 8 MB: the disk never filled", msgs.len());
    let have: BTreeSet<i64> = rows.iter().map(|r| r.uid).chain(queued.iter().copied()).collect();
    let missing: Vec<i64> = (1..=f.last_seen_uid).filter(|u| !have.contains(u)).collect();
    assert!(missing.is_empty(), "UIDs {missing:?} are under the watermark but neither stored nor queued");
    for r in &rows {
        let raw = store.message_raw(f.id, r.uid).unwrap().expect("a stored row has its raw bytes");
        assert!(raw == msgs[r.uid as usize - 1], "uid {} stored with other bytes", r.uid);
    }
    let stored_when_full = rows.len();
    drop(store);

    // space is freed: the next runs complete the folder
    tmpfs.resize(256 << 20);
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(1100));
        w.run_once();
        if w.store().receive_queue_depths().unwrap() == (0, 0, 0) {
            break;
        }
    }
    let store = w.store();
    assert_eq!(store.receive_queue_depths().unwrap(), (0, 0, 0), "{}", w.home.log("l-info.log"));
    assert_same(&w, "INBOX");
    assert!(panics(&w.home).is_empty(), "{:?}", panics(&w.home));
    crate::faultkit::soak::figure(
        "disk-full-receive",
        &[
            ("mailbox_bytes", total.to_string()),
            ("store_bytes", (8u64 << 20).to_string()),
            ("stored_when_full", stored_when_full.to_string()),
            ("messages", msgs.len().to_string()),
            ("integrity", "ok".into()),
            ("after_free", "equal".into()),
            ("secs", started.elapsed().as_secs().to_string()),
        ],
    );
}

/// Store == server for a folder: same UIDs, flags and raw bytes; integrity ok.
fn assert_same(w: &MailWorld, folder: &str) {
    let store = w.store();
    let server = server_messages(&mut w.imap(), folder);
    let local = store_messages(&store, folder_id(&store, w.account, folder));
    assert_eq!(
        local.iter().map(|m| m.0).collect::<Vec<_>>(),
        server.iter().map(|m| m.0).collect::<Vec<_>>(),
        "UIDs of {folder}: store vs server"
    );
    for (l, s) in local.iter().zip(&server) {
        assert_eq!(l.1, s.1, "flags of uid {}", s.0);
        assert!(l.2 == s.2, "raw bytes of uid {}", s.0);
    }
    assert_eq!(store.integrity_check().unwrap(), "ok");
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// Send: the store fills up between the SMTP server's 250 and our SUCCESS commit

#[test]
fn disk_full_during_send_records_no_success_without_a_send_and_delivers_everything_once_freed() {
    const SEED: u64 = 0x6b11_8009;
    const N: usize = 60;
    let started = Instant::now();
    let sink = SmtpSink::start(SinkOptions::default()).expect("smtp-sink");
    let home = Home::with_config(&send_short_lease());
    let _tmpfs = Tmpfs::mount(&home.file("data"), 8 << 20);
    let account = add_smtp_account(&home, sink.port(), 1);
    let queued = {
        let mut store = backproc_store::Store::open(&home.file("data/backproc.sqlite")).unwrap();
        queue(&mut store, account, SEED, N)
    };
    let by_mid: BTreeMap<&str, i64> = queued.iter().map(|(id, m)| (m.as_str(), *id)).collect();
    let filler = Filler::new(&home.file("data"));

    // Each round leaves a little more free space (0, then 4 KB steps): a round sends until a
    // write finds the disk full; the first rounds cannot even claim an entry, later ones get
    // some SUCCESS commits through and then one fails after the server's 250.
    let mut rounds: Vec<(u64, usize, usize, usize)> = Vec::new(); // (free bytes, SUCCESS, PROCESSING, in sink)
    let mut processing_in_sink = BTreeSet::new();
    for r in 0..40u64 {
        let free = r * 4096;
        filler.leave(free);
        let o = run_once_bounded(&home);
        assert!(o.status.code().is_some(), "round {r}: run --once did not exit by itself\n{}", logs(&home));
        let (_copy, store) = copy_of_store(&home);
        assert_eq!(store.integrity_check().unwrap(), "ok", "round {r} (free {free})");
        let recs = store.outbox_records(None, None).unwrap();
        let sink_now = sink_counts(&sink);
        check_send_invariants(&recs, &sink_now, &by_mid, &format!("round {r} (free {free})"));
        let processing: Vec<_> = recs.iter().filter(|x| x.state == "PROCESSING").collect();
        processing_in_sink.extend(processing.iter().filter(|x| sink_now.contains_key(&x.message_id)).map(|x| x.id));
        let success = recs.iter().filter(|x| x.state == "SUCCESS").count();
        rounds.push((free, success, processing.len(), sink_now.values().sum()));
        if recs.iter().all(|x| x.state != "PENDING") {
            break;
        }
    }
    eprintln!("(free bytes, SUCCESS, PROCESSING, in the sink) after each round: {rounds:?}");
    assert!(says_disk_full(&logs(&home)), "no disk-full error in the logs:\n{}", logs(&home));
    assert!(
        !processing_in_sink.is_empty(),
        "no round sent a message and then failed to record it: the disk never filled at that point: {rounds:?}"
    );
    assert!(rounds[0].3 == 0, "something was sent with no free space at all: {rounds:?}");

    // space is freed; once the leases of the entries whose SUCCESS could not be recorded have
    // expired, the next runs finish everything
    filler.remove();
    std::thread::sleep(Duration::from_secs(LEASE + 1));
    for _ in 0..3 {
        let o = run_once_bounded(&home);
        assert!(o.status.success(), "{}\n{}", stderr(&o), logs(&home));
        let store = backproc_store::Store::open(&home.file("data/backproc.sqlite")).unwrap();
        if store.outbox_records(None, None).unwrap().iter().all(|x| x.state == "SUCCESS" || x.state == "ERROR") {
            break;
        }
        std::thread::sleep(Duration::from_millis(1100));
    }
    let store = backproc_store::Store::open(&home.file("data/backproc.sqlite")).unwrap();
    assert_eq!(store.integrity_check().unwrap(), "ok");
    let recs = store.outbox_records(None, None).unwrap();
    let sink_now = sink_counts(&sink);
    check_send_invariants(&recs, &sink_now, &by_mid, "after space was freed");
    // everything delivered, once: each queued message is in the sink exactly once
    for (id, mid) in &queued {
        let r = recs.iter().find(|r| r.id == *id).unwrap();
        assert_eq!(sink_now.get(mid).copied(), Some(1), "entry {id} was not delivered (seed {SEED:#x}): {r:?}");
        match r.state.as_str() {
            "SUCCESS" => {}
            // its SUCCESS could not be recorded: the lease expiry says so, and it is not resent
            "ERROR" => assert!(processing_in_sink.contains(id), "entry {id} is ERROR: {r:?}"),
            s => panic!("entry {id} is {s} after space was freed: {r:?}"),
        }
    }
    let unknown = recs.iter().filter(|r| r.state == "ERROR").count();
    assert!(panics(&home).is_empty(), "{:?}", panics(&home));
    crate::faultkit::soak::figure(
        "disk-full-send",
        &[
            ("messages", N.to_string()),
            ("full_rounds", rounds.len().to_string()),
            ("success", (N - unknown).to_string()),
            ("unknown_sent", unknown.to_string()),
            ("success_without_send", "0".into()),
            ("undelivered", "0".into()),
            ("duplicated", "0".into()),
            ("integrity", "ok".into()),
            ("secs", started.elapsed().as_secs().to_string()),
        ],
    );
}
