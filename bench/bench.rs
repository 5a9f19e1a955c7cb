//! backproc beside mbsync, the raw IMAP wire limit and Postfix's smtp-source (issue 9), and the
//! scheduler at 10,000 accounts × 10 folders (issue 4). `bench/run` builds and runs it; see
//! bench/README.md for what each row means.
//!
//! `bench [--messages N] [--runs R] [--send N] [--smoke] [--profile] [--heap]`; two helper modes run as
//! child processes so they are timed like the other tools: `bench raw-fetch …`, `bench
//! sched-scale …`.

mod accounts;
mod link;
mod measure;
mod push;
mod raw;
mod sched;
mod table;
mod tools;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use backproc_testkit::{Dovecot, mailgen, mutf7_encode};

use measure::{Sample, clean, du_mb, sync_disks, timed};
use table::Results;
use tools::{LOGIN, PASSWORD};

const SEED: u64 = 9;
/// The 8 folders besides INBOX that share 30% of the mail.
const FOLDERS: [&str; 8] = ["Archive", "Projects", "Receipts", "Newsletters", "Входящие", "Entwürfe", "日本語", "Café"];

const STEPS: [&str; 9] = ["initial", "resync", "incremental", "send", "folders", "sched", "link", "accounts", "push"];

struct Opts {
    messages: usize,
    runs: usize,
    send: usize,
    send_parallel: Vec<usize>,
    sched: (usize, usize, usize),
    /// Folders of the many-folders step (issue 24: one STATUS per folder per pass).
    folders: usize,
    disk: PathBuf,
    shm: PathBuf,
    profile: bool,
    /// A heap profile (heaptrack) of the initial sync on disk instead of the timed rows.
    heap: bool,
    smoke: bool,
    /// Steps to run (`--only initial,send`); empty = all. For working on one row: resync and
    /// incremental still need the stores of one initial sync, which then runs untimed.
    only: Vec<String>,
}

impl Opts {
    fn wants(&self, step: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == step)
    }

    fn parse(args: &[String]) -> Opts {
        let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse().ok());
        let mut o = Opts {
            messages: env("BENCH_MESSAGES").unwrap_or(20_000),
            runs: env("BENCH_RUNS").unwrap_or(5),
            send: env("BENCH_SEND").unwrap_or(10_000),
            send_parallel: vec![1, 4],
            sched: (10_000, 10, 100),
            folders: env("BENCH_FOLDERS").unwrap_or(10_000),
            disk: std::env::var_os("BENCH_DISK_DIR").map(PathBuf::from).unwrap_or_else(|| "/var/tmp".into()),
            shm: std::env::var_os("BENCH_SHM_DIR").map(PathBuf::from).unwrap_or_else(|| "/dev/shm".into()),
            profile: false,
            heap: false,
            smoke: false,
            only: Vec::new(),
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut num =
                || it.next().and_then(|v| v.replace('_', "").parse().ok()).expect("a number after the option");
            match a.as_str() {
                "--messages" => o.messages = num(),
                "--runs" => o.runs = num(),
                "--send" => o.send = num(),
                "--smoke" => {
                    o.messages = 200;
                    o.runs = 1;
                    o.send = 200;
                    o.send_parallel = vec![1];
                    o.sched = (100, 10, 10);
                    o.folders = 200;
                    o.smoke = true;
                }
                "--profile" => o.profile = true,
                "--heap" => o.heap = true,
                "--only" => {
                    o.only = it.next().expect("steps after --only").split(',').map(str::to_owned).collect();
                    for s in &o.only {
                        assert!(STEPS.contains(&s.as_str()), "unknown step {s:?}: one of {STEPS:?}");
                    }
                }
                other => panic!("unknown option {other:?} (see bench/README.md)"),
            }
        }
        o.disk = o.disk.join(format!("backproc-bench-{}", std::process::id()));
        o.shm = o.shm.join(format!("backproc-bench-{}", std::process::id()));
        o
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("raw-fetch") => return raw::main(&args[1..]),
        Some("sched-scale") => return sched::main(&args[1..]),
        Some("serve") => return serve(&args[1..]),
        _ => {}
    }
    let o = Opts::parse(&args);
    for d in [&o.disk, &o.shm] {
        std::fs::create_dir_all(d)?;
    }
    let result = bench(&o);
    if std::env::var_os("BENCH_KEEP").is_none() {
        clean(&o.disk);
        clean(&o.shm);
    }
    result
}

