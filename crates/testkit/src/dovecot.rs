//! A private Dovecot 2.3 (IMAP + IMAPS, passwd-file users, Maildir) in a temp dir.

use std::io::Write;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};

use crate::proc::ChildGuard;
use crate::rawimap::{RawImap, quote};
use crate::{HOST, START_TIMEOUT, find_program, is_root, mutf7_encode, read_lossy};

const SBIN: &[&str] = &["/usr/sbin", "/usr/local/sbin", "/sbin"];

/// A running Dovecot on 127.0.0.1 with a plain IMAP listener (offering STARTTLS) and an IMAPS
/// listener, both using a self-signed certificate for `127.0.0.1`/`localhost`.
///
/// Mailboxes: Maildir under `dir()/home/<login>`, hierarchy separator `/`, special-use folders
/// Sent, Trash, Drafts, Junk created on login. Folder names given to the helpers are UTF-8 and
/// are sent as modified UTF-7.
pub struct Dovecot {
    child: ChildGuard,
    dir: tempfile::TempDir,
    imap_port: u16,
    imaps_port: u16,
    cert: PathBuf,
    /// (uid, gid) owning the mail; `nobody` when running as root.
    owner: (u32, u32),
    passwd_lock: Mutex<()>,
}

/// Settings of a Dovecot started with [`Dovecot::start_with`]; the default is what
/// [`Dovecot::start`] runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DovecotOptions {
    /// `service imap { process_limit }`: at most this many imap processes, and each logged-in
    /// connection has its own, so at most this many connections past login at once. Past it
    /// Dovecot logs "process_limit (N) reached, client connections are being dropped" and new
    /// clients lose their connection at login. Unset: `default_process_limit` (200).
    pub process_limit: Option<u32>,
    /// `service imap { client_limit }`: connections one imap process serves (1 unless set);
    /// with `process_limit`, thousands of connections take tens of processes, not thousands.
    pub client_limit: Option<u32>,
    /// `service imap-login { client_limit }` in high-performance mode (`service_count = 0`):
    /// connections one login process serves, TLS ones included for their whole life (Dovecot
    /// proxies TLS in the login process); unset, one process per connection while it logs in
    /// and, for TLS, as long as it lasts.
    pub login_client_limit: Option<u32>,
    /// `mail_max_userip_connections`: connections of one user from one IP at once (100 unless
    /// set); past it the new connection gets `* BYE Maximum number of connections from
    /// user+IP exceeded` after its login.
    pub mail_max_userip_connections: Option<u32>,
    /// `imap_capability`: the capabilities offered after login instead of Dovecot's own (to
    /// hide one, e.g. QRESYNC, and test the path of a server without it).
    pub imap_capability: Option<String>,
    /// Enables the XOAUTH2 and OAUTHBEARER mechanisms (RFC 7628) beside PLAIN and LOGIN: their
    /// bearer tokens are checked by POSTing `token=...` to this RFC 7662 introspection URL
    /// (e.g. [`TokenServer::introspection_url`](crate::TokenServer::introspection_url)) on
    /// every login, and the answer's `email` must be the login name. Passwords keep working
    /// for PLAIN and LOGIN.
    pub oauth2_introspection_url: Option<String>,
    /// Offers COMPRESS=DEFLATE (RFC 4978) with the `imap_zlib` plugin, as Cyrus and Gmail
    /// offer it.
    pub compress: bool,
}

impl Dovecot {
    /// The master process's id, which is also its process group's (every imap and login
    /// process of this instance is in it): for a bench's count of the server's CPU.
    pub fn pid(&self) -> Option<u32> {
        self.child.pid()
    }

    /// Starts a new, independent instance on two free ports (retrying on a port clash).
    pub fn start() -> anyhow::Result<Dovecot> {
        Dovecot::start_with(DovecotOptions::default())
    }

