//! A private Cyrus IMAP 3.6 (Debian bookworm's `cyrus-imapd`) in a cached Debian chroot, on a
//! free loopback port, with its own config, spool and sasldb per instance.

use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::{Context, anyhow, bail};

use crate::admin::ImapAdmin;
use crate::chroot::{self, InstanceDir, Recipe, Syslog};
use crate::proc::ChildGuard;
use crate::{HOST, read_lossy};

const RECIPE: Recipe = Recipe { name: "cyrus", packages: &["cyrus-imapd", "sasl2-bin"], setup: "mkdir -p /inst" };

/// The SASL realm users live in: Cyrus looks logins up in the realm named by `servername`.
const REALM: &str = "localhost";

/// The Cyrus administrator (`admins:`), who creates each user's mailbox.
const ADMIN: &str = "cyrus";

/// A running Cyrus IMAP 3.6 on 127.0.0.1 (plain IMAP, LOGIN and AUTH=PLAIN allowed).
///
/// [`Cyrus::start`] uses Cyrus 3's own defaults, `altnamespace: yes` and `unixhierarchysep:
/// yes`: hierarchy separator `/`, personal namespace prefix `""` (folders beside INBOX, as in
/// Dovecot here), other users under `Other Users/`, shared folders under `Shared Folders/`; a
/// `.` is an ordinary character in a name. [`Cyrus::start_traditional`] uses Debian's packaged
/// choice, both `no`: separator `.`, personal prefix `INBOX.` (every folder below INBOX, as in
/// Courier), other users under `user.`, shared folders with the prefix `""`.
///
/// Capabilities seen after login (3.6.1, either namespace): IMAP4rev1 LITERAL+ ID ENABLE ACL
/// ANNOTATE-EXPERIMENT-1 BINARY CATENATE CHILDREN CONDSTORE CREATE-SPECIAL-USE ESEARCH ESORT
/// LIST-EXTENDED LIST-MYRIGHTS LIST-STATUS MAILBOX-REFERRALS METADATA MOVE MULTIAPPEND
/// NAMESPACE OBJECTID PREVIEW QRESYNC QUOTA RIGHTS=kxten SAVEDATE SEARCH=FUZZY SORT
/// SORT=DISPLAY SPECIAL-USE STATUS=SIZE THREAD=ORDEREDSUBJECT THREAD=REFERENCES UIDPLUS
/// UNSELECT URLAUTH URLAUTH=BINARY WITHIN DIGEST=SHA1 LIST-METADATA NO_ATOMIC_RENAME SCAN
/// SORT=MODSEQ SORT=UID THREAD=REFS X-CREATEDMODSEQ X-REPLICATION X-SIEVE-MAILBOX XLIST XMOVE
/// LOGINDISABLED COMPRESS=DEFLATE X-QUOTA=STORAGE X-QUOTA=MESSAGE X-QUOTA=X-ANNOTATION-STORAGE
/// X-QUOTA=X-NUM-FOLDERS IDLE APPENDLIMIT=4294967295 (Cyrus lists LOGINDISABLED once logged
/// in). Before login: IMAP4rev1 LITERAL+ ID ENABLE AUTH=PLAIN AUTH=LOGIN SASL-IR. Its
/// FETCH answers put FLAGS before UID; UIDVALIDITY is time-based and new on every CREATE.
pub struct Cyrus {
    child: ChildGuard,
    syslog: Syslog,
    inst: InstanceDir,
    root: PathBuf,
    port: u16,
    separator: char,
    admin_password: String,
    users: Mutex<()>,
}

impl Cyrus {
    /// Starts a new, independent instance with separator `/` and no personal prefix.
    pub fn start() -> anyhow::Result<Cyrus> {
        Cyrus::start_with(true)
    }

    /// Starts a new, independent instance with separator `.` and personal prefix `INBOX.`.
    pub fn start_traditional() -> anyhow::Result<Cyrus> {
        Cyrus::start_with(false)
    }

