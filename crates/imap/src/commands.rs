//! The typed commands of a session: what the jobs ask, and the answers as values. Commands
//! that do not depend on each other's answers go out in one write (RFC 3501 §5.5): a folder's
//! read is SELECT, the new UIDs, the changed flags and the UID set in one round trip.

use std::collections::{BTreeMap, BTreeSet};

use backproc_types::{Flags, SpecialUse};

use crate::mutf7;
use crate::plan::{NewMsg, ServerStatus};
use crate::response::{Code, FetchData, Malformed, Status, Untagged};
use crate::session::{
    Budget, Error, ErrorKind, MAX_STATUS_AHEAD, Result, Selected, Session, refused, refused_text, status_key,
};

/// A command's bytes, split where a synchronizing literal must wait for the server's `+`.
pub(crate) struct CommandBuf {
    parts: Vec<Vec<u8>>,
    plus: bool,
    minus: bool,
}

/// RFC 7888: LITERAL- allows non-synchronizing literals up to this size.
const LITERAL_MINUS_MAX: usize = 4096;

impl CommandBuf {
    pub(crate) fn new(literal_plus: bool, literal_minus: bool) -> CommandBuf {
        CommandBuf { parts: vec![Vec::new()], plus: literal_plus, minus: literal_minus }
    }

    fn last(&mut self) -> &mut Vec<u8> {
        self.parts.last_mut().expect("never empty")
    }

    pub(crate) fn raw(&mut self, s: &str) {
        self.last().extend_from_slice(s.as_bytes());
    }

    /// A string argument: quoted when it can be (RFC 3501 §4.3: 7-bit, no CR, LF or NUL),
    /// a literal otherwise.
    pub(crate) fn astring(&mut self, s: &[u8]) {
        if s.iter().all(|&b| b != 0 && b != b'\r' && b != b'\n' && b < 0x80) {
            let out = self.last();
            out.push(b'"');
            for &b in s {
                if b == b'"' || b == b'\\' {
                    out.push(b'\\');
                }
                out.push(b);
            }
            out.push(b'"');
        } else {
            self.literal(s);
        }
    }

    pub(crate) fn literal(&mut self, data: &[u8]) {
        if self.plus || (self.minus && data.len() <= LITERAL_MINUS_MAX) {
            let head = format!("{{{}+}}\r\n", data.len());
            let out = self.last();
            out.extend_from_slice(head.as_bytes());
            out.extend_from_slice(data);
        } else {
            let head = format!("{{{}}}\r\n", data.len());
            self.last().extend_from_slice(head.as_bytes());
            self.parts.push(data.to_vec());
        }
    }

    pub(crate) fn into_parts(self) -> Vec<Vec<u8>> {
        self.parts
    }
}

/// Compresses UIDs to an IMAP set: 1:5,7,9:12.
pub fn uid_set(uids: &[u32]) -> String {
    let mut v: Vec<u32> = uids.to_vec();
    v.sort_unstable();
    v.dedup();
    let mut out = String::new();
    let mut i = 0;
    while i < v.len() {
        let start = v[i];
        let mut end = start;
        while i + 1 < v.len() && v[i + 1] == end + 1 {
            i += 1;
            end = v[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}:{end}"));
        }
        i += 1;
    }
    out
}

/// A folder as LIST shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedFolder {
    /// Verbatim (modified UTF-7): what commands must use.
    pub name: String,
    /// Decoded for people, the personal namespace's prefix left out.
    pub display_name: String,
    pub delimiter: Option<String>,
    pub special_use: Option<SpecialUse>,
    pub selectable: bool,
}

/// A LIST line we could not use: what could be read of its name, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unusable {
    pub name: Option<String>,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    pub folders: Vec<ListedFolder>,
    pub unusable: Vec<Unusable>,
}

impl Listing {
    pub fn has_inbox(&self) -> bool {
        self.folders.iter().any(|f| crate::is_inbox(f.name.as_bytes()))
    }
}

/// What to read of a folder in one round trip (the sync's `FetchPlan`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FolderRead {
    /// SELECT (to push flags or delete) rather than EXAMINE.
    pub write: bool,
    /// The UIDs above this one, with their sizes.
    pub new_after: Option<u32>,
    /// The flags of 1:last.
    pub flags: Option<FlagsRead>,
    /// Every UID the server has in 1:this.
    pub present: Option<u32>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlagsRead {
    pub last: u32,
    /// Only those changed since this MODSEQ (RFC 7162 §3.1.4.1, CHANGEDSINCE).
    pub changed_since: Option<u64>,
    /// And the UIDs expunged since then (RFC 7162 §3.2.6, VANISHED; needs QRESYNC).
    pub vanished: bool,
}

/// What a folder read returned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FolderAnswer {
    pub selected: Selected,
    pub new: Vec<NewMsg>,
    pub flags: BTreeMap<u32, Flags>,
    pub vanished: BTreeSet<u32>,
    pub present: Option<BTreeSet<u32>>,
}

/// A body FETCH on the wire, to be read with `read_fetch` in the order they were sent.
#[must_use = "a FETCH in flight must be read"]
#[derive(Debug)]
pub struct Ticket {
    tag: u32,
    uids: BTreeSet<u32>,
}

/// (uid, size, header block, flags) of a message, as `fetch_headers` gives it.
pub type HeaderOf = (u32, u32, Vec<u8>, Option<Flags>);

/// A downloaded message.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub uid: u32,
    pub flags: Flags,
    pub internal_date: Option<i64>,
    pub raw: Vec<u8>,
}

/// What a body FETCH did not return as asked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchReport {
    /// Asked, and no answer carried it.
    pub missing: Vec<u32>,
    /// Answered with `BODY[] NIL` (or without a body).
    pub no_body: Vec<u32>,
}

/// One flag change to make on the server: add these, remove those, on every UID listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagPush {
    pub uids: Vec<u32>,
    pub add: Flags,
    pub remove: Flags,
}

/// What a push did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreReport {
    /// Not changed: they changed on the server since `unchanged_since` (MODIFIED).
    pub modified: BTreeSet<u32>,
    /// The MODSEQ each changed message has now, when the server said (CONDSTORE).
    pub modseq: BTreeMap<u32, u64>,
}

