//! What users do in the application (list, read, flag, delete, move) and the deletion
//! bookkeeping of Sync Delete, Purge Deleted and Clean Mailboxes.
//!
//! Application code may update the `messages` table directly, as these functions do:
//! flags → set the flag columns and `flags_changed = now`; delete → `local_deleted = now`;
//! move → `move_to = <folder id>`. The engine pushes pending changes to the server.
//! A message is gone for the user when `local_deleted` or `deletion_synced` is set; the row
//! itself stays until Purge Deleted, so Sync Delete always knows what the user deleted.

use rusqlite::{OptionalExtension, params};

use crate::mail::{FLAG_COLS, flags_at};
use crate::{Error, Flags, Result, Store};

/// A message as `mail list` / `mail show` present it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MailRow {
    pub id: i64,
    pub account_id: i64,
    pub folder_id: i64,
    pub folder: String,
    pub uid: i64,
    pub message_id: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub cc: Option<String>,
    pub subject: Option<String>,
    pub date: Option<i64>,
    pub internal_date: Option<i64>,
    pub size: i64,
    /// System flags and keywords.
    pub flags: Flags,
    /// Keywords the user set that the server cannot keep (its PERMANENTFLAGS lack `\*`).
    pub keywords_refused: Vec<String>,
    pub attachments: i64,
    /// A local change not yet on the server.
    pub pending: bool,
}

/// A change of flags a user asks for: None leaves a flag as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlagEdit {
    pub seen: Option<bool>,
    pub flagged: Option<bool>,
    pub add: Vec<String>,
    pub remove: Vec<String>,
}

/// Deletion work of one folder for Sync Delete.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeletionWork {
    /// UIDs the user deleted here, still on the server.
    pub local: Vec<i64>,
    /// UIDs gone from the server, not yet deleted here.
    pub server: Vec<i64>,
    /// UIDs deleted on both sides (nothing to do but agree).
    pub both: Vec<i64>,
    /// (uid, destination folder name) of pending moves.
    pub moves: Vec<(i64, String)>,
    /// Messages in the folder (current UIDs), for the safety brake.
    pub total: i64,
    /// The brake was overridden once by `mail confirm-deletions`.
    pub confirmed: bool,
}

const MAIL_COLS: &str = "m.id, f.account_id, m.folder_id, f.display_name, m.uid, m.message_id, m.from_addr, m.to_addr,
    m.cc_addr, m.subject, m.date, m.internal_date, m.size, m.seen, m.answered, m.flagged, m.draft, m.deleted,
    m.keywords, m.attachments, (m.flags_changed IS NOT NULL OR m.move_to IS NOT NULL), m.keywords_refused";

fn mail_row(r: &rusqlite::Row) -> rusqlite::Result<MailRow> {
    Ok(MailRow {
        id: r.get(0)?,
        account_id: r.get(1)?,
        folder_id: r.get(2)?,
        folder: r.get(3)?,
        uid: r.get(4)?,
        message_id: r.get(5)?,
        from: r.get(6)?,
        to: r.get(7)?,
        cc: r.get(8)?,
        subject: r.get(9)?,
        date: r.get(10)?,
        internal_date: r.get(11)?,
        size: r.get(12)?,
        flags: flags_at(r, 13)?,
        attachments: r.get(19)?,
        pending: r.get(20)?,
        keywords_refused: r
            .get::<_, Option<String>>(21)?
            .map(|t| t.split(' ').map(str::to_owned).collect())
            .unwrap_or_default(),
    })
}

impl Store {
    /// Messages the user sees (not deleted), newest first.
    pub fn mail_list(&self, account: i64, folder: Option<&str>, unread_only: bool, limit: i64) -> Result<Vec<MailRow>> {
        self.account(account)?;
        let mut st = self.conn().prepare_cached(&format!(
            "SELECT {MAIL_COLS} FROM messages m JOIN folders f ON f.id = m.folder_id
             WHERE f.account_id = ?1 AND (?2 IS NULL OR f.display_name = ?2 OR f.name = ?2)
               AND m.local_deleted IS NULL AND m.deletion_synced IS NULL AND m.move_to IS NULL
               AND (?3 = 0 OR m.seen = 0)
             ORDER BY COALESCE(m.internal_date, m.date, 0) DESC, m.id DESC LIMIT ?4"
        ))?;
        let v =
            st.query_map(params![account, folder, unread_only, limit], mail_row)?.collect::<rusqlite::Result<_>>()?;
        Ok(v)
    }

    pub fn mail(&self, id: i64) -> Result<MailRow> {
        self.conn()
            .query_row(
                &format!("SELECT {MAIL_COLS} FROM messages m JOIN folders f ON f.id = m.folder_id WHERE m.id = ?"),
                [id],
                mail_row,
            )
            .optional()?
            .ok_or_else(|| Error::NotFound { what: "message", id: id.to_string() })
    }