    /// [`start`](Self::start) with non-default limits.
    pub fn start_with(opts: DovecotOptions) -> anyhow::Result<Dovecot> {
        let bin = find_program("dovecot", SBIN).ok_or_else(|| anyhow!("dovecot not found: install dovecot-imapd"))?;
        find_program("doveadm", &["/usr/bin"]).ok_or_else(|| anyhow!("doveadm not found: install dovecot-core"))?;
        let (cert_pem, key_pem) = test_cert()?;
        let dir = tempfile::Builder::new().prefix("backproc-dovecot-").tempdir()?;
        // Dovecot's unprivileged processes must read the passwd file and reach the homes.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let cert = dir.path().join("cert.pem");
        std::fs::write(&cert, cert_pem)?;
        let key = dir.path().join("key.pem");
        std::fs::write(&key, key_pem)?;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
        let passwd = dir.path().join("passwd");
        std::fs::write(&passwd, "")?;
        std::fs::set_permissions(&passwd, std::fs::Permissions::from_mode(0o644))?;
        std::fs::create_dir(dir.path().join("home"))?;
        let ids = Ids::detect()?;
        if let Some(url) = &opts.oauth2_introspection_url {
            std::fs::write(dir.path().join("oauth2.conf.ext"), oauth2_args(url))?;
        }

        let mut last = anyhow!("dovecot did not start");
        for _attempt in 0..5 {
            let (imap_port, imaps_port) = (crate::free_port(), crate::free_port());
            if imap_port == imaps_port {
                continue;
            }
            let conf = config(dir.path(), &ids, imap_port, imaps_port, &opts);
            std::fs::write(dir.path().join("dovecot.conf"), conf)?;
            let log = dir.path().join("dovecot.log");
            let _ = std::fs::remove_file(&log);
            let mut cmd = Command::new(&bin);
            cmd.arg("-F").arg("-c").arg(dir.path().join("dovecot.conf"));
            let mut child = ChildGuard::spawn("dovecot", &mut cmd, &dir.path().join("stderr"))?;
            let ready = crate::wait_ready(imap_port, START_TIMEOUT, true, || child.check_alive())
                .and_then(|_| crate::wait_ready(imaps_port, START_TIMEOUT, false, || Ok(())));
            match ready {
                Ok(_) => {
                    return Ok(Dovecot {
                        child,
                        imap_port,
                        imaps_port,
                        cert,
                        owner: ids.mail_owner,
                        passwd_lock: Mutex::new(()),
                        dir,
                    });
                }
                Err(e) => {
                    child.stop();
                    let text = format!("{}{}", read_lossy(&dir.path().join("stderr")), read_lossy(&log));
                    last = e.context(format!("dovecot failed to start; its output:\n{text}"));
                    if !text.contains("Address already in use") {
                        break;
                    }
                }
            }
        }
        Err(last)
    }

    /// Adds a user (password in plain text); Dovecot rereads the passwd file on the next login.
    pub fn add_user(&self, login: &str, password: &str) -> anyhow::Result<()> {
        let bad = |v: &str| v.contains([':', '\n', '\r']);
        if login.is_empty() || bad(login) || bad(password) || login.contains('/') || login.starts_with('.') {
            bail!("bad test user {login:?}: no ':', '/', newlines or leading '.' allowed");
        }
        let _guard = self.passwd_lock.lock().unwrap_or_else(|e| e.into_inner());
        let home = self.dir.path().join("home").join(login);
        std::fs::create_dir_all(&home)?;
        if is_root() {
            let (uid, gid) = self.owner;
            nix::unistd::chown(&home, Some(uid.into()), Some(gid.into()))?;
        }
        let (uid, gid) = self.owner;
        let line = format!("{login}:{{PLAIN}}{password}:{uid}:{gid}::{}::\n", home.display());
        let mut f = std::fs::OpenOptions::new().append(true).open(self.dir.path().join("passwd"))?;
        f.write_all(line.as_bytes())?;
        Ok(())
    }