/// Special use from well-known (and localized) names, for servers without SPECIAL-USE.
pub fn special_by_name(leaf: &str) -> Option<SpecialUse> {
    let l = leaf.to_lowercase();
    let table: &[(SpecialUse, &[&str])] = &[
        (
            SpecialUse::Sent,
            &[
                "sent",
                "sent items",
                "sent messages",
                "sent mail",
                "gesendet",
                "gesendete objekte",
                "envoyés",
                "éléments envoyés",
                "wysłane",
                "отправленные",
                "enviados",
                "itens enviados",
                "inviata",
                "posta inviata",
            ],
        ),
        (
            SpecialUse::Drafts,
            &[
                "drafts",
                "draft",
                "entwürfe",
                "brouillons",
                "kopie robocze",
                "черновики",
                "rascunhos",
                "borradores",
                "bozze",
            ],
        ),
        (
            SpecialUse::Trash,
            &[
                "trash",
                "deleted items",
                "deleted messages",
                "papierkorb",
                "corbeille",
                "kosz",
                "удаленные",
                "корзина",
                "lixeira",
                "lixo",
                "papelera",
                "cestino",
            ],
        ),
        (
            SpecialUse::Junk,
            &[
                "junk",
                "spam",
                "junk e-mail",
                "bulk mail",
                "спам",
                "lixo eletrônico",
                "correo no deseado",
                "wiadomości-śmieci",
            ],
        ),
        (SpecialUse::Archive, &["archive", "archives", "archiv", "archiwum", "архив", "arquivo"]),
    ];
    table.iter().find(|(_, names)| names.contains(&l.as_str())).map(|(k, _)| *k)
}

fn special_by_attr(attr: &str) -> Option<SpecialUse> {
    Some(match attr.to_ascii_lowercase().as_str() {
        "\\all" => SpecialUse::All,
        "\\archive" => SpecialUse::Archive,
        "\\drafts" => SpecialUse::Drafts,
        "\\flagged" => SpecialUse::Flagged,
        "\\junk" => SpecialUse::Junk,
        "\\sent" => SpecialUse::Sent,
        "\\trash" => SpecialUse::Trash,
        _ => return None,
    })
}

/// Why a listed name cannot be used, if it cannot: a name we store as text and send back
/// must be text and cannot hold the bytes that end a line.
fn name_problem(name: &[u8]) -> Option<&'static str> {
    if name.is_empty() {
        return Some("the name is empty");
    }
    if name.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n') {
        return Some("the name holds a NUL, CR or LF byte");
    }
    if std::str::from_utf8(name).is_err() {
        return Some("the name is not valid UTF-8 (nor modified UTF-7)");
    }
    None
}

impl Session {
    pub(crate) fn cmd(&self) -> CommandBuf {
        CommandBuf::new(self.caps.literal_plus, self.caps.literal_minus)
    }

    /// Every folder (LIST "" "*"), with special use from SPECIAL-USE attributes or
    /// well-known names. A line that cannot be read or whose name cannot be used costs that
    /// folder only: it is in `unusable`, with a warning naming it.
    pub fn list(&mut self) -> Result<Listing> {
        self.list_with(false)
    }

    /// [`list`](Self::list), with COMPRESS (as [`deflate_for_download`](Self::deflate_for_download)
    /// would ask it) sent behind the LIST: an account's first listing, whose initial sync
    /// downloads next, gets it in the LIST's round trip instead of one of its own.
    pub fn list_before_download(&mut self) -> Result<Listing> {
        self.list_with(true)
    }

    fn list_with(&mut self, deflate: bool) -> Result<Listing> {
        let ns_tag = if self.caps.namespace && self.namespace.is_none() {
            Some(self.send_raw(b"NAMESPACE", "NAMESPACE", Budget::SMALL, None)?)
        } else {
            None
        };
        let tag = self.send_raw(b"LIST \"\" \"*\"", "LIST", Budget::LIST, None)?;
        let compress = if deflate { self.send_compress()? } else { None };
        let listed = self.read_list(ns_tag, tag);
        match (compress, listed) {
            // The connection is gone or out of step: nothing more is read from it.
            (_, Err(e)) if !e.session_usable() => Err(e),
            (None, listed) => listed,
            // Whatever LIST answered, COMPRESS's answer decides how the next byte is read.
            (Some(t), listed) => {
                self.finish_compress(t)?;
                listed
            }
        }
    }

    fn read_list(&mut self, ns_tag: Option<u32>, tag: u32) -> Result<Listing> {
        if let Some(t) = ns_tag {
            let mut personal = None;
            let done = self.complete(t, &mut |_, u| {
                if let Untagged::Namespace(v) = u {
                    personal = v.into_iter().next();
                }
                Ok(())
            })?;
            self.namespace =
                Some(if done.status == Status::Ok { personal.unwrap_or_default() } else { Default::default() });
        }
        let mut items = Vec::new();
        let mut unusable = Vec::new();
        self.complete_ok(tag, "LIST", &mut |s, u| {
            match u {
                Untagged::List(l) => items.push(l),
                Untagged::Malformed(Malformed { kind, mailbox, error }) if kind == "LIST" => {
                    let name = mailbox.map(|m| String::from_utf8_lossy(&m).into_owned());
                    let named =
                        name.as_ref().map_or_else(|| "its name cannot be read".to_owned(), |n| format!("{n:?}"));
                    log::warn!(
                        "{}: a LIST line that cannot be read ({error}); that folder is skipped: {named}",
                        s.host
                    );
                    unusable.push(Unusable { name, reason: error });
                }
                Untagged::Malformed(m) => {
                    return Err(Error::new(
                        ErrorKind::Protocol,
                        format!("invalid {} response in answer to LIST: {}", m.kind, m.error),
                    ));
                }
                _ => {}
            }
            Ok(())
        })?;
        let prefix = self.namespace.as_ref().map(|(p, _)| p.clone()).unwrap_or_default();
        let mut out = Listing { folders: Vec::new(), unusable };
        for l in items {
            if let Some(reason) = name_problem(&l.name) {
                let name = String::from_utf8_lossy(&l.name).into_owned();
                log::warn!("{}: the folder {name:?} cannot be used: {reason}", self.host);
                out.unusable.push(Unusable { name: Some(name), reason: reason.into() });
                continue;
            }
            let name = String::from_utf8(l.name).expect("checked by name_problem");
            let mut special = None;
            let mut selectable = true;
            for a in &l.attrs {
                if a.eq_ignore_ascii_case("\\Noselect") || a.eq_ignore_ascii_case("\\NonExistent") {
                    selectable = false;
                }
                special = special.or_else(|| special_by_attr(a));
            }
            if crate::is_inbox(name.as_bytes()) {
                special = Some(SpecialUse::Inbox);
            }
            let shown = if !prefix.is_empty() && name.len() > prefix.len() && name.as_bytes().starts_with(&prefix) {
                &name[prefix.len()..]
            } else {
                &name
            };
            let display = mutf7::display(shown);
            let leaf = l.delimiter.as_deref().and_then(|d| display.rsplit(d).next()).unwrap_or(&display).to_owned();
            out.folders.push(ListedFolder {
                special_use: special.or_else(|| special_by_name(&leaf)),
                display_name: display,
                name,
                delimiter: l.delimiter,
                selectable,
            });
        }
        Ok(out)
    }

