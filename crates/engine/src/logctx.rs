//! Log context: sets the MDC keys the log format reads (`account`, `folder`), so jobs never
//! format `[account,folder]` by hand. The guard restores the previous values on drop.

pub struct Scope {
    _a: log_mdc::InsertGuard,
    _f: log_mdc::InsertGuard,
}

/// Log lines until the returned guard drops end with `[account,folder]`.
pub fn scope(account: Option<i64>, folder: Option<i64>) -> Scope {
    let s = |v: Option<i64>| v.map(|v| v.to_string()).unwrap_or_default();
    Scope { _a: log_mdc::insert_scoped("account", s(account)), _f: log_mdc::insert_scoped("folder", s(folder)) }
}