    /// Creates empty folders (plain ASCII names without the separator) straight in the
    /// user's Maildir (`.NAME/{cur,new,tmp}`, the Maildir++ layout Dovecot reads): thousands in
    /// a moment, where `doveadm mailbox create` or CREATE rescan the folder list for each one
    /// (10,000 took about 20 minutes here). Dovecot sees them at its next listing.
    pub fn create_folders_on_disk(&self, login: &str, names: &[String]) -> anyhow::Result<()> {
        let maildir = self.dir.path().join("home").join(login).join("Maildir");
        let own = |p: &Path| -> anyhow::Result<()> {
            if is_root() {
                let (uid, gid) = self.owner;
                nix::unistd::chown(p, Some(uid.into()), Some(gid.into()))?;
            }
            Ok(())
        };
        for dir in [maildir.clone(), maildir.join("cur"), maildir.join("new"), maildir.join("tmp")] {
            std::fs::create_dir_all(&dir)?;
            own(&dir)?;
        }
        for name in names {
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
                bail!("create_folders_on_disk: {name:?} is not a plain ASCII name");
            }
            let f = maildir.join(format!(".{name}"));
            for dir in [f.clone(), f.join("cur"), f.join("new"), f.join("tmp")] {
                std::fs::create_dir_all(&dir)?;
                own(&dir)?;
            }
        }
        Ok(())
    }

    pub fn host(&self) -> &str {
        HOST
    }
    pub fn imap_port(&self) -> u16 {
        self.imap_port
    }
    pub fn imaps_port(&self) -> u16 {
        self.imaps_port
    }
    /// PEM of the self-signed server certificate (CN and SAN 127.0.0.1, SAN localhost).
    pub fn ca_cert_path(&self) -> &Path {
        &self.cert
    }
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A logged-in session over plain TCP.
    pub fn session(&self, login: &str, password: &str) -> anyhow::Result<imap::Session<TcpStream>> {
        let tcp = TcpStream::connect((HOST, self.imap_port))?;
        tcp.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut client = imap::Client::new(tcp);
        client.read_greeting()?;
        client.login(login, password).map_err(|(e, _)| anyhow!("IMAP login of {login} failed: {e}"))
    }

    pub fn create_folder(&self, login: &str, password: &str, utf8_name: &str) -> anyhow::Result<()> {
        let mut s = self.session(login, password)?;
        s.create(mutf7_encode(utf8_name)).with_context(|| format!("cannot create folder {utf8_name:?}"))?;
        let _ = s.subscribe(mutf7_encode(utf8_name));
        let _ = s.logout();
        Ok(())
    }

    pub fn delete_folder(&self, login: &str, password: &str, utf8_name: &str) -> anyhow::Result<()> {
        let mut s = self.session(login, password)?;
        let _ = s.unsubscribe(mutf7_encode(utf8_name));
        s.delete(mutf7_encode(utf8_name)).with_context(|| format!("cannot delete folder {utf8_name:?}"))?;
        let _ = s.logout();
        Ok(())
    }

    /// Appends one message with the given flags (e.g. `\Seen`, `$Forwarded`) and returns its UID
    /// (from APPENDUID, RFC 4315). Creates the folder if it is missing.
    pub fn append(
        &self,
        login: &str,
        password: &str,
        utf8_folder: &str,
        raw: &[u8],
        flags: &[&str],
    ) -> anyhow::Result<u32> {
        let mut s = self.session(login, password)?;
        let folder = mutf7_encode(utf8_folder);
        if !folder.eq_ignore_ascii_case("INBOX") {
            let _ = s.create(&folder);
        }
        let appended = s
            .append(&folder, raw)
            .flags(flags.iter().map(|f| imap::types::Flag::from(*f)))
            .finish()
            .with_context(|| format!("cannot append to {utf8_folder:?}"))?;
        let uid = match appended.uids.as_deref() {
            Some([imap_proto::UidSetMember::Uid(u), ..]) => *u,
            Some([imap_proto::UidSetMember::UidRange(r), ..]) => *r.start(),
            _ => {
                s.examine(&folder)?;
                s.uid_search("ALL")?.into_iter().max().unwrap_or(0)
            }
        };
        let _ = s.logout();
        Ok(uid)
    }

    /// Loads many messages fast: one connection, MULTIAPPEND (RFC 3502) batches with
    /// non-synchronizing literals (LITERAL+, RFC 7888), so there is no round trip per message.
    /// Creates the folder if it is missing.
    pub fn populate(&self, login: &str, password: &str, utf8_folder: &str, msgs: &[Vec<u8>]) -> anyhow::Result<()> {
        let mut raw = RawImap::connect(self.imap_port)?;
        raw.command(&format!("LOGIN {} {}", quote(login), quote(password)))?;
        let folder = quote(&mutf7_encode(utf8_folder));
        if !utf8_folder.eq_ignore_ascii_case("INBOX") {
            let _ = raw.command(&format!("CREATE {folder}"));
        }
        const BATCH_BYTES: usize = 16 << 20;
        let mut rest = msgs;
        while !rest.is_empty() {
            let mut size = 0;
            let n = rest
                .iter()
                .take_while(|m| {
                    size += m.len();
                    size <= BATCH_BYTES
                })
                .count()
                .max(1);
            let (batch, tail) = rest.split_at(n);
            rest = tail;
            let mut cmd = Vec::with_capacity(size + 64 * n);
            cmd.extend_from_slice(format!("APPEND {folder}").as_bytes());
            for m in batch {
                cmd.extend_from_slice(format!(" {{{}+}}\r\n", m.len()).as_bytes());
                cmd.extend_from_slice(m);
            }
            raw.command_bytes(&cmd).with_context(|| format!("populate {utf8_folder:?}"))?;
        }
        let _ = raw.command("LOGOUT");
        Ok(())
    }

    /// Runs `doveadm -c DIR/dovecot.conf ARGS...` against this instance.
    pub fn doveadm(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        let bin =
            find_program("doveadm", &["/usr/bin"]).ok_or_else(|| anyhow!("doveadm not found: install dovecot-core"))?;
        Command::new(bin)
            .arg("-c")
            .arg(self.dir.path().join("dovecot.conf"))
            .args(args)
            .output()
            .context("cannot run doveadm")
    }

    /// Dovecot's log (and its stderr), for debugging a failing test.
    pub fn log_text(&self) -> String {
        format!("{}{}", read_lossy(&self.dir.path().join("stderr")), read_lossy(&self.dir.path().join("dovecot.log")))
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        // Stop the server before the temp dir goes away.
        self.child.stop();
    }
}