    pub fn mail_raw(&self, id: i64) -> Result<Vec<u8>> {
        self.body(id)?.ok_or_else(|| Error::NotFound { what: "message body", id: id.to_string() })
    }

    fn visible(&self, id: i64) -> Result<()> {
        let ok: Option<bool> = self
            .conn()
            .query_row(
                "SELECT local_deleted IS NULL AND deletion_synced IS NULL AND move_to IS NULL FROM messages WHERE id = ?",
                [id],
                |r| r.get(0),
            )
            .optional()?;
        match ok {
            Some(true) => Ok(()),
            Some(false) => Err(Error::Invalid(format!("message {id} is deleted or being moved"))),
            None => Err(Error::NotFound { what: "message", id: id.to_string() }),
        }
    }

    /// Changes flags and keywords here at once and marks the change for the server; the
    /// server's state before the first change is kept (a trigger of the schema), so that the
    /// push says only what the user changed.
    pub fn mail_set_flags(&mut self, id: i64, edit: &FlagEdit, now: i64) -> Result<()> {
        for k in edit.add.iter().chain(&edit.remove) {
            if !backproc_types::valid_keyword(k) {
                return Err(Error::Invalid(backproc_types::KeywordError(k.clone()).to_string()));
            }
        }
        self.visible(id)?;
        self.write(|tx| {
            let mut f: Flags =
                tx.query_row(&format!("SELECT {FLAG_COLS} FROM messages WHERE id = ?"), [id], |r| flags_at(r, 0))?;
            f.seen = edit.seen.unwrap_or(f.seen);
            f.flagged = edit.flagged.unwrap_or(f.flagged);
            for k in &edit.add {
                f.add_keyword(k);
            }
            for k in &edit.remove {
                f.remove_keyword(k);
            }
            tx.execute(
                "UPDATE messages SET seen = ?, flagged = ?, keywords = ?, flags_changed = ? WHERE id = ?",
                params![f.seen, f.flagged, f.keywords_text(), now, id],
            )?;
            Ok(())
        })
    }

    /// Deletes here at once; Sync Delete deletes it on the server.
    pub fn mail_delete(&mut self, id: i64, now: i64) -> Result<()> {
        self.visible(id)?;
        self.write(|tx| {
            tx.execute("UPDATE messages SET local_deleted = ? WHERE id = ?", params![now, id])?;
            Ok(())
        })
    }

    /// Moves to another folder of the same account (done on the server by Sync Delete;
    /// the destination folder's next sync brings it in under its new UID).
    pub fn mail_move(&mut self, id: i64, to_folder: &str) -> Result<i64> {
        self.visible(id)?;
        let m = self.mail(id)?;
        let dest: i64 = self
            .conn()
            .query_row(
                "SELECT id FROM folders WHERE account_id = ? AND (display_name = ?2 OR name = ?2) AND gone = 0",
                params![m.account_id, to_folder],
                |r| r.get(0),
            )
            .optional()?
            .ok_or_else(|| Error::NotFound { what: "folder", id: to_folder.to_owned() })?;
        if dest == m.folder_id {
            return Err(Error::Invalid(format!("message {id} is already in {to_folder}")));
        }
        self.write(|tx| {
            tx.execute("UPDATE messages SET move_to = ? WHERE id = ?", params![dest, id])?;
            Ok(())
        })?;
        Ok(dest)
    }