    fn start_with(alt: bool) -> anyhow::Result<Cyrus> {
        let root = chroot::ensure(&RECIPE)?;
        let inst = InstanceDir::new(&root)?;
        let x = inst.inside().to_string();
        let h = inst.host();
        for d in ["db", "socket", "proc", "lock", "log", "msg", "user", "quota", "sieve"] {
            std::fs::create_dir_all(h.join("lib").join(d))?;
        }
        std::fs::create_dir_all(h.join("spool"))?;
        std::fs::write(h.join("imapd.conf"), imapd_conf(&x, alt))?;
        let admin_password = format!("adm{:x}", std::process::id() as u128 ^ nanos());
        // Cyrus drops to its own user: it must own its config dir, spool and sasldb.
        chroot::jail_run(
            &root,
            &format!(
                "set -e\nchown -R cyrus:mail {x}\nsaslpasswd2 -p -c -f {x}/sasldb2 -u {REALM} {ADMIN}\n\
                 chown cyrus:mail {x}/sasldb2\n"
            ),
            &[],
            admin_password.as_bytes(),
        )
        .context("cannot set up the Cyrus instance")?;
        let syslog = Syslog::listen(&h.join("log.sock"))?;
        let log = h.join("master.log");
        let pidfile = h.join("leader.pid");
        let mut last = anyhow!("cyrus did not start");
        for _attempt in 0..5 {
            let port = crate::free_port();
            std::fs::write(h.join("cyrus.conf"), cyrus_conf(&x, port))?;
            let _ = std::fs::remove_file(&pidfile);
            let script =
                format!("exec /usr/lib/cyrus/bin/master -C {x}/imapd.conf -M {x}/cyrus.conf -p {x}/master.pid");
            let mut cmd = chroot::jail_command(&root, &script, &[], Some(&format!("{x}/log.sock")), Some(&pidfile))?;
            let mut child = ChildGuard::spawn("cyrus master", &mut cmd, &log)?;
            match chroot::wait_listening(&mut child, &pidfile, port, || true) {
                Ok(true) => {
                    return Ok(Cyrus {
                        child,
                        syslog,
                        inst,
                        root,
                        port,
                        separator: if alt { '/' } else { '.' },
                        admin_password,
                        users: Mutex::new(()),
                    });
                }
                Ok(false) => {
                    child.stop();
                    last = anyhow!("127.0.0.1:{port} was taken by another process");
                }
                Err(e) => {
                    child.stop();
                    let text = format!("{}{}", read_lossy(&log), syslog.text());
                    last = e.context(format!("cyrus failed to start; its output and syslog:\n{text}"));
                    if !text.contains("Address already in use") {
                        break;
                    }
                }
            }
        }
        Err(last)
    }

    /// Adds a user with this password and creates its INBOX (as the admin: `CREATE user/LOGIN`,
    /// or `user.LOGIN` in the traditional namespace).
    pub fn add_user(&self, login: &str, password: &str) -> anyhow::Result<()> {
        if login.is_empty() || !login.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            bail!("bad test user {login:?}: letters, digits, '_' and '-' only");
        }
        if login == ADMIN {
            bail!("{ADMIN:?} is this instance's administrator");
        }
        if password.contains(['\n', '\r']) {
            bail!("a test password must not contain a line break");
        }
        let _guard = self.users.lock().unwrap_or_else(|e| e.into_inner());
        let x = self.inst.inside();
        chroot::jail_run(
            &self.root,
            &format!("set -e\nsaslpasswd2 -p -c -f {x}/sasldb2 -u {REALM} {login}\n"),
            &[],
            password.as_bytes(),
        )
        .with_context(|| format!("cannot add Cyrus user {login}"))?;
        let mut admin = ImapAdmin::login(self.port, ADMIN, &self.admin_password)
            .with_context(|| format!("Cyrus admin login failed; syslog:\n{}", self.syslog.text()))?;
        admin.create(format!("user{}{login}", self.separator))?;
        admin.logout();
        Ok(())
    }

    pub fn host(&self) -> &str {
        HOST
    }
    pub fn imap_port(&self) -> u16 {
        self.port
    }
    /// The hierarchy separator this instance was started with.
    pub fn separator(&self) -> char {
        self.separator
    }
    /// The administrator's login and password; it sees every user's mailboxes, as `user/NAME`
    /// (`user.NAME` in the traditional namespace).
    pub fn admin(&self) -> (&str, &str) {
        (ADMIN, &self.admin_password)
    }

    /// The master's output and the syslog of all Cyrus processes, for debugging a failing test.
    pub fn log_text(&self) -> String {
        format!("{}{}", read_lossy(&self.inst.host().join("master.log")), self.syslog.text())
    }
}

impl Drop for Cyrus {
    fn drop(&mut self) {
        // Stop the server before its directory goes away.
        self.child.stop();
    }
}

fn nanos() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

fn imapd_conf(x: &str, alt: bool) -> String {
    let yn = if alt { "yes" } else { "no" };
    format!(
        "# generated by backproc-testkit
configdirectory: {x}/lib
defaultpartition: default
partition-default: {x}/spool
proc_path: {x}/lib/proc
mboxname_lockpath: {x}/lib/lock
lmtpsocket: {x}/lib/socket/lmtp
idlesocket: {x}/lib/socket/idle
notifysocket: {x}/lib/socket/notify
sievedir: {x}/lib/sieve
servername: {REALM}
altnamespace: {yn}
unixhierarchysep: {yn}
allowplaintext: yes
sasl_pwcheck_method: auxprop
sasl_auxprop_plugin: sasldb
sasl_sasldb_path: {x}/sasldb2
sasl_mech_list: PLAIN LOGIN
admins: {ADMIN}
hashimapspool: false
# A deleted folder goes at once, instead of to a hidden DELETED hierarchy kept on disk.
delete_mode: immediate
# Tests check wrong passwords; Cyrus would sleep 3 s after each.
failedloginpause: 0
syslog_prefix: backproc-cyrus
"
    )
}

/// Only the IMAP service; every child gets the instance's imapd.conf (the master does not pass
/// its `-C` on).
fn cyrus_conf(x: &str, port: u16) -> String {
    format!(
        "# generated by backproc-testkit
START {{
  recover cmd=\"ctl_cyrusdb -C {x}/imapd.conf -r\"
}}
SERVICES {{
  imap cmd=\"imapd -C {x}/imapd.conf\" listen=\"127.0.0.1:{port}\" prefork=0 maxchild=50
}}
EVENTS {{
}}
"
    )
}