/// `bench serve N`: a private Dovecot with the bench's mailbox of N messages, a backproc home
/// synced from it (in the current directory's `serve-home`), for profiling one step by hand;
/// prints the port and the home, and stops when stdin closes.
fn serve(args: &[String]) -> anyhow::Result<()> {
    let n = args.first().and_then(|a| a.parse().ok()).unwrap_or(2000);
    let dovecot = Dovecot::start()?;
    dovecot.add_user(LOGIN, PASSWORD)?;
    load_mailbox(&dovecot, n)?;
    let home = std::env::current_dir()?.join("serve-home");
    tools::new_home(&home, &tools::sync_config(), dovecot.imap_port(), None, 1);
    println!("port {} home {}", dovecot.imap_port(), home.display());
    let mut line = String::new();
    while std::io::stdin().read_line(&mut line)? > 0 {}
    Ok(())
}

fn say(msg: &str) {
    eprintln!("[bench] {msg}");
}

/// The mailbox on the server: (folder, number of messages).
fn load_mailbox(dovecot: &Dovecot, n: usize) -> anyhow::Result<Vec<(String, usize)>> {
    let started = Instant::now();
    let msgs = mailgen::mailbox(SEED, n);
    let bytes: usize = msgs.iter().map(Vec::len).sum();
    let inbox = n * 7 / 10;
    let mut layout = vec![("INBOX".to_owned(), msgs[..inbox].to_vec())];
    for (i, f) in FOLDERS.iter().enumerate() {
        let mine: Vec<Vec<u8>> = msgs[inbox..].iter().skip(i).step_by(FOLDERS.len()).cloned().collect();
        layout.push((f.to_string(), mine));
    }
    let mut out = Vec::new();
    for (f, m) in &layout {
        if f != "INBOX" {
            dovecot.create_folder(LOGIN, PASSWORD, f)?;
        }
        dovecot.populate(LOGIN, PASSWORD, f, m)?;
        out.push((f.clone(), m.len()));
    }
    say(&format!(
        "mailbox: {n} messages, {:.0} MB, in {} folders, loaded in {:.1}s",
        bytes as f64 / 1e6,
        layout.len(),
        started.elapsed().as_secs_f64()
    ));
    Ok(out)
}

