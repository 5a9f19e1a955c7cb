//! Housekeeping processes that run on their own intervals: expired internal messages,
//! expired history.

use super::Ctx;
use crate::task::{Failure, Report, Task};

/// Deletes unread internal messages older than INTERNAL_MSG_LIFETIME_DAYS (read ones stay).
pub fn internal_clean(ctx: &mut Ctx, _task: &Task) -> Result<Report, Failure> {
    let days = ctx.config.internal_msg_lifetime_days as i64;
    let before = ctx.clock.now() - days * 86_400;
    let n = ctx.store.internal_delete_expired(before)?;
    log::info!("deleted {n} unread internal message(s) older than {days} days");
    Ok(Report { count: n as i64, follow_up: Vec::new() })
}

/// Deletes history older than BG_HISTORY_RETENTION_DAYS.
pub fn prune_history(ctx: &mut Ctx, _task: &Task) -> Result<Report, Failure> {
    let days = ctx.config.bg_history_retention_days as i64;
    let n = ctx.store.prune_history(ctx.clock.now() - days * 86_400)?;
    log::info!("deleted {n} history record(s) older than {days} days");
    Ok(Report { count: n as i64, follow_up: Vec::new() })
}

/// DB defragmentation: WAL checkpoint, then VACUUM (or incremental vacuum) when worthwhile.
pub fn vacuum(_ctx: &mut Ctx, _task: &Task) -> Result<Report, Failure> {
    Err(Failure::new(crate::task::FailureKind::Other, "DB defragmentation is not available yet"))
}

/// Backup with SQLite's online backup API to data/backup/, keeping the last BG_BACKUP_KEEP.
pub fn backup(_ctx: &mut Ctx, _task: &Task) -> Result<Report, Failure> {
    Err(Failure::new(crate::task::FailureKind::Other, "Backup is not available yet"))
}

/// Full resynchronisation of an account: re-read every folder, keep what matches.
pub fn full_resync(_ctx: &mut Ctx, _task: &Task) -> Result<Report, Failure> {
    Err(Failure::new(crate::task::FailureKind::Other, "Full resynchronization is not available yet"))
}