    /// The deletion work of a folder. Stale rows (negative UIDs after a UIDVALIDITY change)
    /// never count: no deletion is ever inferred across a UIDVALIDITY change.
    pub fn deletion_work(&self, folder_id: i64) -> Result<DeletionWork> {
        let mut w = DeletionWork::default();
        let mut st = self.conn().prepare_cached(
            "SELECT m.uid, m.local_deleted IS NOT NULL, m.server_deleted IS NOT NULL, d.name
             FROM messages m LEFT JOIN folders d ON d.id = m.move_to
             WHERE m.folder_id = ? AND m.uid > 0 AND m.deletion_synced IS NULL
               AND (m.local_deleted IS NOT NULL OR m.server_deleted IS NOT NULL OR m.move_to IS NOT NULL)",
        )?;
        let rows = st.query_map([folder_id], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, bool>(1)?, r.get::<_, bool>(2)?, r.get::<_, Option<String>>(3)?))
        })?;
        for r in rows {
            match r? {
                (uid, true, true, _) | (uid, false, true, Some(_)) => w.both.push(uid),
                (uid, false, true, None) => w.server.push(uid),
                (uid, true, false, _) => w.local.push(uid),
                (uid, false, false, Some(dest)) => w.moves.push((uid, dest)),
                (_, false, false, None) => {}
            }
        }
        let (total, confirmed): (i64, bool) = self.conn().query_row(
            "SELECT (SELECT COUNT(*) FROM messages WHERE folder_id = ?1 AND uid > 0 AND deletion_synced IS NULL),
                    delete_confirmed FROM folders WHERE id = ?1",
            [folder_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        w.total = total;
        w.confirmed = confirmed;
        Ok(w)
    }

    /// Records that the server no longer has these UIDs (Sync Delete's own comparison).
    pub fn mark_server_deleted(&mut self, folder_id: i64, uids: &[i64], now: i64) -> Result<()> {
        self.write(|tx| {
            let mut st = tx.prepare_cached(
                "UPDATE messages SET server_deleted = ? WHERE folder_id = ? AND uid = ? AND server_deleted IS NULL",
            )?;
            for u in uids {
                st.execute(params![now, folder_id, u])?;
            }
            Ok(())
        })
    }

    /// Both sides agree these are gone: Purge Deleted may remove them. Clears a brake
    /// confirmation once it has been used.
    pub fn mark_deletion_synced(&mut self, folder_id: i64, uids: &[i64], now: i64) -> Result<()> {
        self.write(|tx| {
            let mut st =
                tx.prepare_cached("UPDATE messages SET deletion_synced = ? WHERE folder_id = ? AND uid = ?")?;
            for u in uids {
                st.execute(params![now, folder_id, u])?;
            }
            tx.execute("UPDATE folders SET delete_confirmed = 0 WHERE id = ?", [folder_id])?;
            Ok(())
        })
    }

    /// The admin's override of the safety brake, for the next Sync Delete of a folder.
    pub fn confirm_deletions(&mut self, folder_id: i64) -> Result<()> {
        let n =
            self.write(|tx| Ok(tx.execute("UPDATE folders SET delete_confirmed = 1 WHERE id = ?", [folder_id])?))?;
        if n == 0 {
            return Err(Error::NotFound { what: "folder", id: folder_id.to_string() });
        }
        Ok(())
    }

    /// Physically removes messages whose deletion is synced (bodies go with them).
    pub fn purge_deleted(&mut self) -> Result<usize> {
        self.write(|tx| Ok(tx.execute("DELETE FROM messages WHERE deletion_synced IS NOT NULL", [])?))
    }

    /// Clean Mailboxes: marks messages older than the account's keep-days as deleted by the
    /// user (Sync Delete then removes them on the server). Returns (folder id, count) pairs.
    pub fn mark_expired(
        &mut self,
        account: i64,
        before: i64,
        include_drafts: bool,
        now: i64,
    ) -> Result<Vec<(i64, usize)>> {
        self.write(|tx| {
            let mut st = tx.prepare_cached(
                "SELECT id FROM folders WHERE account_id = ? AND gone = 0 AND (? OR COALESCE(special_use, '') != 'drafts')",
            )?;
            let folders: Vec<i64> = st.query_map(params![account, include_drafts], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
            let mut out = Vec::new();
            for f in folders {
                let n = tx.execute(
                    "UPDATE messages SET local_deleted = ? WHERE folder_id = ? AND uid > 0 AND local_deleted IS NULL
                       AND deletion_synced IS NULL AND COALESCE(internal_date, date) < ?",
                    params![now, f, before],
                )?;
                if n > 0 {
                    out.push((f, n));
                }
            }
            Ok(out)
        })
    }

    /// Accounts with a keep-days setting.
    pub fn accounts_with_retention(&self) -> Result<Vec<(i64, i64)>> {
        let mut st = self.conn().prepare_cached(
            "SELECT id, keep_days FROM accounts WHERE enabled = 1 AND keep_days IS NOT NULL AND keep_days > 0",
        )?;
        let v = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<_>>()?;
        Ok(v)
    }
}

impl Store {
    #[cfg(any(test, feature = "test-support"))]
    /// Rows of a folder whatever their deletion state (for Purge Deleted checks).
    pub fn folder_row_count(&self, folder_id: i64) -> Result<i64> {
        Ok(self.conn().query_row("SELECT COUNT(*) FROM messages WHERE folder_id = ?", [folder_id], |r| r.get(0))?)
    }

    #[cfg(any(test, feature = "test-support"))]
    /// The store id of the message with this UID in a folder.
    pub fn message_id_by_uid(&self, folder_id: i64, uid: i64) -> Result<i64> {
        self.conn()
            .query_row("SELECT id FROM messages WHERE folder_id = ? AND uid = ?", params![folder_id, uid], |r| r.get(0))
            .optional()?
            .ok_or_else(|| Error::NotFound { what: "message with UID", id: uid.to_string() })
    }
}