fn bench(o: &Opts) -> anyhow::Result<()> {
    let me = std::env::current_exe()?;
    let bp = tools::backproc_bin();
    let bp_s = bp.to_str().expect("utf-8 path").to_owned();
    let scratch = o.disk.clone();
    say(&format!(
        "{} messages, {} runs; disk dir {}, tmpfs dir {}",
        o.messages,
        o.runs,
        o.disk.display(),
        o.shm.display()
    ));

    let dovecot = Dovecot::start()?;
    dovecot.add_user(LOGIN, PASSWORD)?;
    let layout = load_mailbox(&dovecot, o.messages)?;
    let port = dovecot.imap_port();
    let port_s = port.to_string();
    let mut raw_args: Vec<String> = vec!["raw-fetch".into(), port_s.clone(), LOGIN.into(), PASSWORD.into()];
    raw_args.extend(layout.iter().map(|(f, _)| mutf7_encode(f)));
    let raw_args: Vec<&str> = raw_args.iter().map(String::as_str).collect();
    let me_path = me.as_path();

    // Warm the server's cache: one untimed read of everything.
    let warm = timed("raw warm-up", me_path, &raw_args, &scratch);
    say(&format!("server cache warmed ({:.1}s)", warm.secs));
    // four times the mailbox (~50 KB a message): what the tmpfs runs write, with room to spare
    touch_memory(&o.shm, o.messages as u64 * 200_000)?;

    if o.profile {
        return profile(o, &bp, port);
    }
    if o.heap {
        return heap_profile(o, &bp, port);
    }

    let mut r = Results::new(o.messages, o.send);
    let bp_once = |home: &Path| -> Vec<String> {
        vec!["--home".into(), home.to_str().expect("utf-8").into(), "run".into(), "--once".into()]
    };
    let run_bp = |what: &str, home: &Path| -> Sample {
        let a = bp_once(home);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        timed(what, &bp, &a, &scratch)
    };
    let run_mbsync = |what: &str, conf: &Path| -> Sample {
        timed(what, Path::new("mbsync"), &["-q", "-c", conf.to_str().expect("utf-8"), "-a"], &scratch)
    };
    let expect = |what: &str, got: (u64, u64), want: (u64, u64)| {
        assert_eq!(got, want, "{what}: (messages, seen) differ from the server's");
    };
    let n = o.messages as u64;
    let _ = &bp_s;

    // ---- 1. initial sync, on disk and on tmpfs
    let media = [("disk", o.disk.clone()), ("tmpfs", o.shm.clone())];
    let later = o.wants("resync") || o.wants("incremental");
    let (runs, media) = match (o.wants("initial"), later) {
        (true, _) => (o.runs, &media[..]),
        (false, true) => (1, &media[..1]), // untimed: only the stores matter
        (false, false) => (0, &media[..0]),
    };
    for run in 1..=runs {
        say(&format!("initial sync, run {run}/{runs}"));
        r.add("raw", timed("raw fetch", me_path, &raw_args, &scratch));
        for (medium, dir) in media {
            let home = dir.join("backproc-home");
            tools::new_home(&home, &tools::sync_config(), port, None, 1);
            sync_disks();
            let s = run_bp("backproc initial sync", &home);
            expect("backproc initial sync", tools::store_counts(&home), (n, 0));
            r.add(&format!("initial/{medium}/backproc"), s);
            r.size(&format!("backproc store ({medium})"), du_mb(&home.join("data")));

            let maildir = dir.join("maildir");
            clean(&maildir);
            std::fs::create_dir_all(&maildir)?;
            let conf = dir.join("mbsyncrc");
            tools::mbsync_config(&conf, &maildir, port);
            sync_disks();
            let s = run_mbsync("mbsync initial sync", &conf);
            expect("mbsync initial sync", tools::maildir_counts(&maildir), (n, 0));
            r.add(&format!("initial/{medium}/mbsync"), s);
            r.size(&format!("mbsync Maildir ({medium})"), du_mb(&maildir));
            say(&format!(
                "  {medium}: backproc {:.2}s, mbsync {:.2}s",
                r.last(&format!("initial/{medium}/backproc")),
                r.last(&format!("initial/{medium}/mbsync"))
            ));
        }
    }

    if !o.wants("initial") {
        r.samples_clear("initial/");
        r.samples_clear("raw");
    }

    // ---- 2. no-change resync (on disk, the stores of the last initial run)
    if o.wants("resync") {
        let home = o.disk.join("backproc-home");
        let conf = o.disk.join("mbsyncrc");
        let folders = tools::all_folders_high(&home);
        say(&format!("no-change resync ({folders} folders, all high priority, intervals 1 s)"));
        for _ in 0..o.runs {
            std::thread::sleep(Duration::from_millis(1100));
            r.add("resync/backproc", run_bp("backproc resync", &home));
            r.add("resync/mbsync", run_mbsync("mbsync resync", &conf));
        }
        expect("backproc resync", tools::store_counts(&home), (n, 0));
    }

    // ---- 3. incremental: 100 new messages and 500 flag changes on the server, per run
    if o.wants("incremental") {
        let home = o.disk.join("backproc-home");
        let conf = o.disk.join("mbsyncrc");
        let maildir = o.disk.join("maildir");
        let inbox = layout[0].1 as u64;
        let mut total = n;
        for run in 0..o.runs {
            let new: Vec<Vec<u8>> = (0..100).map(|i| mailgen::message(SEED + 1 + run as u64, i)).collect();
            dovecot.populate(LOGIN, PASSWORD, "INBOX", &new)?;
            total += 100;
            let first = (run as u64 * 500) % inbox + 1;
            let last = (first + 499).min(inbox);
            let mut s = dovecot.session(LOGIN, PASSWORD)?;
            s.select("INBOX")?;
            s.uid_store(format!("{first}:{last}"), "+FLAGS.SILENT (\\Seen)")?;
            let seen = s.uid_search("SEEN")?.len() as u64;
            let _ = s.logout();
            std::thread::sleep(Duration::from_millis(1100));
            sync_disks();
            r.add("incremental/backproc", run_bp("backproc incremental", &home));
            expect("backproc incremental", tools::store_counts(&home), (total, seen));
            sync_disks();
            r.add("incremental/mbsync", run_mbsync("mbsync incremental", &conf));
            expect("mbsync incremental", tools::maildir_counts(&maildir), (total, seen));
        }
        r.size("backproc store (disk, after resyncs)", du_mb(&home.join("data")));
    }

    // ---- 4. send
    if o.wants("send") {
        let sink = tools::Sink::start();
        let sink_port = sink.port.to_string();
        let body: String = (0..64).map(|i| format!("{:0>75}\n", i)).collect(); // 64 × 76 B ≈ 4.9 KB
        for &par in &o.send_parallel {
            say(&format!("send {} messages, parallelism {par}", o.send));
            for _ in 0..o.runs {
                let home = o.disk.join("backproc-send");
                let accounts = tools::new_home(&home, &tools::send_config(par), port, Some(sink.port), par);
                {
                    let mut store = backproc_store::Store::open(&tools::store_path(&home))?;
                    let now = backproc_store::now();
                    let to = vec!["b@x.test".to_owned()];
                    for i in 0..o.send {
                        let id = format!("bench.{i}@x.test");
                        let raw = mailgen::message_with(
                            &format!("bench {i}"),
                            "a@x.test",
                            "b@x.test",
                            "Mon, 23 Nov 2026 12:00:00 +0000",
                            &id,
                            &body,
                        );
                        store.outbox_add(accounts[i % par], &id, "a@x.test", &to, &raw, false, now)?;
                    }
                }
                sync_disks();
                r.add(&format!("send/{par}/backproc"), run_bp("backproc send", &home));
                let store = backproc_store::Store::open_read_only(&tools::store_path(&home))?;
                let depths = store.outbox_depths()?;
                let sent = depths.iter().find(|(s, _)| s == "SUCCESS").map(|d| d.1).unwrap_or(0);
                assert_eq!(sent, o.send as i64, "backproc sent only {sent} of {}: {depths:?}", o.send);
                let m = o.send.to_string();
                let p = par.to_string();
                let target = format!("127.0.0.1:{sink_port}");
                let args = ["-s", &p, "-m", &m, "-l", "5000", "-f", "a@x.test", "-t", "b@x.test", &target];
                r.add(
                    &format!("send/{par}/smtp-source"),
                    timed("smtp-source", Path::new("/usr/sbin/smtp-source"), &args, &scratch),
                );
            }
        }
        drop(sink);
    }

    // ---- 5. many folders: the first pass (discovery and the sync of every folder) and a
    // no-change pass over all of them, beside mbsync on the same server
    if o.wants("folders") {
        let f = o.folders;
        say(&format!("many folders: {f} folders, one message in every tenth"));
        let many = Dovecot::start()?;
        many.add_user(LOGIN, PASSWORD)?;
        let names: Vec<String> = (0..f).map(|i| format!("F{i:05}")).collect();
        many.create_folders_on_disk(LOGIN, &names)?;
        let mut msgs = 0u64;
        for (i, name) in names.iter().enumerate().step_by(10) {
            many.populate(LOGIN, PASSWORD, name, &[mailgen::text_message(SEED, i)])?;
            msgs += 1;
        }
        for run in 0..o.runs {
            let home = o.disk.join("backproc-folders");
            tools::new_home(&home, &tools::sync_config(), many.imap_port(), None, 1);
            sync_disks();
            r.add("folders/first/backproc", run_bp("backproc, many folders, first pass", &home));
            expect("backproc many folders", tools::store_counts(&home), (msgs, 0));
            let maildir = o.disk.join("maildir-folders");
            clean(&maildir);
            std::fs::create_dir_all(&maildir)?;
            let conf = o.disk.join("mbsyncrc-folders");
            tools::mbsync_config(&conf, &maildir, many.imap_port());
            sync_disks();
            r.add("folders/first/mbsync", run_mbsync("mbsync, many folders", &conf));
            expect("mbsync many folders", tools::maildir_counts(&maildir), (msgs, 0));
            tools::all_folders_high(&home);
            std::thread::sleep(Duration::from_millis(1100));
            r.add("folders/resync/backproc", run_bp("backproc, many folders, no-change pass", &home));
            r.add("folders/resync/mbsync", run_mbsync("mbsync, many folders, again", &conf));
            say(&format!(
                "  run {}: first pass backproc {:.2}s mbsync {:.2}s; no-change pass backproc {:.2}s mbsync {:.2}s",
                run + 1,
                r.last("folders/first/backproc"),
                r.last("folders/first/mbsync"),
                r.last("folders/resync/backproc"),
                r.last("folders/resync/mbsync")
            ));
        }
        r.folders = f;
    }

    // ---- 6. scheduler scale
    if o.wants("sched") {
        let (accounts, per, iters) = o.sched;
        say(&format!("scheduler: {accounts} accounts × {per} folders, {iters} ticks"));
        let dir = o.shm.join("sched");
        std::fs::create_dir_all(&dir)?;
        let out = std::process::Command::new(me_path)
            .args(["sched-scale", &accounts.to_string(), &per.to_string(), &iters.to_string()])
            .arg(&dir)
            .output()?;
        anyhow::ensure!(out.status.success(), "sched-scale failed: {}", String::from_utf8_lossy(&out.stderr));
        r.sched = serde_json::from_slice(&out.stdout)?;
    }

    r.print(o.runs);

    // ---- 7. over a simulated wide-area link (after the table: its own rows)
    if o.wants("link") {
        link::run(&o.disk, o.runs.min(3), o.smoke, SEED)?;
    }
    // ---- 7b. a thousand accounts through the link
    if o.wants("accounts") {
        accounts::run(&o.disk, o.runs.min(3), o.smoke, SEED)?;
    }
    // ---- 8. push: new-mail latency and the cost of waiting connections
    if o.wants("push") {
        push::run(&o.disk, o.smoke, SEED)?;
    }
    Ok(())
}

