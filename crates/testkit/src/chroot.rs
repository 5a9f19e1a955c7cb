//! Cached minimal Debian chroots for the IMAP servers that cannot be installed beside Dovecot,
//! and running commands inside them.
//!
//! Debian's `cyrus-imapd` and `courier-imap` both declare `Conflicts: imap-server` with
//! `dovecot-imapd`, so each lives in its own `debootstrap --variant=minbase` chroot. Building one
//! takes about a minute, so it happens once per machine, in a cache outside the clone
//! ([`cache_dir`]): into a temp dir beside its final place, under an `flock` (parallel test threads
//! and binaries build it once; the others wait), then renamed into place, which is atomic. The
//! final directory's name carries a hash of the recipe, so a changed recipe builds anew and a
//! half-built tree is never mistaken for a finished one.
//!
//! Commands run in a private mount namespace (`unshare --mount --propagation private`): the
//! chroot's `/dev` (a small tmpfs with the few device nodes bound in), `/proc` and any per-instance
//! bind mounts exist only for that process tree and vanish with it, so nothing leaks onto the
//! host and removing a chroot or instance directory from the host never descends into a mount.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::hostile::{hex, sha256};
use crate::proc::ChildGuard;
use crate::{find_program, is_root, read_lossy};

const SBIN: &[&str] = &["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// The Debian release inside every chroot: the server versions documented on `Cyrus` and
/// `Courier` are this release's.
const SUITE: &str = "bookworm";

/// Bump when the build steps in this file change in a way the recipes' text does not show, so
/// that machines with an old cache rebuild.
const BUILD_STEPS: u32 = 1;

/// A build that hangs (a stalled mirror) fails instead of blocking every test forever.
const BUILD_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// How long a chroot server may take to listen and greet: generous, because on 2 cores a start
/// may compete with a dozen other tests, and a ready server ends the wait at once.
pub(crate) const SERVER_TIMEOUT: Duration = Duration::from_secs(30);

/// What goes into one server's chroot. Every field is part of the stamp: change any and the next
/// start builds a new chroot.
pub(crate) struct Recipe {
    pub(crate) name: &'static str,
    pub(crate) packages: &'static [&'static str],
    /// Shell run inside the new chroot, as root, after the packages are installed.
    pub(crate) setup: &'static str,
}

/// Where chroots are kept: `$BACKPROC_FIXTURE_CACHE`, else `/var/cache/backproc-testkit` for
/// root, else `$HOME/.cache/backproc-testkit`. Outside the clone, so a fresh clone (as CI makes)
/// reuses them.
pub(crate) fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("BACKPROC_FIXTURE_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if is_root() {
        return PathBuf::from("/var/cache/backproc-testkit");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    home.join(".cache/backproc-testkit")
}