    /// Asks the STATUS of every folder in `names` that has no answer yet and none on the way,
    /// in one write, without waiting: `status` then finds the answer. One STATUS per folder
    /// per pass however often this is called, and no more than [`MAX_STATUS_AHEAD`] in flight.
    pub fn status_ahead(&mut self, names: &[&str]) -> Result<()> {
        let items = self.status_items();
        let mut in_flight = self.pending.iter().filter(|p| p.status_of.is_some()).count();
        for name in names {
            if in_flight >= MAX_STATUS_AHEAD {
                break;
            }
            let key = status_key(name.as_bytes());
            if self.status_answers.contains_key(&key) {
                continue;
            }
            self.send_status(name, items)?;
            in_flight += 1;
        }
        self.flush("STATUS")
    }

    fn status_items(&self) -> &'static str {
        if self.caps.condstore {
            " (MESSAGES UIDNEXT UIDVALIDITY HIGHESTMODSEQ)"
        } else {
            " (MESSAGES UIDNEXT UIDVALIDITY)"
        }
    }

    fn send_status(&mut self, name: &str, items: &'static str) -> Result<u32> {
        let key = status_key(name.as_bytes());
        if self.selected.as_ref().is_some_and(|s| status_key(s.name.as_bytes()) == key) {
            // STATUS of the selected mailbox answers this session's view of it (Dovecot: as
            // of its last SELECT, without what other clients added since; RFC 3501 §6.3.10
            // warns of it): a NOOP brings the view up to date first. Waited for: Dovecot runs
            // a NOOP and a STATUS sent together at once, and the STATUS is stale again. (An
            // UNSELECT instead would cost the next read a SELECT, and a server that changes
            // UIDVALIDITY on every SELECT would then never let a sync settle.)
            self.noop()?;
        }
        self.status_answers.insert(key.clone(), Err(String::new()));
        let mut c = self.cmd();
        c.raw("STATUS ");
        c.astring(name.as_bytes());
        c.raw(items);
        let tag = self.send_command(c, "STATUS", Budget::STATUS)?;
        if let Some(p) = self.pending.back_mut() {
            p.status_of = Some(key);
        }
        Ok(tag)
    }

    /// Whether a STATUS of `name` has been asked and not yet taken.
    pub fn has_status(&self, name: &str) -> bool {
        self.status_answers.contains_key(&status_key(name.as_bytes()))
    }

    /// Whether STATUS answers asked ahead wait to be taken (a session a sync should reuse).
    pub fn holds_status(&self) -> bool {
        !self.status_answers.is_empty()
    }

    /// Forgets a STATUS asked ahead (the folder changed since: we changed it).
    pub fn forget_status(&mut self, name: &str) {
        let key = status_key(name.as_bytes());
        if !self.pending.iter().any(|p| p.status_of.as_ref() == Some(&key)) {
            self.status_answers.remove(&key);
        }
    }

    /// The folder's STATUS: one asked ahead, or asked now. An answer is taken once: the
    /// folder's next sync asks again.
    pub fn status(&mut self, name: &str) -> Result<ServerStatus> {
        let key = status_key(name.as_bytes());
        if !self.status_answers.contains_key(&key) {
            let items = self.status_items();
            self.send_status(name, items)?;
        }
        if let Some(tag) = self.pending.iter().find(|p| p.status_of.as_ref() == Some(&key)).map(|p| p.tag) {
            let t = self.complete(tag, &mut |_, _| Ok(()))?;
            if t.status != Status::Ok {
                self.status_answers.remove(&key);
                return Err(refused(&format!("STATUS of {name:?}"), &t));
            }
        }
        match self.status_answers.remove(&key) {
            Some(Ok(s)) => Ok(s),
            Some(Err(e)) if e.starts_with("NO") || e.starts_with("BAD") => {
                Err(refused_text(&format!("STATUS of {name:?}"), &e))
            }
            Some(Err(e)) if e.is_empty() => Err(Error::new(
                ErrorKind::Protocol,
                format!("STATUS of {name:?}: the server sent no STATUS data for the folder"),
            )),
            Some(Err(e)) => Err(Error::new(ErrorKind::Protocol, format!("STATUS of {name:?}: {e}"))),
            None => Err(Error::new(ErrorKind::Protocol, format!("STATUS of {name:?}: no answer"))),
        }
    }

    /// SELECT (read-write) or EXAMINE (read-only) `name`, with its UIDVALIDITY, counts,
    /// HIGHESTMODSEQ and PERMANENTFLAGS.
    pub fn select(&mut self, name: &str, write: bool) -> Result<Selected> {
        let tag = self.send_select(name, write)?;
        self.finish_select(tag, name, write)
    }

    /// The folder selected as needed: kept when it already is (read-write serves both).
    pub fn ensure_selected(&mut self, name: &str, write: bool) -> Result<Selected> {
        match &self.selected {
            Some(s) if s.name == name && (s.write || !write) => Ok(s.clone()),
            _ => self.select(name, write),
        }
    }

    fn send_select(&mut self, name: &str, write: bool) -> Result<u32> {
        self.selected = None;
        let mut c = self.cmd();
        c.raw(if write { "SELECT " } else { "EXAMINE " });
        c.astring(name.as_bytes());
        self.send_command(c, if write { "SELECT" } else { "EXAMINE" }, Budget::SMALL)
    }

    fn finish_select(&mut self, tag: u32, name: &str, write: bool) -> Result<Selected> {
        let mut sel = SelectAnswer::new(name, write);
        let t = self.complete(tag, &mut |_, u| {
            sel.take(&u);
            Ok(())
        })?;
        let s = sel.finish(&t)?;
        self.selected = Some(s.clone());
        Ok(s)
    }

    fn fetch_new_cmd(&mut self, after: u32) -> Result<u32> {
        let items = if self.caps.gmail { "(UID RFC822.SIZE X-GM-MSGID)" } else { "(UID RFC822.SIZE)" };
        let line = format!("UID FETCH {}:* {items}", after.saturating_add(1));
        let b = self.fetch_budget(None);
        self.send_raw(line.as_bytes(), "UID FETCH", b, None)
    }

    /// Room for `count` FETCH answers (or the folder's size), plus unsolicited ones.
    fn fetch_budget(&self, count: Option<usize>) -> Budget {
        let n = count.unwrap_or_else(|| self.selected.as_ref().map_or(100_000, |s| s.exists as usize)) + 1_000;
        Budget { untagged: 2 * n, bytes: (64u64 << 20).max(n as u64 * 400) }
    }

    /// Reads a folder in one round trip: SELECT or EXAMINE (unless it is selected already),
    /// then the new UIDs, the flags and the UID set as asked, all in one write. When the SELECT
    /// fails, the commands behind it fail too (no mailbox is selected then, RFC 3501 §6.3.1)
    /// and nothing of them is used. The answers may come interleaved (a server may run the
    /// commands at once): each FETCH answer is told apart by what it carries, RFC822.SIZE for
    /// the new UIDs' command, FLAGS for the flags' command.
    pub fn read_folder(&mut self, name: &str, req: &FolderRead) -> Result<FolderAnswer> {
        let reuse = matches!(&self.selected, Some(s) if s.name == name && (s.write || !req.write));
        let select_tag = if reuse { None } else { Some(self.send_select(name, req.write)?) };
        let new_tag = match req.new_after {
            Some(after) => Some(self.fetch_new_cmd(after)?),
            None => None,
        };
        let flags_req = req.flags.filter(|f| f.last > 0);
        let flags_tag = match flags_req {
            Some(f) => {
                let modifier = match (f.changed_since, f.vanished && self.enabled.contains("QRESYNC")) {
                    (Some(m), true) => format!(" (CHANGEDSINCE {m} VANISHED)"),
                    (Some(m), false) => format!(" (CHANGEDSINCE {m})"),
                    (None, _) => String::new(),
                };
                let line = format!("UID FETCH 1:{} (UID FLAGS){modifier}", f.last);
                let b = self.fetch_budget(Some(f.last as usize));
                Some(self.send_raw(line.as_bytes(), "UID FETCH", b, None)?)
            }
            None => None,
        };
        let present_last = req.present.filter(|l| *l > 0);
        let present_tag = match present_last {
            Some(last) => Some(self.send_search(&format!("UID 1:{last}"), last as usize)?),
            None => None,
        };
        let after = req.new_after.unwrap_or(0);
        let last = flags_req.map_or(0, |f| f.last);
        let mut sel = select_tag.map(|_| SelectAnswer::new(name, req.write));
        let mut new = Vec::new();
        let mut flags = BTreeMap::new();
        let mut vanished = BTreeSet::new();
        let mut present = BTreeSet::new();
        let tags: Vec<u32> = [select_tag, new_tag, flags_tag, present_tag].into_iter().flatten().collect();
        let done = self.complete_all(&tags, &mut |s, u| {
            collect_vanished(&u, &mut vanished);
            if let Some(sel) = sel.as_mut() {
                sel.take(&u);
            }
            match u {
                Untagged::Fetch(f) => {
                    let Some(uid) = f.uid else {
                        s.note_unsolicited_fetch(&f);
                        return Ok(());
                    };
                    match (f.size, f.flags.clone()) {
                        // `N:*` also answers the highest UID when none is above N (RFC 3501 §6.4.8)
                        (Some(size), _) if new_tag.is_some() => {
                            if uid > after {
                                new.push(NewMsg { uid, size, gm_msgid: f.gm_msgid });
                            }
                        }
                        (None, Some(fl)) if flags_tag.is_some() => {
                            if uid > 0 && uid <= last {
                                flags.insert(uid, fl);
                            } else {
                                s.stats.ignored_fetch += 1;
                            }
                        }
                        _ => s.note_unsolicited_fetch(&f),
                    }
                }
                Untagged::Search { uids, .. } if present_tag.is_some() => {
                    present.extend(uids.into_iter().filter(|u| *u > 0 && *u <= present_last.unwrap_or(0)));
                }
                Untagged::ESearch(e) if present_tag.is_some() => {
                    if let Some(all) = e.all {
                        let most = present_last.unwrap_or(0);
                        if all.len() > u64::from(most) {
                            return Err(Error::new(
                                ErrorKind::Protocol,
                                format!("UID SEARCH: more UIDs than 1:{most} can hold"),
                            ));
                        }
                        present.extend(all.iter().filter(|u| *u > 0 && *u <= most));
                    }
                }
                Untagged::Malformed(m) if m.kind == "FETCH" || m.kind.contains("SEARCH") => {
                    return Err(Error::new(ErrorKind::Protocol, format!("invalid {} response: {}", m.kind, m.error)));
                }
                _ => {}
            }
            Ok(())
        })?;
        let mut done = done.into_iter();
        let mut answer = FolderAnswer::default();
        let selected = match (select_tag, sel) {
            (Some(_), Some(sel)) => {
                let t = done.next().expect("one a tag");
                let s = sel.finish(&t)?;
                self.selected = Some(s.clone());
                s
            }
            _ => self.selected.clone().expect("reused above"),
        };
        // Each command's completion, in the order sent: its data is used only if it is OK.
        let mut errors = Vec::new();
        let mut ok = |tag: Option<u32>, what: &str| {
            tag.is_some() && {
                let t = done.next().expect("one a tag");
                let ok = t.status == Status::Ok;
                if !ok {
                    errors.push(refused(what, &t));
                }
                ok
            }
        };
        if ok(new_tag, "UID FETCH of the new messages") {
            new.sort_by_key(|m| m.uid);
            new.dedup_by_key(|m| m.uid);
            answer.new = new;
        }
        if ok(flags_tag, "UID FETCH of the flags") {
            answer.flags = flags;
        }
        if ok(present_tag, "UID SEARCH") {
            answer.present = Some(present);
        }
        if let Some(e) = errors.into_iter().next() {
            return Err(e);
        }
        answer.selected = selected;
        answer.vanished = vanished;
        Ok(answer)
    }

    /// A FETCH answer without a UID in answer to a UID command: the server telling of a flag
    /// change of its own accord (RFC 3501 §7.4.2); the next full sync reads it.
    fn note_unsolicited_fetch(&mut self, f: &FetchData) {
        log::debug!("{}: an unsolicited FETCH of message {} ignored", self.host, f.seq);
    }

    fn send_search(&mut self, criteria: &str, most: usize) -> Result<u32> {
        let line = if self.caps.esearch {
            format!("UID SEARCH RETURN (ALL) {criteria}")
        } else {
            format!("UID SEARCH {criteria}")
        };
        // one number a UID, at most 11 bytes each
        let b = Budget { untagged: 1_000, bytes: (1 << 20) + most as u64 * 11 };
        self.send_raw(line.as_bytes(), "UID SEARCH", b, None)
    }

    /// The UIDs of a SEARCH answer, at most `last` (a flood of numbers past it costs nothing:
    /// a set of them is kept, never the answer's text).
    fn finish_search(&mut self, tag: u32, last: u32) -> Result<BTreeSet<u32>> {
        let mut found = BTreeSet::new();
        let mut outside = 0u64;
        self.complete_ok(tag, "UID SEARCH", &mut |_, u| {
            match u {
                Untagged::Search { uids, .. } => {
                    for u in uids {
                        if u > 0 && u <= last {
                            found.insert(u);
                        } else {
                            outside += 1;
                        }
                    }
                }
                Untagged::ESearch(e) => {
                    if let Some(all) = e.all {
                        if all.len() > u64::from(last) {
                            return Err(Error::new(
                                ErrorKind::Protocol,
                                format!("UID SEARCH: more UIDs than 1:{last} can hold"),
                            ));
                        }
                        for u in all.iter() {
                            if u > 0 && u <= last {
                                found.insert(u);
                            } else {
                                outside += 1;
                            }
                        }
                    }
                }
                Untagged::Malformed(m) if m.kind == "SEARCH" || m.kind == "ESEARCH" => {
                    return Err(Error::new(ErrorKind::Protocol, format!("invalid {} answer: {}", m.kind, m.error)));
                }
                _ => {}
            }
            Ok(())
        })?;
        if outside > 0 {
            log::debug!("{}: {outside} UID(s) outside 1:{last} in a SEARCH answer ignored", self.host);
        }
        Ok(found)
    }

    /// Which of `uids` the selected folder has (UID SEARCH UID set).
    pub fn search_uids(&mut self, uids: &[u32]) -> Result<BTreeSet<u32>> {
        if uids.is_empty() {
            return Ok(BTreeSet::new());
        }
        let last = uids.iter().copied().max().unwrap_or(0);
        let tag = self.send_search(&format!("UID {}", uid_set(uids)), uids.len())?;
        let asked: BTreeSet<u32> = uids.iter().copied().collect();
        Ok(self.finish_search(tag, last)?.intersection(&asked).copied().collect())
    }

    /// Every UID the selected folder has in 1:last.
    pub fn present_uids(&mut self, last: u32) -> Result<BTreeSet<u32>> {
        if last == 0 {
            return Ok(BTreeSet::new());
        }
        let tag = self.send_search(&format!("UID 1:{last}"), last as usize)?;
        self.finish_search(tag, last)
    }

    /// Sends `UID FETCH uids (UID FLAGS INTERNALDATE BODY.PEEK[])` (bodies, without setting
    /// \Seen) without reading its answer, so the server works on it while we read the one
    /// before: read it with `read_fetch`, in order. `bytes` is what the batch should weigh
    /// (its RFC822.SIZEs): the answer may not be much more.
    pub fn queue_fetch(&mut self, uids: &[u32], bytes: u64) -> Result<Ticket> {
        let set = uid_set(uids);
        let line = format!("UID FETCH {set} (UID FLAGS INTERNALDATE BODY.PEEK[])");
        let n = uids.len() as u64;
        let b =
            Budget { untagged: 2 * uids.len() + 1_000, bytes: bytes.saturating_mul(2) + n * 64 * 1024 + (16 << 20) };
        let tag = self.send_raw(line.as_bytes(), "UID FETCH", b, None)?;
        let asked: BTreeSet<u32> = uids.iter().copied().collect();
        if let Some(p) = self.pending.back_mut() {
            p.fetch_of = Some(asked.clone());
        }
        self.flush("UID FETCH")?;
        Ok(Ticket { tag, uids: asked })
    }

    /// Reads the answer to a queued FETCH, giving each asked message to `each` once. Answers
    /// for UIDs not asked, UID 0, or a UID twice are ignored (and counted in `stats`); what was
    /// asked and did not come, or came without a body, is reported, never dropped.
    pub fn read_fetch(&mut self, t: Ticket, mut each: impl FnMut(Fetched)) -> Result<FetchReport> {
        let mut seen = BTreeSet::new();
        let mut report = FetchReport::default();
        let asked = t.uids;
        let mut take = |s: &mut Session, f: FetchData, seen: &mut BTreeSet<u32>, report: &mut FetchReport| {
            let Some(uid) = f.uid else {
                s.note_unsolicited_fetch(&f);
                return;
            };
            if uid == 0 || !asked.contains(&uid) || seen.contains(&uid) {
                if f.body.is_some() {
                    log::debug!("{}: a FETCH answer for UID {uid}, not asked or sent twice: ignored", s.host);
                    s.stats.ignored_fetch += 1;
                }
                return;
            }
            match f.body {
                Some(Some(raw)) => {
                    seen.insert(uid);
                    each(Fetched { uid, flags: f.flags.unwrap_or_default(), internal_date: f.internal_date, raw });
                }
                Some(None) => {
                    seen.insert(uid);
                    report.no_body.push(uid);
                }
                // a flag update of an asked message: its body comes in another answer
                None => {}
            }
        };
        // Answers that came while another command was being read.
        for f in self.fetched_early.remove(&t.tag).unwrap_or_default() {
            take(self, f, &mut seen, &mut report);
        }
        let done = self.complete(t.tag, &mut |s, u| {
            match u {
                Untagged::Fetch(f) => take(s, *f, &mut seen, &mut report),
                Untagged::Malformed(m) => return Err(malformed_fetch(m)),
                _ => {}
            }
            Ok(())
        })?;
        if done.status != Status::Ok {
            return Err(refused("UID FETCH", &done));
        }
        report.missing = asked.difference(&seen).copied().collect();
        Ok(report)
    }

    /// The sizes of `uids` of the selected folder (those it still has).
    pub fn sizes(&mut self, uids: &[u32]) -> Result<Vec<NewMsg>> {
        if uids.is_empty() {
            return Ok(Vec::new());
        }
        let items = if self.caps.gmail { "(UID RFC822.SIZE X-GM-MSGID)" } else { "(UID RFC822.SIZE)" };
        let line = format!("UID FETCH {} {items}", uid_set(uids));
        let b = self.fetch_budget(Some(uids.len()));
        let tag = self.send_raw(line.as_bytes(), "UID FETCH", b, None)?;
        let asked: BTreeSet<u32> = uids.iter().copied().collect();
        let mut out = Vec::new();
        self.complete_ok(tag, "UID FETCH", &mut |s, u| {
            match u {
                Untagged::Fetch(f) => match (f.uid, f.size) {
                    (Some(uid), Some(size)) if asked.contains(&uid) => {
                        out.push(NewMsg { uid, size, gm_msgid: f.gm_msgid })
                    }
                    (Some(_), Some(_)) => s.stats.ignored_fetch += 1,
                    _ => {}
                },
                Untagged::Malformed(m) => return Err(malformed_fetch(m)),
                _ => {}
            }
            Ok(())
        })?;
        out.sort_by_key(|m| m.uid);
        out.dedup_by_key(|m| m.uid);
        Ok(out)
    }

    /// (uid, size, header block, flags) of `uids`: enough to recognise a message by Message-ID,
    /// and the flags it has in this generation of the folder (a message re-keyed after a
    /// UIDVALIDITY change takes them: CONDSTORE would never report them as changed later).
    pub fn fetch_headers(&mut self, uids: &[u32]) -> Result<Vec<HeaderOf>> {
        if uids.is_empty() {
            return Ok(Vec::new());
        }
        let line = format!("UID FETCH {} (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER])", uid_set(uids));
        let b = self.fetch_budget(Some(uids.len()));
        let tag = self.send_raw(line.as_bytes(), "UID FETCH", b, None)?;
        let asked: BTreeSet<u32> = uids.iter().copied().collect();
        let mut out = Vec::new();
        self.complete_ok(tag, "UID FETCH", &mut |s, u| {
            match u {
                Untagged::Fetch(f) => match (f.uid, f.size, f.header) {
                    (Some(uid), Some(size), Some(h)) if asked.contains(&uid) => {
                        out.push((uid, size, h.unwrap_or_default(), f.flags))
                    }
                    (Some(_), _, Some(_)) => s.stats.ignored_fetch += 1,
                    _ => {}
                },
                Untagged::Malformed(m) => return Err(malformed_fetch(m)),
                _ => {}
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Changes flags on the selected (read-write) folder: only what changed, `+FLAGS.SILENT` and
    /// `-FLAGS.SILENT`, never a replacing `FLAGS` that would wipe what another client set.
    /// With CONDSTORE and `unchanged_since`, a message changed on the server since is left as
    /// it is (RFC 7162 §3.2) and reported in `modified`. The commands go in one write; where
    /// one message needs both an addition and a removal under CONDSTORE, the removal follows
    /// in a second write with the MODSEQ the addition gave it (with the first MODSEQ it would
    /// always fail: our own addition changed the message).
    pub fn store_flags(&mut self, pushes: &[FlagPush], unchanged_since: Option<u64>) -> Result<StoreReport> {
        if let Some(n) = self.selected.as_ref().map(|s| s.name.clone()) {
            self.forget_status(&n);
        }
        let cond = unchanged_since.filter(|_| self.caps.condstore);
        let mut report = StoreReport::default();
        // (uids, sign, flags, UNCHANGEDSINCE)
        let mut first: Vec<(Vec<u32>, char, &Flags, Option<u64>)> = Vec::new();
        let mut later: Vec<&FlagPush> = Vec::new();
        for p in pushes.iter().filter(|p| !p.uids.is_empty()) {
            let both = !p.add.is_empty() && !p.remove.is_empty();
            if !p.add.is_empty() {
                first.push((p.uids.clone(), '+', &p.add, cond));
            }
            if both && cond.is_some() {
                later.push(p);
            } else if !p.remove.is_empty() {
                first.push((p.uids.clone(), '-', &p.remove, cond));
            }
        }
        self.run_stores(&first, &mut report)?;
        let mut second = Vec::new();
        for p in later {
            for &uid in p.uids.iter().filter(|u| !report.modified.contains(u)) {
                let m = report.modseq.get(&uid).copied().or(cond);
                second.push((vec![uid], '-', &p.remove, m));
            }
        }
        self.run_stores(&second, &mut report)?;
        Ok(report)
    }

    fn run_stores(&mut self, stores: &[(Vec<u32>, char, &Flags, Option<u64>)], report: &mut StoreReport) -> Result<()> {
        let mut tags = Vec::new();
        for (uids, sign, flags, cond) in stores {
            let modifier = cond.map(|m| format!(" (UNCHANGEDSINCE {m})")).unwrap_or_default();
            let line = format!("UID STORE {}{modifier} {sign}FLAGS.SILENT {}", uid_set(uids), flags.to_imap());
            let b = self.fetch_budget(Some(uids.len()));
            tags.push(self.send_raw(line.as_bytes(), "UID STORE", b, None)?);
        }
        for tag in tags {
            let t = self.complete(tag, &mut |_, u| {
                if let Untagged::Fetch(f) = u
                    && let (Some(uid), Some(m)) = (f.uid, f.modseq)
                {
                    report.modseq.insert(uid, m);
                }
                Ok(())
            })?;
            if t.status != Status::Ok {
                return Err(refused("UID STORE", &t));
            }
            if let Some(Code::Modified(set)) = &t.code {
                report.modified.extend(set.iter());
            }
        }
        Ok(())
    }

    /// Moves `uids` of the selected (read-write) folder to `dest`: UID MOVE (RFC 6851), or
    /// COPY then delete when the server lacks MOVE.
    pub fn move_uids(&mut self, uids: &[u32], dest: &str) -> Result<()> {
        if uids.is_empty() {
            return Ok(());
        }
        self.forget_changed(dest);
        let mut c = self.cmd();
        c.raw(&format!("UID {} {} ", if self.caps.mv { "MOVE" } else { "COPY" }, uid_set(uids)));
        c.astring(dest.as_bytes());
        let what = if self.caps.mv { "UID MOVE" } else { "UID COPY" };
        let b = self.fetch_budget(Some(uids.len()));
        let tag = self.send_command(c, what, b)?;
        self.complete_ok(tag, what, &mut |_, _| Ok(()))?;
        if self.caps.mv {
            return Ok(());
        }
        self.delete_uids(uids).map(|_| ())
    }

    fn forget_changed(&mut self, other: &str) {
        if let Some(n) = self.selected.as_ref().map(|s| s.name.clone()) {
            self.forget_status(&n);
        }
        self.forget_status(other);
    }

    /// Deletes `uids` of the selected (read-write) folder: \Deleted, then UID EXPUNGE of
    /// exactly these (RFC 4315). Without UIDPLUS a plain EXPUNGE would also remove messages
    /// another client flagged \Deleted: it is sent only when a UID SEARCH DELETED, in the same
    /// write, finds no other message flagged; otherwise ours stay flagged and `false` is
    /// returned.
    pub fn delete_uids(&mut self, uids: &[u32]) -> Result<bool> {
        if uids.is_empty() {
            return Ok(true);
        }
        let name = self.selected.as_ref().map(|s| s.name.clone()).unwrap_or_default();
        self.forget_status(&name);
        let set = uid_set(uids);
        let b = self.fetch_budget(Some(uids.len()));
        let store =
            self.send_raw(format!("UID STORE {set} +FLAGS.SILENT (\\Deleted)").as_bytes(), "UID STORE", b, None)?;
        if self.caps.uidplus {
            let exp = self.send_raw(format!("UID EXPUNGE {set}").as_bytes(), "UID EXPUNGE", b, None)?;
            self.complete_ok(store, "UID STORE", &mut |_, _| Ok(()))?;
            self.complete_ok(exp, "UID EXPUNGE", &mut |_, _| Ok(()))?;
            return Ok(true);
        }
        let most = self.selected.as_ref().map_or(uids.len(), |s| s.exists as usize);
        let search = self.send_search("DELETED", most)?;
        self.complete_ok(store, "UID STORE", &mut |_, _| Ok(()))?;
        let flagged = self.finish_search(search, u32::MAX)?;
        let ours: BTreeSet<u32> = uids.iter().copied().collect();
        if !flagged.iter().all(|u| ours.contains(u)) {
            return Ok(false);
        }
        let tag = self.send_raw(b"EXPUNGE", "EXPUNGE", b, None)?;
        self.complete_ok(tag, "EXPUNGE", &mut |_, _| Ok(()))?;
        Ok(true)
    }

    /// APPENDs a message with `flags` to `folder` (e.g. \Seen to Sent); the new UID when the
    /// server says (UIDPLUS).
    pub fn append(&mut self, folder: &str, flags: &Flags, raw: &[u8]) -> Result<Option<u32>> {
        self.forget_status(folder);
        let mut c = self.cmd();
        c.raw("APPEND ");
        c.astring(folder.as_bytes());
        c.raw(&format!(" {} ", flags.to_imap()));
        c.literal(raw);
        let tag = self.send_command(c, "APPEND", Budget::SMALL)?;
        let t = self.complete_ok(tag, "APPEND", &mut |_, _| Ok(()))?;
        Ok(match t.code {
            Some(Code::AppendUid(_, set)) => set.iter().next(),
            _ => None,
        })
    }

    pub fn noop(&mut self) -> Result<()> {
        let tag = self.send_raw(b"NOOP", "NOOP", Budget::SMALL, None)?;
        self.complete_ok(tag, "NOOP", &mut |_, _| Ok(())).map(|_| ())
    }
}

/// What a SELECT or EXAMINE answer says, gathered from its untagged responses (and the
/// changes of the message count that follow it in the same read).
struct SelectAnswer {
    s: Selected,
    validity: Option<u32>,
    exists: Option<u32>,
    /// The first untagged answer that could not be read: when EXISTS or UIDVALIDITY is missing,
    /// it is most likely the reason (`* 4294967296 EXISTS`), and the error says so.
    unreadable: Option<String>,
}

impl SelectAnswer {
    fn new(name: &str, write: bool) -> SelectAnswer {
        SelectAnswer {
            s: Selected { name: name.to_owned(), write, ..Selected::default() },
            validity: None,
            exists: None,
            unreadable: None,
        }
    }

    fn take(&mut self, u: &Untagged) {
        match u {
            Untagged::Exists(n) => self.exists = Some(*n),
            Untagged::Expunge(_) => self.exists = self.exists.map(|e| e.saturating_sub(1)),
            Untagged::Vanished { earlier: false, uids } => {
                self.exists = self.exists.map(|e| e.saturating_sub(uids.len().min(u64::from(u32::MAX)) as u32));
            }
            Untagged::Status(t) => match &t.code {
                Some(Code::UidValidity(v)) => self.validity = Some(*v),
                Some(Code::UidNext(n)) => self.s.uidnext = *n,
                Some(Code::HighestModseq(m)) => self.s.highest_modseq = Some(*m),
                Some(Code::PermanentFlags(p)) => self.s.permanent_flags = Some(p.clone()),
                _ => {}
            },
            Untagged::Malformed(m) if self.unreadable.is_none() => self.unreadable = Some(m.error.clone()),
            _ => {}
        }
    }

    fn finish(mut self, t: &crate::response::Tagged) -> Result<Selected> {
        let what = if self.s.write { "SELECT" } else { "EXAMINE" };
        let name = self.s.name.clone();
        if t.status != Status::Ok {
            return Err(refused(&format!("{what} {name:?}"), t));
        }
        if let Some(Code::Other(c, _)) = &t.code
            && c == "READ-ONLY"
        {
            self.s.write = false;
        }
        // RFC 3501 §6.3.1: both are required; without them no UID of the folder means anything.
        let why =
            self.unreadable.as_ref().map(|e| format!(" (an answer that could not be read: {e})")).unwrap_or_default();
        let missing =
            |item: &str| Error::new(ErrorKind::Protocol, format!("{what} {name:?}: the server sent no {item}{why}"));
        self.s.uidvalidity = self.validity.ok_or_else(|| missing("UIDVALIDITY"))?;
        self.s.exists = self.exists.ok_or_else(|| missing("EXISTS"))?;
        Ok(self.s)
    }
}

fn collect_vanished(u: &Untagged, into: &mut BTreeSet<u32>) {
    if let Untagged::Vanished { uids, .. } = u {
        // A hostile set `1:4294967295` is not expanded into memory.
        if uids.len() <= 10_000_000 {
            into.extend(uids.iter());
        }
    }
}

/// A FETCH answer that cannot be read is never skipped: the message it carried would be lost.
fn malformed_fetch(m: Malformed) -> Error {
    Error::new(ErrorKind::Protocol, format!("invalid {} response: {}", m.kind, m.error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_sets() {
        assert_eq!(uid_set(&[]), "");
        assert_eq!(uid_set(&[5]), "5");
        assert_eq!(uid_set(&[3, 1, 2, 7, 9, 10, 11]), "1:3,7,9:11");
        assert_eq!(uid_set(&[4, 4, 5]), "4:5");
    }

    #[test]
    fn localized_special_names() {
        assert_eq!(special_by_name("Sent Items"), Some(SpecialUse::Sent));
        assert_eq!(special_by_name("Отправленные"), Some(SpecialUse::Sent));
        assert_eq!(special_by_name("Kosz"), Some(SpecialUse::Trash));
        assert_eq!(special_by_name("Entwürfe"), Some(SpecialUse::Drafts));
        assert_eq!(special_by_name("Projects"), None);
    }

    #[test]
    fn arguments_are_quoted_or_literal_as_the_server_allows() {
        let parts = |plus, minus, s: &[u8]| {
            let mut c = CommandBuf::new(plus, minus);
            c.raw("X ");
            c.astring(s);
            c.into_parts()
        };
        assert_eq!(parts(false, false, b"a \"q\" \\b"), vec![b"X \"a \\\"q\\\" \\\\b\"".to_vec()]);
        assert_eq!(
            parts(true, false, "Entwürfe".as_bytes()),
            vec![[b"X {9+}\r\n".as_slice(), "Entwürfe".as_bytes()].concat()]
        );
        assert_eq!(parts(false, true, b"a\r\nb"), vec![b"X {4+}\r\na\r\nb".to_vec()]);
        assert_eq!(parts(false, false, b"a\r\nb"), vec![b"X {4}\r\n".to_vec(), b"a\r\nb".to_vec()]);
        let lit = |minus, n| {
            let mut c = CommandBuf::new(false, minus);
            c.literal(&vec![b'x'; n]);
            c.into_parts().len()
        };
        assert_eq!((lit(true, 4096), lit(true, 4097), lit(false, 10)), (1, 2, 2), "LITERAL- stops at 4096 bytes");
    }

    #[test]
    fn a_missing_exists_names_the_answer_that_could_not_be_read() {
        let ok = crate::response::Tagged { tag: b"b1".to_vec(), status: Status::Ok, code: None, text: String::new() };
        let mut a = SelectAnswer::new("INBOX", false);
        a.take(&Untagged::Status(crate::response::Tagged { code: Some(Code::UidValidity(7)), ..ok.clone() }));
        let bad = "a message number 4294967296 is not a 32-bit number";
        a.take(&Untagged::Malformed(Malformed { kind: "?".into(), mailbox: None, error: bad.into() }));
        let e = a.finish(&ok).unwrap_err();
        assert_eq!(
            e.detail,
            format!("EXAMINE \"INBOX\": the server sent no EXISTS (an answer that could not be read: {bad})")
        );
        let mut a = SelectAnswer::new("INBOX", true);
        a.take(&Untagged::Exists(3));
        assert_eq!(a.finish(&ok).unwrap_err().detail, "SELECT \"INBOX\": the server sent no UIDVALIDITY");
    }

    #[test]
    fn unusable_names() {
        assert_eq!(name_problem(b"INBOX"), None);
        assert_eq!(name_problem("Entwürfe".as_bytes()), None);
        assert_eq!(name_problem(b"a\0b"), Some("the name holds a NUL, CR or LF byte"));
        assert_eq!(name_problem(b"a\xff"), Some("the name is not valid UTF-8 (nor modified UTF-7)"));
        assert_eq!(name_problem(b""), Some("the name is empty"));
    }
}