/// Profiles backproc's initial sync into tmpfs: `perf record` (cpu-clock, which works in VMs
/// without hardware counters), then the top functions by self time.
/// Writes (then deletes) a tmpfs file of `want` bytes (at most the memory left free less 2 GB),
/// so that the pages the timed runs will get have been touched once before anything is timed.
///
/// Why: on a VM whose memory the host backs lazily (this one), the first touch of a guest
/// page costs the host a fault and a zeroing; writing 1 GB into fresh tmpfs pages measured
/// 0.3 s or 1.2–1.9 s from one try to the next depending on whether the pages had been used
/// before. Whichever tool happened to get untouched pages paid for it, and the raw client,
/// which writes nothing, never did. A machine in service has touched its memory long ago.
fn touch_memory(shm: &Path, want: u64) -> anyhow::Result<()> {
    use std::io::Write;
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    let avail_kb: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    // Leave 2 GB to everyone else; tmpfs pages are not reclaimable while the file exists.
    let bytes = (avail_kb * 1024).saturating_sub(2 << 30).min(want);
    if bytes == 0 {
        return Ok(());
    }
    let started = Instant::now();
    std::fs::create_dir_all(shm)?;
    let path = shm.join("touch-memory");
    let chunk = vec![0x5au8; 8 << 20];
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&path)?;
        for _ in 0..bytes / chunk.len() as u64 {
            f.write_all(&chunk)?;
        }
        Ok(())
    })();
    std::fs::remove_file(&path)?;
    result?;
    say(&format!("touched {:.1} GB of memory once ({:.1}s)", bytes as f64 / 1e9, started.elapsed().as_secs_f64()));
    Ok(())
}