/// The root directory of `recipe`'s chroot, built first if this machine has none for this
/// version of the recipe.
pub(crate) fn ensure(recipe: &Recipe) -> anyhow::Result<PathBuf> {
    // Once a build failed in this process, later starts fail at once with the same text rather
    // than each paying for another failing build.
    static FAILED: Mutex<Vec<(&'static str, String)>> = Mutex::new(Vec::new());
    let failed = |name: &str| {
        let f = FAILED.lock().unwrap_or_else(|e| e.into_inner());
        f.iter().find(|(n, _)| *n == name).map(|(_, e)| e.clone())
    };
    if let Some(e) = failed(recipe.name) {
        bail!("{e}");
    }
    let result = (|| {
        if !is_root() {
            bail!("the {} chroot needs root (debootstrap, chroot, mount namespaces)", recipe.name);
        }
        let stamp = format!("{}packages {}\nsetup:\n{}\n", base_stamp(), recipe.packages.join(" "), recipe.setup);
        // The shared base is needed only to build a server's tree (and is kept for the next).
        ensure_tree(recipe.name, &stamp, |tmp, log| {
            let base = ensure_tree("base", &base_stamp(), build_base)?;
            build_server(recipe, &base, tmp, log)
        })
    })();
    if let Err(e) = &result {
        let mut f = FAILED.lock().unwrap_or_else(|e| e.into_inner());
        f.push((recipe.name, format!("{e:#}")));
    }
    result
}

fn base_stamp() -> String {
    format!("backproc-testkit chroot\nsteps {BUILD_STEPS}\nsuite {SUITE}\nvariant minbase\n")
}

/// Returns `CACHE/NAME-HASH`, building it with `build` (into a temp dir beside it) if missing.
fn ensure_tree(
    name: &str,
    stamp: &str,
    build: impl FnOnce(&Path, &File) -> anyhow::Result<()>,
) -> anyhow::Result<PathBuf> {
    let cache = cache_dir();
    let hash = &hex(&sha256(stamp.as_bytes()))[..12];
    let done = cache.join(format!("{name}-{hash}"));
    if done.is_dir() {
        return Ok(done);
    }
    std::fs::create_dir_all(&cache).with_context(|| format!("cannot create {}", cache.display()))?;
    let lock_path = cache.join(format!(".{name}.lock"));
    let lock_file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("cannot open {}", lock_path.display()))?;
    // Blocks while another thread or process builds; it then finds the tree done.
    let _lock = Flock::lock(lock_file, FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow!("cannot lock {}: {e}", lock_path.display()))?;
    if done.is_dir() {
        return Ok(done);
    }
    // Holding the lock, any leftover temp dir is from a build that died.
    for stale in siblings(&cache, name).into_iter().filter(|p| is_build_dir(p)) {
        remove_tree(&stale);
    }
    let tmp = cache.join(format!("{name}-{hash}.build-{}", std::process::id()));
    let log_path = cache.join(format!("{name}.build.log"));
    let log = File::create(&log_path).with_context(|| format!("cannot create {}", log_path.display()))?;
    let started = Instant::now();
    log::info!("building the {name} chroot in {} (once per machine)", tmp.display());
    let built = build(&tmp, &log).and_then(|()| {
        std::fs::write(tmp.join(".backproc-stamp"), stamp)?;
        std::fs::rename(&tmp, &done).with_context(|| format!("cannot rename {} into place", tmp.display()))
    });
    if let Err(e) = built {
        remove_tree(&tmp);
        let text = read_lossy(&log_path);
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(e.context(format!(
            "building the {name} chroot failed; the end of {}:\n{}",
            log_path.display(),
            tail.join("\n")
        )));
    }
    log::info!("built the {name} chroot in {:.0?}", started.elapsed());
    // Trees of older recipes, unless a live process still runs a server in one.
    for old in siblings(&cache, name).into_iter().filter(|p| *p != done && !is_build_dir(p)) {
        if !has_live_instances(&old) {
            remove_tree(&old);
        }
    }
    Ok(done)
}

/// `CACHE/NAME-<12 hex>` and `CACHE/NAME-<12 hex>.build-<pid>` entries.
fn siblings(cache: &Path, name: &str) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(cache) else { return Vec::new() };
    rd.flatten()
        .filter(|e| {
            let n = e.file_name();
            let Some(rest) = n.to_str().and_then(|n| n.strip_prefix(name)).and_then(|r| r.strip_prefix('-')) else {
                return false;
            };
            let hash = rest.split('.').next().unwrap_or("");
            hash.len() == 12 && hash.bytes().all(|b| b.is_ascii_hexdigit())
        })
        .map(|e| e.path())
        .collect()
}

/// Removes a chroot tree, unless something is mounted inside it: deleting through a mount
/// (say a bind of the host's /dev) would delete the host's files.
fn remove_tree(path: &Path) {
    let mounted = read_lossy(Path::new("/proc/self/mountinfo"))
        .lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|point| Path::new(point).starts_with(path)));
    if mounted {
        log::warn!("not removing {}: something is mounted inside it", path.display());
        return;
    }
    let _ = std::fs::remove_dir_all(path);
}

fn is_build_dir(p: &Path) -> bool {
    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.contains(".build-"))
}

fn build_base(tmp: &Path, log: &File) -> anyhow::Result<()> {
    let debootstrap = find_program("debootstrap", SBIN).ok_or_else(|| {
        anyhow!("debootstrap not found: install it (apt-get install debootstrap; scripts/lib.sh does)")
    })?;
    let mirror = debian_mirror();
    writeln!(&*log, "debootstrap --variant=minbase {SUITE} {} {mirror}", tmp.display())?;
    // debootstrap mounts /proc, /sys and (in a container) host device nodes inside the target
    // and unmounts them only when it ends normally: in a private mount namespace they cannot
    // outlive a killed build, so removing its leftovers never reaches the host's /dev.
    let unshare = find_program("unshare", SBIN).ok_or_else(|| anyhow!("unshare not found: install util-linux"))?;
    let mut cmd = Command::new(unshare);
    cmd.args(["--mount", "--propagation", "private", "--"]).arg(debootstrap);
    cmd.arg("--variant=minbase").arg(SUITE).arg(tmp).arg(&mirror);
    run_logged(&mut cmd, log, "debootstrap")?;
    // Package installs must not start daemons; our tests start private instances.
    let policy = tmp.join("usr/sbin/policy-rc.d");
    std::fs::write(&policy, "#!/bin/sh\nexit 101\n")?;
    std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o755))?;
    // Documentation and translations are a third of an installed server and never read here.
    std::fs::write(
        tmp.join("etc/dpkg/dpkg.cfg.d/01-backproc-nodoc"),
        "path-exclude=/usr/share/doc/*\npath-exclude=/usr/share/man/*\npath-exclude=/usr/share/info/*\n\
         path-exclude=/usr/share/locale/*\n",
    )?;
    for dir in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        clear_files(&tmp.join(dir));
    }
    Ok(())
}

