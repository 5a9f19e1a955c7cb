//! Header parse and attachment count of a downloaded message: never panics on any bytes,
//! keeps the raw bytes unchanged, and clips the indexed fields.
#![no_main]

use backproc_engine::parse::{message, message_id};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let m = message(42, data.to_vec(), Default::default(), Some(7));
    assert_eq!(m.raw, data);
    assert_eq!((m.uid, m.internal_date), (42, Some(7)));
    for field in [&m.message_id, &m.subject, &m.from, &m.to, &m.cc].into_iter().flatten() {
        // columns keep at most 4096 bytes and no NUL (SQLite text and C callers stop at NUL)
        assert!(field.len() <= 4096, "{} bytes", field.len());
        assert!(!field.contains('\0'));
    }
    // each counted attachment is a distinct `Content-Disposition:` header
    let hits = data.windows(11).filter(|w| w.eq_ignore_ascii_case(b"isposition:")).count();
    assert!((0..=hits as i64).contains(&m.attachments), "{} > {hits}", m.attachments);
    assert_eq!(message_id(data), m.message_id);
});