/// Where the initial sync's memory goes (issue 20): heaptrack over `backproc run --once` into a
/// store on disk, then the peak and its biggest consumers by call site.
fn heap_profile(o: &Opts, bp: &Path, port: u16) -> anyhow::Result<()> {
    let home = o.disk.join("backproc-heap");
    tools::new_home(&home, &tools::sync_config(), port, None, 1);
    let out = o.disk.join("heap");
    let status = std::process::Command::new("heaptrack")
        .arg("-o")
        .arg(&out)
        .arg(bp)
        .arg("--home")
        .arg(&home)
        .args(["run", "--once"])
        .stdout(std::process::Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "heaptrack failed");
    let keep =
        std::env::var_os("BENCH_HEAP_DATA").map(PathBuf::from).unwrap_or_else(|| "/tmp/backproc-bench-heap.zst".into());
    std::fs::copy(out.with_extension("zst"), &keep)?;
    let report = std::process::Command::new("heaptrack_print")
        .args(["-n", "12", "-s", "0", "-a", "0", "-t", "0", "-l", "0", "-f"])
        .arg(&keep)
        .output()?;
    anyhow::ensure!(report.status.success(), "heaptrack_print failed");
    println!("heap profile of `backproc run --once` (initial sync of {} messages onto disk):", o.messages);
    let text = String::from_utf8_lossy(&report.stdout);
    for l in text.lines().filter(|l| l.starts_with("peak ") || l.starts_with("total runtime")) {
        println!("{l}");
    }
    println!("biggest consumers at the peak (heaptrack_print's PEAK MEMORY CONSUMERS):");
    for l in text.lines().skip_while(|l| !l.starts_with("PEAK MEMORY CONSUMERS")).skip(1) {
        if l.starts_with("MOST ") || l.starts_with("total ") {
            break;
        }
        if !l.trim().is_empty() {
            println!("  {}", l.trim_end());
        }
    }
    println!("(heap data kept in {}: heaptrack_print -f it for call stacks)", keep.display());
    Ok(())
}