fn build_server(recipe: &Recipe, base: &Path, tmp: &Path, log: &File) -> anyhow::Result<()> {
    // A copy of the shared base saves a debootstrap per server.
    let mut cp = Command::new("cp");
    cp.arg("-a").arg("--reflink=auto").arg(base).arg(tmp);
    run_logged(&mut cp, log, "cp")?;
    // The base may be older than the host's current resolver settings.
    if let Ok(resolv) = std::fs::read("/etc/resolv.conf") {
        let _ = std::fs::remove_file(tmp.join("etc/resolv.conf"));
        std::fs::write(tmp.join("etc/resolv.conf"), resolv)?;
    }
    let script = format!(
        "set -e\nexport DEBIAN_FRONTEND=noninteractive\napt-get update -q\n\
         apt-get install -y -q --no-install-recommends {}\napt-get clean\nrm -rf /var/lib/apt/lists/*\n{}\n",
        recipe.packages.join(" "),
        recipe.setup
    );
    writeln!(&*log, "in the chroot:\n{script}")?;
    let mut cmd = jail_command(tmp, &script, &[], None, None)?;
    run_logged(&mut cmd, log, "apt-get in the chroot")
}

/// Removes the files (not subdirectories) directly in `dir`.
fn clear_files(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_file()) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// `$BACKPROC_DEBIAN_MIRROR`, else the Debian mirror apt already uses here (a `bookworm` entry
/// of its sources), else deb.debian.org.
fn debian_mirror() -> String {
    if let Some(m) = std::env::var("BACKPROC_DEBIAN_MIRROR").ok().filter(|m| !m.is_empty()) {
        return m;
    }
    let mut texts = vec![read_lossy(Path::new("/etc/apt/sources.list"))];
    let mut files: Vec<PathBuf> = std::fs::read_dir("/etc/apt/sources.list.d")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sources" || x == "list"))
        .collect();
    files.sort();
    texts.extend(files.iter().map(|p| read_lossy(p)));
    texts.iter().find_map(|t| mirror_in(t, SUITE)).unwrap_or_else(|| "http://deb.debian.org/debian".to_string())
}

/// The URI of the first `deb` source for `suite` in a one-line or deb822 sources text.
fn mirror_in(text: &str, suite: &str) -> Option<String> {
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().filter(|w| !w.starts_with('[')).collect();
        if let ["deb", uri, s, ..] = words.as_slice()
            && *s == suite
        {
            return Some(uri.to_string());
        }
    }
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
        };
        let deb = field("Types").is_some_and(|t| t.split_whitespace().any(|t| t == "deb"));
        let has_suite = field("Suites").is_some_and(|s| s.split_whitespace().any(|s| s == suite));
        if deb
            && has_suite
            && let Some(uri) = field("URIs").and_then(|u| u.split_whitespace().next().map(str::to_string))
        {
            return Some(uri);
        }
    }
    None
}

