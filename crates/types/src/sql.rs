//! The vocabulary as SQLite columns (feature `sql`): each type is stored as its text, and a
//! row holding any other text is an error that names the value and what was expected.

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

use crate::retry::Queue;
use crate::{OutboxState, Priority, Security, SpecialUse};

macro_rules! text_column {
    ($ty:ty, $what:literal) => {
        impl ToSql for $ty {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }

        impl FromSql for $ty {
            fn column_result(v: ValueRef<'_>) -> FromSqlResult<Self> {
                let s = v.as_str()?;
                <$ty>::parse(s).ok_or_else(|| FromSqlError::Other(format!("{s:?} is not {}", $what).into()))
            }
        }
    };
}

text_column!(Priority, "a priority (high, low, off)");
text_column!(SpecialUse, "a special use (inbox, sent, drafts, trash, junk, archive, all, flagged)");
text_column!(OutboxState, "an outbox state (PENDING, PROCESSING, SUCCESS, ERROR, RETRY)");
text_column!(Queue, "a receive queue (primary, secondary, failed)");
text_column!(Security, "a connection security (ssl, starttls, none)");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_round_trip_and_a_foreign_value_is_an_error_naming_it() {
        let c = rusqlite::Connection::open_in_memory().unwrap();
        c.execute_batch("CREATE TABLE t (v TEXT)").unwrap();
        c.execute("INSERT INTO t VALUES (?)", [Priority::Off]).unwrap();
        let got: Priority = c.query_row("SELECT v FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(got, Priority::Off);
        c.execute("UPDATE t SET v = 'urgent'", []).unwrap();
        let e = c.query_row("SELECT v FROM t", [], |r| r.get::<_, Priority>(0)).unwrap_err().to_string();
        assert!(e.contains("\"urgent\" is not a priority"), "{e}");
        c.execute("UPDATE t SET v = 42", []).unwrap();
        assert!(c.query_row("SELECT v FROM t", [], |r| r.get::<_, Priority>(0)).is_err(), "a number is no priority");
    }
}