/// Who runs what: as root, Dovecot's own users and mail owned by `nobody`; otherwise all the
/// current user.
struct Ids {
    internal_user: String,
    internal_group: String,
    login_user: String,
    mail_owner: (u32, u32),
    root: bool,
}

impl Ids {
    fn detect() -> anyhow::Result<Ids> {
        use nix::unistd::{Gid, Group, Uid, User};
        if is_root() {
            let nobody = User::from_name("nobody")?;
            let owner = nobody.map_or((65534, 65534), |u| (u.uid.as_raw(), u.gid.as_raw()));
            return Ok(Ids {
                internal_user: "dovecot".into(),
                internal_group: "dovecot".into(),
                login_user: "dovenull".into(),
                mail_owner: owner,
                root: true,
            });
        }
        let uid = Uid::current();
        let gid = Gid::current();
        let user =
            User::from_uid(uid)?.ok_or_else(|| anyhow!("uid {uid} has no passwd entry (dovecot needs a name)"))?;
        let group = Group::from_gid(gid)?.map_or_else(|| user.name.clone(), |g| g.name);
        Ok(Ids {
            internal_user: user.name.clone(),
            internal_group: group,
            login_user: user.name,
            mail_owner: (uid.as_raw(), gid.as_raw()),
            root: false,
        })
    }
}