/// Runs `cmd` to completion with its output appended to `log`; `Err` on failure or timeout.
fn run_logged(cmd: &mut Command, log: &File, what: &str) -> anyhow::Result<()> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log.try_clone()?)
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot run {what}"))?;
    let deadline = Instant::now() + BUILD_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!("{what} failed with {status}");
            }
            return Ok(());
        }
        if Instant::now() >= deadline {
            let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
            bail!("{what} did not finish within {BUILD_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sets up the private mount namespace, then execs the script in the chroot. Arguments: the
/// chroot, a file for the leader's pid (or ""), the chroot path `/dev/log` should point to (or
/// ""), chroot(8), the script, then pairs of (host dir, dir inside) to bind.
const WRAPPER: &str = r#"set -e
R=$1 PIDFILE=$2 LOG=$3 CHROOT=$4 SCRIPT=$5
shift 5
# The exec chain keeps this pid: it is the server's, and its process group's.
[ -z "$PIDFILE" ] || echo $$ > "$PIDFILE"
mount -t tmpfs -o size=1m,mode=0755 backproc-dev "$R/dev"
for n in null zero full random urandom tty; do
  if [ -c "/dev/$n" ]; then : > "$R/dev/$n"; mount --bind "/dev/$n" "$R/dev/$n"; fi
done
ln -s /proc/self/fd "$R/dev/fd"
ln -s /proc/self/fd/0 "$R/dev/stdin"
ln -s /proc/self/fd/1 "$R/dev/stdout"
ln -s /proc/self/fd/2 "$R/dev/stderr"
mkdir "$R/dev/pts" "$R/dev/shm"
[ -z "$LOG" ] || ln -s "$LOG" "$R/dev/log"
mount -t proc proc "$R/proc"
while [ $# -ge 2 ]; do mount --bind "$1" "$R$2"; shift 2; done
exec "$CHROOT" "$R" /bin/sh -c "$SCRIPT"
"#;

/// A command that runs `script` with `/bin/sh` inside the chroot at `root`, in its own mount
/// namespace, with `binds` (host dir, absolute dir inside) mounted, `/dev/log` pointing at the
/// chroot path `syslog` if given, and the leader's pid written to `pidfile` if given.
pub(crate) fn jail_command(
    root: &Path,
    script: &str,
    binds: &[(&Path, &str)],
    syslog: Option<&str>,
    pidfile: Option<&Path>,
) -> anyhow::Result<Command> {
    let unshare = find_program("unshare", SBIN).ok_or_else(|| anyhow!("unshare not found: install util-linux"))?;
    let chroot = find_program("chroot", SBIN).ok_or_else(|| anyhow!("chroot not found: install coreutils"))?;
    let mut cmd = Command::new(unshare);
    cmd.args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c", WRAPPER, "backproc-jail"])
        .arg(root)
        .arg(pidfile.map(Path::as_os_str).unwrap_or_default())
        .arg(syslog.unwrap_or(""))
        .arg(chroot)
        .arg(script);
    for (host, inside) in binds {
        cmd.arg(host).arg(inside);
    }
    // The chroot's programs get a plain environment, not the test runner's.
    cmd.env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LANG", "C")
        .env("HOME", "/root");
    for proxy in ["http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"] {
        if let Some(v) = std::env::var_os(proxy) {
            cmd.env(proxy, v);
        }
    }
    Ok(cmd)
}

/// Runs `script` in the chroot to completion (see [`jail_command`]), feeding `stdin`; its
/// stdout, or `Err` with its output.
pub(crate) fn jail_run(root: &Path, script: &str, binds: &[(&Path, &str)], stdin: &[u8]) -> anyhow::Result<String> {
    let mut cmd = jail_command(root, script, binds, None, None)?;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run a command in the chroot")?;
    let mut input = child.stdin.take().context("no stdin")?;
    input.write_all(stdin)?;
    drop(input);
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "in the chroot {}, `{}` failed with {}: {}{}",
            root.display(),
            script.trim(),
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

/// A per-instance directory inside a chroot (`/inst/p<pid>-<random>`), removed on drop. Making
/// one also removes those whose process died without cleaning up.
pub(crate) struct InstanceDir {
    dir: tempfile::TempDir,
    inside: String,
}

impl InstanceDir {
    pub(crate) fn new(root: &Path) -> anyhow::Result<InstanceDir> {
        let parent = root.join("inst");
        std::fs::create_dir_all(&parent)?;
        std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o755))?;
        remove_dead_instances(&parent);
        let dir = tempfile::Builder::new().prefix(&format!("p{}-", std::process::id())).tempdir_in(&parent)?;
        // The servers' unprivileged processes (cyrus, mail) must reach their files.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let name = dir.path().file_name().and_then(|n| n.to_str()).context("instance dir name")?.to_string();
        Ok(InstanceDir { dir, inside: format!("/inst/{name}") })
    }

    /// The directory as the host sees it.
    pub(crate) fn host(&self) -> &Path {
        self.dir.path()
    }

    /// The directory as the chroot sees it (plain ASCII, safe in config files and scripts).
    pub(crate) fn inside(&self) -> &str {
        &self.inside
    }
}

fn instance_pid(name: &str) -> Option<u32> {
    name.strip_prefix('p')?.split('-').next()?.parse().ok()
}

fn remove_dead_instances(parent: &Path) {
    for e in std::fs::read_dir(parent).into_iter().flatten().flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(instance_pid) else { continue };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            remove_tree(&e.path());
        }
    }
}

fn has_live_instances(root: &Path) -> bool {
    std::fs::read_dir(root.join("inst")).into_iter().flatten().flatten().any(|e| {
        let name = e.file_name();
        name.to_str().and_then(instance_pid).is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
    })
}