fn profile(o: &Opts, bp: &Path, port: u16) -> anyhow::Result<()> {
    let home = o.shm.join("backproc-profile");
    tools::new_home(&home, &tools::sync_config(), port, None, 1);
    let data = o.disk.join("perf.data");
    let status = std::process::Command::new("perf")
        .args(["record", "-e", "cpu-clock", "-F", "999", "-g", "-o"])
        .arg(&data)
        .arg("--")
        .arg(bp)
        .arg("--home")
        .arg(&home)
        .args(["run", "--once"])
        .status()?;
    anyhow::ensure!(status.success(), "perf record failed");
    let keep = std::env::var_os("BENCH_PERF_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/tmp/backproc-bench-perf.data".into());
    std::fs::copy(&data, &keep)?;
    let out = std::process::Command::new("perf")
        .args([
            "report",
            "--stdio",
            "--no-children",
            "--sort",
            "dso,symbol",
            "-g",
            "none",
            "--percent-limit",
            "0.5",
            "-i",
        ])
        .arg(&keep)
        .output()?;
    println!("perf profile of `backproc run --once` (initial sync of {} messages into tmpfs), self time:", o.messages);
    for l in
        String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).take(25)
    {
        // perf pads its unused columns with "-"
        println!("{}", l.trim_end().trim_end_matches(['-', ' ']));
    }
    println!("(perf data kept in {}: perf report -i it for call graphs)", keep.display());
    Ok(())
}
