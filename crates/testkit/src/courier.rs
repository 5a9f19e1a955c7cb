//! A private Courier-IMAP 5.0 (Debian bookworm's `courier-imap`) in a cached Debian chroot, on a
//! free loopback port, with its own authdaemond, userdb and Maildirs per instance.

use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::{Context, anyhow, bail};

use crate::chroot::{self, InstanceDir, Recipe};
use crate::proc::ChildGuard;
use crate::{HOST, read_lossy};

// The authdaemond socket's directory is compiled into Courier's auth library, so each instance
// binds its own directory over it (and its own /etc/courier, for the userdb) inside its mount
// namespace; the mount point must exist in the chroot.
const RECIPE: Recipe = Recipe {
    name: "courier",
    packages: &["courier-imap", "courier-authdaemon", "courier-authlib-userdb"],
    setup: "mkdir -p /inst /run/courier/authdaemon",
};

/// A running Courier-IMAP on 127.0.0.1 (plain IMAP, LOGIN), users in a userdb (`authuserdb`),
/// mail in Maildirs owned by the chroot's `mail` user.
///
/// Hierarchy separator `.`, personal namespace prefix `INBOX.` (every folder is below INBOX,
/// e.g. `INBOX.Entw&APw-rfe`), shared folders under `#shared.` and `shared.`. Capabilities seen
/// (before and after login alike): IMAP4rev1 UIDPLUS CHILDREN NAMESPACE THREAD=ORDEREDSUBJECT
/// THREAD=REFERENCES SORT QUOTA IDLE ACL ACL2=UNION ENABLE UTF8=ACCEPT; no LITERAL+, so every
/// literal waits for the server's `+`, and no CONDSTORE, QRESYNC, MOVE, UNSELECT or
/// MULTIAPPEND. Intermediate folders of a nested CREATE are listed `\Noselect`; a DELETE takes
/// about two seconds; UIDVALIDITY is time-based.
pub struct Courier {
    child: ChildGuard,
    inst: InstanceDir,
    root: PathBuf,
    port: u16,
    users: Mutex<()>,
}

impl Courier {
    /// Starts a new, independent instance on a free port (retrying on a port clash).
    pub fn start() -> anyhow::Result<Courier> {
        let root = chroot::ensure(&RECIPE)?;
        let inst = InstanceDir::new(&root)?;
        let x = inst.inside().to_string();
        // Courier's pristine settings, but users from this instance's userdb only.
        chroot::jail_run(
            &root,
            &format!(
                "set -e\nmkdir -p {x}/etc {x}/authd {x}/home\ncp -a /etc/courier/. {x}/etc/\n\
                 : > {x}/etc/userdb\nchmod 600 {x}/etc/userdb\n\
                 sed -i -e 's/^authmodulelist=.*/authmodulelist=\"authuserdb\"/' -e 's/^daemons=.*/daemons=3/' \
                 {x}/etc/authdaemonrc\n"
            ),
            &[],
            b"",
        )
        .context("cannot set up the Courier instance")?;
        let h = inst.host().to_path_buf();
        let (etc, authd) = (h.join("etc"), h.join("authd"));
        let binds = [(etc.as_path(), "/etc/courier"), (authd.as_path(), "/run/courier/authdaemon")];
        let log = h.join("courier.log");
        let pidfile = h.join("leader.pid");
        let mut last = anyhow!("courier did not start");
        for _attempt in 0..5 {
            let port = crate::free_port();
            let _ = std::fs::remove_file(&pidfile);
            let _ = std::fs::remove_file(authd.join("socket"));
            // The same environment and programs as Debian's /usr/lib/courier/imapd start script.
            let script = format!(
                "/usr/lib/courier/courier-authlib/authdaemond &\nset -a\n. /etc/courier/imapd\nset +a\n\
                 exec /usr/sbin/couriertcpd -address=127.0.0.1 -maxprocs=40 -maxperip=200 -nodnslookup \
                 -noidentlookup {port} /usr/lib/courier/courier/imaplogin /usr/bin/imapd Maildir\n"
            );
            let mut cmd = chroot::jail_command(&root, &script, &binds, None, Some(&pidfile))?;
            let mut child = ChildGuard::spawn("couriertcpd", &mut cmd, &log)?;
            // A login before authdaemond listens would fail.
            let authd_up = || authd.join("socket").exists();
            match chroot::wait_listening(&mut child, &pidfile, port, authd_up) {
                Ok(true) => return Ok(Courier { child, inst, root, port, users: Mutex::new(()) }),
                Ok(false) => {
                    child.stop();
                    last = anyhow!("127.0.0.1:{port} was taken by another process");
                }
                Err(e) => {
                    child.stop();
                    let text = read_lossy(&log);
                    last = e.context(format!("courier failed to start; its output:\n{text}"));
                    if !text.contains("Address already in use") {
                        break;
                    }
                }
            }
        }
        Err(last)
    }

    /// Adds a user with this password and an empty Maildir (its INBOX). Courier rereads the
    /// userdb on the next login.
    pub fn add_user(&self, login: &str, password: &str) -> anyhow::Result<()> {
        if login.is_empty() || !login.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            bail!("bad test user {login:?}: letters, digits, '_' and '-' only");
        }
        if password.contains(['\n', '\r']) {
            bail!("a test password must not contain a line break");
        }
        let _guard = self.users.lock().unwrap_or_else(|e| e.into_inner());
        let x = self.inst.inside();
        let home = format!("{x}/home/{login}");
        chroot::jail_run(
            &self.root,
            &format!(
                "set -e\nmkdir -p {home}\nmaildirmake {home}/Maildir\nchown -R mail:mail {home}\n\
                 pw=$(userdbpw -md5)\nuserdb -f {x}/etc/userdb {login} set uid=$(id -u mail) gid=$(id -g mail) \
                 home={home} mail={home}/Maildir \"systempw=$pw\"\nmakeuserdb -f {x}/etc/userdb\n"
            ),
            &[],
            format!("{password}\n").as_bytes(),
        )
        .with_context(|| format!("cannot add Courier user {login}"))?;
        Ok(())
    }

    pub fn host(&self) -> &str {
        HOST
    }
    pub fn imap_port(&self) -> u16 {
        self.port
    }

    /// What couriertcpd, imapd and authdaemond wrote (logins, errors), for debugging a test.
    pub fn log_text(&self) -> String {
        read_lossy(&self.inst.host().join("courier.log"))
    }
}

impl Drop for Courier {
    fn drop(&mut self) {
        // Stop the server (authdaemond is in its process group) before its directory goes.
        self.child.stop();
    }
}