/// Receives a chroot server's syslog datagrams (Cyrus logs nowhere else) on a socket the
/// chroot's `/dev/log` points to, keeping the last 256 KiB for error messages.
pub(crate) struct Syslog {
    text: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
}

impl Syslog {
    pub(crate) fn listen(path: &Path) -> anyhow::Result<Syslog> {
        let sock = UnixDatagram::bind(path).with_context(|| format!("cannot bind {}", path.display()))?;
        // The server's unprivileged processes log too.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
        sock.set_read_timeout(Some(Duration::from_millis(200)))?;
        let text = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (t, s) = (text.clone(), stop.clone());
        std::thread::Builder::new().name("backproc-syslog".into()).spawn(move || {
            let mut buf = vec![0u8; 16 << 10];
            while !s.load(Ordering::Relaxed) {
                let Ok(n) = sock.recv(&mut buf) else { continue };
                let mut t = t.lock().unwrap_or_else(|e| e.into_inner());
                t.extend_from_slice(&buf[..n]);
                t.push(b'\n');
                if t.len() > 256 << 10 {
                    let cut = t.len() - (192 << 10);
                    t.drain(..cut);
                }
            }
        })?;
        Ok(Syslog { text, stop })
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.text.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

impl Drop for Syslog {
    fn drop(&mut self) {
        // The thread notices within its read timeout; nobody needs to wait for it.
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Who holds a listening TCP socket on a port.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Listener {
    Nobody,
    /// The process whose pid was given.
    Ours,
    /// Another process: the port was taken between `free_port()` and the server's bind.
    Other,
}

/// Looks the port up in /proc/net/tcp{,6} and the socket inodes in `/proc/PID/fd`: a greeting
/// alone cannot tell our server from another process that took the port first.
pub(crate) fn listener(pid: u32, port: u16) -> Listener {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = read_lossy(Path::new(table));
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else { continue };
            let p = local.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            if *state == "0A" && p == Some(port) {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    if inodes.is_empty() {
        return Listener::Nobody;
    }
    let ours = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| std::fs::read_link(e.path()).is_ok_and(|l| inodes.iter().any(|i| l.as_os_str() == i.as_str())));
    if ours { Listener::Ours } else { Listener::Other }
}

/// Waits until the server whose leader wrote its pid to `pidfile` listens on `port` itself and
/// `ready()` holds, then until the port greets. `Ok(false)`: another process has the port.
pub(crate) fn wait_listening(
    child: &mut ChildGuard,
    pidfile: &Path,
    port: u16,
    mut ready: impl FnMut() -> bool,
) -> anyhow::Result<bool> {
    let deadline = Instant::now() + SERVER_TIMEOUT;
    loop {
        child.check_alive()?;
        let pid = std::fs::read_to_string(pidfile).ok().and_then(|p| p.trim().parse::<u32>().ok());
        match pid.map(|pid| listener(pid, port)) {
            Some(Listener::Ours) if ready() => break,
            Some(Listener::Other) => return Ok(false),
            _ => {}
        }
        if Instant::now() >= deadline {
            bail!("not listening on 127.0.0.1:{port} after {SERVER_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    crate::wait_ready(port, SERVER_TIMEOUT, true, || child.check_alive())?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_from_one_line_and_deb822_sources() {
        let one = "# comment\ndeb [arch=amd64] http://mirror.example/debian bookworm main\n";
        assert_eq!(mirror_in(one, "bookworm").as_deref(), Some("http://mirror.example/debian"));
        let deb822 = "Types: deb\nURIs: http://a.example/debian-security\nSuites: bookworm-security\n\n\
                      Types: deb\nURIs: http://b.example/debian\nSuites: bookworm bookworm-updates\n";
        assert_eq!(mirror_in(deb822, "bookworm").as_deref(), Some("http://b.example/debian"));
        assert_eq!(mirror_in("deb http://c.example/debian trixie main\n", "bookworm"), None);
    }

    #[test]
    fn instance_names_carry_their_pid() {
        assert_eq!(instance_pid("p1234-abcDEF"), Some(1234));
        assert_eq!(instance_pid("x1234-abc"), None);
        assert_eq!(instance_pid("pabc-1"), None);
    }

    #[test]
    fn a_port_held_by_this_process_is_ours() {
        let l = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        assert_eq!(listener(std::process::id(), port), Listener::Ours);
        assert_eq!(listener(1, port), Listener::Other);
        drop(l);
        assert_eq!(listener(std::process::id(), port), Listener::Nobody);
    }
}
