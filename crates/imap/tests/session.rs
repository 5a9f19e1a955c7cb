//! The session against a real Dovecot: every typed command, pipelined reads, and flag pushes
//! that change only what they name.

use std::collections::BTreeSet;
use std::time::Duration;

use backproc_imap::{ConnectParams, Flags, FlagsRead, FlagPush, FolderRead, Security, Session};
use backproc_testkit::{Dovecot, mailgen};

fn params(d: &Dovecot, user: &str, pw: &str) -> ConnectParams {
    ConnectParams {
        host: "127.0.0.1".into(),
        port: d.imap_port(),
        security: Security::None,
        login: user.into(),
        password: pw.into(),
        ca_pem: None,
        insecure: false,
        timeout: Duration::from_secs(10),
        deadline: None,
        max_message: 64 << 20,
    }
}

#[test]
fn a_folder_read_in_one_round_trip_sees_changes_and_pushes_only_what_changed() {
    let d = Dovecot::start().unwrap();
    d.add_user("u", "p").unwrap();
    d.populate("u", "p", "INBOX", &mailgen::mailbox(3, 20)).unwrap();
    let mut s = Session::connect(&params(&d, "u", "p")).unwrap();
    assert!(s.caps.condstore && s.caps.qresync && s.caps.esearch, "{:?}", s.caps);
    let st = s.status("INBOX").unwrap();
    assert_eq!((st.exists, st.uidnext), (20, 21));
    let first = s
        .read_folder("INBOX", &FolderRead { write: false, new_after: Some(0), flags: Some(FlagsRead { last: 20, changed_since: None, vanished: false }), present: Some(20) })
        .unwrap();
    assert_eq!(first.new.len(), 20);
    assert_eq!(first.flags.len(), 20);
    assert_eq!(first.present, Some((1..=20).collect::<BTreeSet<u32>>()));
    let modseq = first.selected.highest_modseq.expect("CONDSTORE");

    // another client changes flags and expunges one
    let mut other = d.session("u", "p").unwrap();
    other.select("INBOX").unwrap();
    other.uid_store("1:3", "+FLAGS ($Label1 \\Seen)").unwrap();
    other.uid_store("5", "+FLAGS (\\Deleted)").unwrap();
    other.expunge().unwrap();
    drop(other);

    // our session hears of the expunge at its next command (RFC 3501 §7.4.1)
    s.noop().unwrap();
    for vanished in [false, true] {
        let r = s
            .read_folder(
                "INBOX",
                &FolderRead { write: false, new_after: None, flags: Some(FlagsRead { last: 20, changed_since: Some(modseq), vanished }), present: Some(20) },
            )
            .unwrap();
        assert_eq!(r.flags.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3], "vanished {vanished}: {:?}", r.flags);
        assert_eq!(r.flags[&1], Flags::parse("\\Seen $Label1"));
        assert_eq!(r.present.as_ref().unwrap().len(), 19);
        if vanished {
            assert_eq!(r.vanished, [5].into(), "QRESYNC names what was expunged");
        }
    }

    // push: +\Flagged on 1 keeps $Label1; -$Label1 on 2 keeps \Seen
    s.ensure_selected("INBOX", true).unwrap();
    let pushes = vec![
        FlagPush { uids: vec![1], add: Flags::parse("\\Flagged"), remove: Flags::default() },
        FlagPush { uids: vec![2], add: Flags::parse("NonJunk"), remove: Flags::parse("$Label1") },
    ];
    let report = s.store_flags(&pushes, s.selected().unwrap().highest_modseq).unwrap();
    assert!(report.modified.is_empty(), "{report:?}");
    let r = s
        .read_folder("INBOX", &FolderRead { flags: Some(FlagsRead { last: 20, changed_since: None, vanished: false }), ..FolderRead::default() })
        .unwrap();
    assert_eq!(r.flags[&1], Flags::parse("\\Seen \\Flagged $Label1"));
    assert_eq!(r.flags[&2], Flags::parse("\\Seen NonJunk"));
    assert_eq!(r.flags[&3], Flags::parse("\\Seen $Label1"));
}