fn config(dir: &Path, ids: &Ids, imap_port: u16, imaps_port: u16, opts: &DovecotOptions) -> String {
    let d = dir.display();
    let userip = opts.mail_max_userip_connections.unwrap_or(100);
    let imap_service = match (opts.process_limit, opts.client_limit) {
        (None, None) => String::new(),
        (p, c) => format!(
            "service imap {{\n{}{}}}\n",
            p.map(|n| format!("  process_limit = {n}\n")).unwrap_or_default(),
            // a process serves more than one connection only when it is not one-shot
            c.map(|n| format!("  client_limit = {n}\n  service_count = 0\n")).unwrap_or_default()
        ),
    };
    let capability = opts.imap_capability.as_ref().map(|c| format!("imap_capability = {c}\n")).unwrap_or_default();
    let (mechanisms, password_mechanisms, oauth2_passdb) = match opts.oauth2_introspection_url {
        // Each passdb for its own mechanisms only: Dovecot 2.3 checks a bearer token through
        // the passdb chain like a password, so without them a token would also pass as a
        // LOGIN password (tried here: it does).
        Some(_) => (
            "plain login xoauth2 oauthbearer",
            "  mechanisms = plain login\n",
            format!(
                "passdb {{\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n  args = {d}/oauth2.conf.ext\n}}\n"
            ),
        ),
        None => ("plain login", "", String::new()),
    };
    // Unprivileged, Dovecot cannot chroot its login, anvil and ipc processes.
    let chroot = if ids.root { "" } else { "  chroot =\n" };
    format!(
        r#"# generated by backproc-testkit
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
info_log_path = {d}/dovecot.log
listen = 127.0.0.1
protocols = imap
default_internal_user = {iu}
default_internal_group = {ig}
default_login_user = {lu}
first_valid_uid = 1
first_valid_gid = 1
disable_plaintext_auth = no
auth_mechanisms = {mechanisms}
auth_verbose = yes
# Fast tests: no 2 s delay after a failed login, and no growing penalty for 127.0.0.1 after
# failures, which would delay every later login of the test (Dovecot's documented switch: an
# unusable anvil-auth-penalty socket).
auth_failure_delay = 0
service anvil {{
{chroot}  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
ssl = yes
ssl_cert = <{d}/cert.pem
ssl_key = <{d}/key.pem
mail_location = maildir:~/Maildir
mail_max_userip_connections = {userip}
{capability}default_process_limit = 200
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/passwd
{password_mechanisms}}}
{oauth2_passdb}userdb {{
  driver = passwd-file
  args = username_format=%u {d}/passwd
}}
namespace inbox {{
  inbox = yes
  separator = /
  mailbox Sent {{
    special_use = \Sent
    auto = subscribe
  }}
  mailbox Trash {{
    special_use = \Trash
    auto = subscribe
  }}
  mailbox Drafts {{
    special_use = \Drafts
    auto = subscribe
  }}
  mailbox Junk {{
    special_use = \Junk
    auto = subscribe
  }}
}}
service ipc {{
{chroot}}}
service imap-login {{
{chroot}{login}  inet_listener imap {{
    address = 127.0.0.1
    port = {imap_port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps_port}
    ssl = yes
  }}
}}
{imap_service}{compress}"#,
        compress = if opts.compress { "protocol imap {\n  mail_plugins = $mail_plugins imap_zlib\n}\n" } else { "" },
        login = opts
            .login_client_limit
            .map(|n| format!("  service_count = 0\n  client_limit = {n}\n  process_limit = 16\n"))
            .unwrap_or_default(),
        iu = ids.internal_user,
        ig = ids.internal_group,
        lu = ids.login_user,
    )
}

/// The oauth2 passdb's settings file: every bearer token is checked at the introspection URL
/// with `POST token=...` (RFC 7662), which must answer `"active":true` and the login name as
/// `email`. Without `tokeninfo_url` Dovecot goes straight to introspection.
fn oauth2_args(introspection_url: &str) -> String {
    format!(
        "introspection_mode = post\n\
         introspection_url = {introspection_url}\n\
         username_attribute = email\n\
         active_attribute = active\n\
         active_value = true\n"
    )
}

/// The self-signed certificate and key (PEM), generated once per process: RSA key generation
/// is slow and many tests start their own Dovecot.
fn test_cert() -> anyhow::Result<(String, String)> {
    static CERT: OnceLock<Result<(String, String), String>> = OnceLock::new();
    CERT.get_or_init(|| make_cert().map_err(|e| format!("{e:#}"))).clone().map_err(|e| anyhow!("{e}"))
}

fn make_cert() -> anyhow::Result<(String, String)> {
    let openssl =
        find_program("openssl", &["/usr/bin"]).ok_or_else(|| anyhow!("openssl not found: install openssl"))?;
    let tmp = tempfile::Builder::new().prefix("backproc-cert-").tempdir()?;
    let (cert, key) = (tmp.path().join("cert.pem"), tmp.path().join("key.pem"));
    let out = Command::new(openssl)
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650"])
        .args(["-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .context("cannot run openssl")?;
    if !out.status.success() {
        bail!("openssl req failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok((std::fs::read_to_string(cert)?, std::fs::read_to_string(key)?))
}
