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
