//! Table tests of every response kind we read, each through every split of the stream, and a
//! property test: any legal order of FETCH items, any choice of quoted string or literal, and
//! any split of the bytes give the same message.

use super::*;
use crate::read::Limits;
use crate::testio::Fake;

fn parse_all(bytes: &[u8], chunk: usize) -> Result<Vec<Response>, ReadError> {
    let mut r = Reader::new(Fake::new(bytes, chunk), Limits::default());
    let mut out = Vec::new();
    let lim = ParseLimits { body: 1 << 20, header: 1 << 16, small: 1 << 10 };
    while r.get_ref().reply.position() as usize != bytes.len() || r.has_buffered() {
        out.push(read_response(&mut r, &lim)?);
    }
    Ok(out)
}

/// Parses `bytes` whole and in chunks of 1, 2, 3 and 7 bytes: the same responses each time.
fn parse(bytes: &[u8]) -> Result<Vec<Response>, ReadError> {
    let whole = parse_all(bytes, 1 << 20);
    for chunk in [1, 2, 3, 7] {
        let split = parse_all(bytes, chunk);
        assert_eq!(format!("{split:?}"), format!("{whole:?}"), "chunk {chunk} of {:?}", String::from_utf8_lossy(bytes));
    }
    whole
}

fn one(bytes: &[u8]) -> Response {
    let mut v = parse(bytes).unwrap_or_else(|e| panic!("{:?}: {e}", String::from_utf8_lossy(bytes)));
    assert_eq!(v.len(), 1, "{v:?}");
    v.remove(0)
}

fn u(bytes: &[u8]) -> Untagged {
    match one(bytes) {
        Response::Untagged(u) => u,
        other => panic!("not untagged: {other:?}"),
    }
}

fn tagged(tag: &str, status: Status, code: Option<Code>, text: &str) -> Response {
    Response::Tagged(Tagged { tag: tag.into(), status, code, text: text.into() })
}

fn other(name: &str, text: &str) -> Option<Code> {
    Some(Code::Other(name.into(), text.into()))
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn tagged_completions() {
    use Status::*;
    #[rustfmt::skip]
    let cases: Vec<(&str, &[u8], Response)> = vec![
        ("ok with code", b"a1 OK [READ-WRITE] SELECT completed\r\n", tagged("a1", Ok, other("READ-WRITE", ""), "SELECT completed")),
        ("privacy required", b"a2 NO [PRIVACYREQUIRED] Plaintext authentication disallowed\r\n",
            tagged("a2", No, other("PRIVACYREQUIRED", ""), "Plaintext authentication disallowed")),
        ("no text at all", b"a3 OK\r\n", tagged("a3", Ok, None, "")),
        ("lower case status", b"a3 ok done\r\n", tagged("a3", Ok, None, "done")),
        ("modified set", b"a4 OK [MODIFIED 7,9:10] Conditional STORE failed\r\n",
            tagged("a4", Ok, Some(Code::Modified(UidSet(vec![(7, 7), (9, 10)]))), "Conditional STORE failed")),
        ("appenduid", b"a5 OK [APPENDUID 38505 3955] APPEND completed\r\n",
            tagged("a5", Ok, Some(Code::AppendUid(38505, UidSet(vec![(3955, 3955)]))), "APPEND completed")),
        ("bad", b"a6 BAD Error in IMAP command: Unknown command\r\n", tagged("a6", Bad, None, "Error in IMAP command: Unknown command")),
        ("code with text", b"a7 NO [LIMIT] Too many simultaneous connections\r\n", tagged("a7", No, other("LIMIT", ""), "Too many simultaneous connections")),
        ("unknown code with arguments", b"a8 NO [BADCHARSET (UTF-8 US-ASCII)] no\r\n", tagged("a8", No, other("BADCHARSET", "(UTF-8 US-ASCII)"), "no")),
        ("text that looks like syntax", b"a9 OK done {5} \"\r\n", tagged("a9", Ok, None, "done {5} \"")),
        ("bare lf", b"b1 OK fine\n", tagged("b1", Ok, None, "fine")),
        ("highestmodseq at u64 max", b"b2 OK [HIGHESTMODSEQ 18446744073709551615] x\r\n",
            tagged("b2", Ok, Some(Code::HighestModseq(u64::MAX)), "x")),
    ];
    for (name, input, want) in cases {
        assert_eq!(one(input), want, "{name}");
    }
}

#[test]
fn untagged_status_and_codes() {
    let st =
        |status, code, text: &str| Untagged::Status(Tagged { tag: b"*".to_vec(), status, code, text: text.into() });
    #[rustfmt::skip]
    let cases: Vec<(&str, &[u8], Untagged)> = vec![
        ("greeting with capabilities", b"* OK [CAPABILITY IMAP4rev1 LITERAL+ AUTH=PLAIN] Dovecot ready.\r\n",
            st(Status::Ok, Some(Code::Capability(strings(&["IMAP4rev1", "LITERAL+", "AUTH=PLAIN"]))), "Dovecot ready.")),
        ("uidvalidity", b"* OK [UIDVALIDITY 3857529045] UIDs valid\r\n", st(Status::Ok, Some(Code::UidValidity(3857529045)), "UIDs valid")),
        ("uidnext", b"* OK [UIDNEXT 4392] Predicted next UID\r\n", st(Status::Ok, Some(Code::UidNext(4392)), "Predicted next UID")),
        ("permanent flags", b"* OK [PERMANENTFLAGS (\\Deleted \\Seen \\*)] Limited\r\n",
            st(Status::Ok, Some(Code::PermanentFlags(strings(&["\\Deleted", "\\Seen", "\\*"]))), "Limited")),
        ("no permanent flags", b"* OK [PERMANENTFLAGS ()] none\r\n", st(Status::Ok, Some(Code::PermanentFlags(vec![])), "none")),
        ("nomodseq", b"* OK [NOMODSEQ] Sorry\r\n", st(Status::Ok, other("NOMODSEQ", ""), "Sorry")),
        ("alert", b"* NO [ALERT] Too many simultaneous connections. (Failure)\r\n",
            st(Status::No, other("ALERT", ""), "Too many simultaneous connections. (Failure)")),
        ("bye", b"* BYE Logging out\r\n", st(Status::Bye, None, "Logging out")),
        ("preauth", b"* PREAUTH ready\r\n", st(Status::PreAuth, None, "ready")),
        ("unseen", b"* OK [UNSEEN 12] first unseen\r\n", st(Status::Ok, Some(Code::Unseen(12)), "first unseen")),
    ];
    for (name, input, want) in cases {
        assert_eq!(u(input), want, "{name}");
    }
}

#[test]
fn untagged_data() {
    #[rustfmt::skip]
    let cases: Vec<(&str, &[u8], Untagged)> = vec![
        ("capability", b"* CAPABILITY IMAP4rev1 CONDSTORE QRESYNC X-GM-EXT-1\r\n",
            Untagged::Capability(strings(&["IMAP4rev1", "CONDSTORE", "QRESYNC", "X-GM-EXT-1"]))),
        ("enabled", b"* ENABLED CONDSTORE QRESYNC\r\n", Untagged::Enabled(strings(&["CONDSTORE", "QRESYNC"]))),
        ("enabled nothing", b"* ENABLED\r\n", Untagged::Enabled(vec![])),
        ("flags", b"* FLAGS (\\Answered \\Flagged $Forwarded)\r\n", Untagged::Flags(strings(&["\\Answered", "\\Flagged", "$Forwarded"]))),
        ("exists", b"* 23 EXISTS\r\n", Untagged::Exists(23)),
        ("recent", b"* 0 RECENT\r\n", Untagged::Recent(0)),
        ("expunge", b"* 44 EXPUNGE\r\n", Untagged::Expunge(44)),
        ("search", b"* SEARCH 2 84 882\r\n", Untagged::Search { uids: vec![2, 84, 882], modseq: None }),
        ("search nothing", b"* SEARCH\r\n", Untagged::Search { uids: vec![], modseq: None }),
        ("search modseq", b"* SEARCH 1 2 (MODSEQ 917162500)\r\n", Untagged::Search { uids: vec![1, 2], modseq: Some(917162500) }),
        ("esearch all", b"* ESEARCH (TAG \"a7\") UID ALL 1:3,5 COUNT 4\r\n",
            Untagged::ESearch(ESearch { tag: Some(b"a7".to_vec()), uid: true, all: Some(UidSet(vec![(1, 3), (5, 5)])), count: Some(4), ..ESearch::default() })),
        ("esearch nothing matched", b"* ESEARCH (TAG \"a8\") UID\r\n",
            Untagged::ESearch(ESearch { tag: Some(b"a8".to_vec()), uid: true, ..ESearch::default() })),
        ("esearch min max", b"* ESEARCH UID MIN 2 MAX 9\r\n",
            Untagged::ESearch(ESearch { uid: true, min: Some(2), max: Some(9), ..ESearch::default() })),
        ("namespace dovecot", b"* NAMESPACE ((\"\" \"/\")) NIL NIL\r\n", Untagged::Namespace(vec![(vec![], Some("/".into()))])),
        ("namespace courier", b"* NAMESPACE ((\"INBOX.\" \".\")) NIL ((\"#shared.\" \".\"))\r\n",
            Untagged::Namespace(vec![(b"INBOX.".to_vec(), Some(".".into()))])),
        ("namespace with extension", b"* NAMESPACE ((\"\" \"/\" \"X-PARAM\" (\"FLAG1\"))) NIL NIL\r\n",
            Untagged::Namespace(vec![(vec![], Some("/".into()))])),
        ("namespace none", b"* NAMESPACE NIL NIL NIL\r\n", Untagged::Namespace(vec![])),
        ("vanished earlier", b"* VANISHED (EARLIER) 300:310,405\r\n", Untagged::Vanished { earlier: true, uids: UidSet(vec![(300, 310), (405, 405)]) }),
        ("vanished", b"* VANISHED 5\r\n", Untagged::Vanished { earlier: false, uids: UidSet(vec![(5, 5)]) }),
        ("id", b"* ID (\"name\" \"Dovecot\" \"x\" NIL)\r\n", Untagged::Other("ID".into())),
        ("unknown with a literal", b"* METADATA \"INBOX\" (/comment {3}\r\nabc)\r\n", Untagged::Other("METADATA".into())),
        ("unknown numbered", b"* 3 ODD thing\r\n", Untagged::Other("ODD".into())),
    ];
    for (name, input, want) in cases {
        assert_eq!(u(input), want, "{name}");
    }
}

#[test]
fn list_and_lsub() {
    let l = |attrs: &[&str], d: Option<&str>, name: &[u8]| {
        Untagged::List(ListItem { attrs: strings(attrs), delimiter: d.map(str::to_owned), name: name.to_vec() })
    };
    #[rustfmt::skip]
    let cases: Vec<(&str, &[u8], Untagged)> = vec![
        ("inbox atom", b"* LIST (\\HasNoChildren) \"/\" INBOX\r\n", l(&["\\HasNoChildren"], Some("/"), b"INBOX")),
        ("quoted nested", b"* LIST (\\Noselect) \".\" \"INBOX.Deep\"\r\n", l(&["\\Noselect"], Some("."), b"INBOX.Deep")),
        ("no delimiter", b"* LIST () NIL Public\r\n", l(&[], None, b"Public")),
        ("a folder named NIL", b"* LIST () \"/\" NIL\r\n", l(&[], Some("/"), b"NIL")),
        ("literal name", b"* LIST (\\Sent) \"/\" {4}\r\nSent\r\n", l(&["\\Sent"], Some("/"), b"Sent")),
        ("literal name with CR LF", b"* LIST () \"/\" {4}\r\nx\r\ny\r\n", l(&[], Some("/"), b"x\r\ny")),
        ("gmail brackets quoted", b"* LIST (\\HasChildren \\Noselect) \"/\" \"[Gmail]\"\r\n", l(&["\\HasChildren", "\\Noselect"], Some("/"), b"[Gmail]")),
        ("gmail brackets atom", b"* LIST (\\All) \"/\" [Gmail]/All\r\n", l(&["\\All"], Some("/"), b"[Gmail]/All")),
        ("escaped delimiter", b"* LIST () \"\\\\\" \"a\\\\b\"\r\n", l(&[], Some("\\"), b"a\\b")),
        ("escaped quote in name", b"* LIST () \"/\" \"say \\\"hi\\\"\"\r\n", l(&[], Some("/"), b"say \"hi\"")),
        ("list-extended data", b"* LIST (\\Subscribed) \"/\" \"Foo\" (\"CHILDINFO\" (\"SUBSCRIBED\"))\r\n", l(&["\\Subscribed"], Some("/"), b"Foo")),
        ("oldname", b"* LIST () \"/\" \"New\" (\"OLDNAME\" (\"Old\"))\r\n", l(&[], Some("/"), b"New")),
        ("lsub", b"* LSUB () \".\" INBOX.Sub\r\n", l(&[], Some("."), b"INBOX.Sub")),
        ("modified utf-7", b"* LIST () \"/\" \"Entw&APw-rfe\"\r\n", l(&[], Some("/"), b"Entw&APw-rfe")),
        ("raw utf-8 (UTF8=ACCEPT)", b"* LIST () \"/\" \"Entw\xc3\xbcrfe\"\r\n", l(&[], Some("/"), "Entwürfe".as_bytes())),
        ("raw 8-bit atom", b"* LIST () \"/\" Entw\xfcrfe\r\n", l(&[], Some("/"), b"Entw\xfcrfe")),
    ];
    for (name, input, want) in cases {
        assert_eq!(u(input), want, "{name}");
    }
}

#[test]
fn mailbox_status() {
    let s = |name: &[u8], m, n, v, h| {
        Untagged::MailboxStatus(MailboxStatus {
            name: name.to_vec(),
            messages: m,
            uidnext: n,
            uidvalidity: v,
            unseen: None,
            highest_modseq: h,
        })
    };
    #[rustfmt::skip]
    let cases: Vec<(&str, &[u8], Untagged)> = vec![
        ("all items", b"* STATUS INBOX (MESSAGES 3 UIDNEXT 4 UIDVALIDITY 5 HIGHESTMODSEQ 18446744073709551615)\r\n",
            s(b"INBOX", Some(3), Some(4), Some(5), Some(u64::MAX))),
        ("lower case, other order", b"* STATUS inbox (uidvalidity 5 messages 0)\r\n", s(b"inbox", Some(0), None, Some(5), None)),
        ("quoted with escapes", b"* STATUS \"a \\\"q\\\" \\\\b\" (MESSAGES 2)\r\n", s(b"a \"q\" \\b", Some(2), None, None, None)),
        ("literal name", b"* STATUS {4}\r\nx\r\ny (MESSAGES 1)\r\n", s(b"x\r\ny", Some(1), None, None, None)),
        ("items we skip", b"* STATUS Sent (RECENT 0 SIZE 123456789012 APPENDLIMIT NIL MESSAGES 7)\r\n", s(b"Sent", Some(7), None, None, None)),
        ("empty items", b"* STATUS Sent ()\r\n", s(b"Sent", None, None, None, None)),
    ];
    for (name, input, want) in cases {
        assert_eq!(u(input), want, "{name}");
    }
}

fn fetched(seq: u32) -> FetchData {
    FetchData { seq, ..FetchData::default() }
}

#[test]
fn fetch_items_in_any_order() {
    let flags = |s: &str| Some(Flags::parse(s));
    #[rustfmt::skip]
    let cases: Vec<(&str, &[u8], FetchData)> = vec![
        ("cyrus: flags before uid, keywords that end in uid",
            b"* 1 FETCH (FLAGS (\\Seen $MyUID $Label1 liquid) UID 1 INTERNALDATE \"17-Jul-1996 02:44:25 -0700\" RFC822.SIZE 5 BODY[] {5}\r\nhello)\r\n",
            FetchData { uid: Some(1), flags: flags("\\Seen $MyUID $Label1 liquid"), internal_date: Some(837596665), size: Some(5),
                body: Some(Some(b"hello".to_vec())), ..fetched(1) }),
        ("uid last", b"* 2 FETCH (BODY[] {3}\r\nabc FLAGS () UID 9)\r\n",
            FetchData { uid: Some(9), flags: flags(""), body: Some(Some(b"abc".to_vec())), ..fetched(2) }),
        ("a literal that looks like syntax", b"* 2 FETCH (UID 9 BODY[] {5}\r\n{3}\r\n)\r\n",
            FetchData { uid: Some(9), body: Some(Some(b"{3}\r\n".to_vec())), ..fetched(2) }),
        ("quoted body", b"* 3 FETCH (UID 10 BODY[] \"short\")\r\n", FetchData { uid: Some(10), body: Some(Some(b"short".to_vec())), ..fetched(3) }),
        ("body NIL", b"* 3 FETCH (UID 11 BODY[] NIL)\r\n", FetchData { uid: Some(11), body: Some(None), ..fetched(3) }),
        ("sizes", b"* 4 FETCH (UID 4 RFC822.SIZE 120)\r\n", FetchData { uid: Some(4), size: Some(120), ..fetched(4) }),
        ("modseq", b"* 5 FETCH (UID 5 MODSEQ (624140003) FLAGS (\\Deleted))\r\n",
            FetchData { uid: Some(5), modseq: Some(624140003), flags: flags("\\Deleted"), ..fetched(5) }),
        ("flag update without uid", b"* 6 FETCH (FLAGS (\\Seen))\r\n", FetchData { flags: flags("\\Seen"), ..fetched(6) }),
        ("header fields", b"* 7 FETCH (UID 7 RFC822.SIZE 9 BODY[HEADER.FIELDS (MESSAGE-ID)] {19}\r\nMessage-ID: <a>\r\n\r\n)\r\n",
            FetchData { uid: Some(7), size: Some(9), header: Some(Some(b"Message-ID: <a>\r\n\r\n".to_vec())), ..fetched(7) }),
        ("rfc822.header", b"* 7 FETCH (UID 7 RFC822.HEADER {4}\r\nA: b)\r\n", FetchData { uid: Some(7), header: Some(Some(b"A: b".to_vec())), ..fetched(7) }),
        ("gmail msgid", b"* 8 FETCH (X-GM-MSGID 1278455344230334865 UID 8 X-GM-LABELS (\\Inbox \"Work\"))\r\n",
            FetchData { uid: Some(8), gm_msgid: Some(1278455344230334865), ..fetched(8) }),
        ("structure skipped", b"* 9 FETCH (UID 9 BODYSTRUCTURE (\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 3 1 NIL NIL NIL) ENVELOPE (NIL \"s\" NIL NIL NIL NIL NIL NIL NIL {2}\r\nid))\r\n",
            FetchData { uid: Some(9), ..fetched(9) }),
        ("partial body is not the body", b"* 9 FETCH (UID 9 BODY[]<0> {2}\r\nab)\r\n", FetchData { uid: Some(9), ..fetched(9) }),
        ("other section is not the body", b"* 9 FETCH (UID 9 BODY[TEXT] {2}\r\nab BODY[1.MIME] NIL)\r\n", FetchData { uid: Some(9), ..fetched(9) }),
        ("space-padded day", b"* 1 FETCH (UID 1 INTERNALDATE \" 2-Mar-2026 10:00:00 +0000\")\r\n",
            FetchData { uid: Some(1), internal_date: Some(1772445600), ..fetched(1) }),
        ("empty item list", b"* 1 FETCH ()\r\n", fetched(1)),
    ];
    for (name, input, want) in cases {
        assert_eq!(u(input), Untagged::Fetch(Box::new(want)), "{name}");
    }
}

#[test]
fn continuation_requests() {
    for (input, want) in [
        (&b"+ go ahead\r\n"[..], &b"go ahead"[..]),
        (b"+ \r\n", b""),
        (b"+\r\n", b""),
        (b"+ dGVzdA==\r\n", b"dGVzdA=="),
    ] {
        assert_eq!(one(input), Response::Continue(want.to_vec()), "{:?}", String::from_utf8_lossy(input));
    }
}

/// Untagged responses that cannot be read are skipped to their line's end (and over a
/// literal at that end), named, and the next response is read normally.
#[test]
fn malformed_untagged_responses_are_skipped_and_named() {
    #[rustfmt::skip]
    type Case<'a> = (&'a str, &'a [u8], &'a str, Option<&'a [u8]>, &'a str);
    let cases: Vec<Case> = vec![
        // the name's raw bytes, to name the folder in a warning
        (
            "NUL in a listed name",
            b"* LIST () \"/\" \"a\0b\"\r\n",
            "LIST",
            Some(b"a\0b"),
            "a NUL inside a quoted string",
        ),
        ("CR in a listed name", b"* LIST () \"/\" \"a\rb\"\r\n", "LIST", Some(b"a\rb"), "a CR inside a quoted string"),
        ("CR and escapes", b"* LIST () \"/\" \"a\\\"\rb\"\r\n", "LIST", Some(b"a\"\rb"), "a CR inside a quoted string"),
        ("CR and no closing quote", b"* LIST () \"/\" \"a\rb\r\n", "LIST", None, "a CR inside a quoted string"),
        (
            "bad escape in a listed name",
            b"* LIST () \"/\" \"a\\zb\"\r\n",
            "LIST",
            Some(b"a\\zb"),
            "an invalid escape \\z in a quoted string",
        ),
        (
            "junk after a listed name",
            b"* LIST () \"/\" \"Good\" ) x\r\n",
            "LIST",
            Some(b"Good"),
            "a ) where a value should be",
        ),
        (
            "uidnext out of range",
            b"* STATUS INBOX (MESSAGES 1 UIDNEXT 99999999999)\r\n",
            "STATUS",
            Some(b"INBOX"),
            "UIDNEXT 99999999999 is not a 32-bit number",
        ),
        (
            "not a number",
            b"* STATUS \"Sent\" (MESSAGES many)\r\n",
            "STATUS",
            Some(b"Sent"),
            "MESSAGES \"many\" is not a number",
        ),
        (
            "fetch uid not a number",
            b"* 1 FETCH (UID x1 BODY[] {2}\r\nab)\r\n",
            "FETCH",
            None,
            "UID \"x1\" is not a number",
        ),
        ("fetch cut short", b"* 1 FETCH (UID 1\r\n", "FETCH", None, "the end of the line where a FETCH item should be"),
        (
            "uidvalidity code",
            b"* OK [UIDVALIDITY 4294967296] x\r\n",
            "status",
            None,
            "UIDVALIDITY 4294967296 is not a 32-bit number",
        ),
        ("code not closed", b"* OK [ALERT oops\r\n", "status", None, "a response code without its closing ]"),
        ("garbage", b"* (x)\r\n", "?", None, "an untagged response that starts with ("),
    ];
    for (name, input, kind, mailbox, error) in cases {
        let stream = [input, &b"* 5 EXISTS\r\n"[..]].concat();
        let got = parse(&stream).unwrap_or_else(|e| panic!("{name}: {e}"));
        let want = Untagged::Malformed(Malformed {
            kind: kind.into(),
            mailbox: mailbox.map(<[u8]>::to_vec),
            error: error.into(),
        });
        assert_eq!(got, vec![Response::Untagged(want), Response::Untagged(Untagged::Exists(5))], "{name}");
    }
}

#[test]
fn illegal_tagged_answers_and_limits_are_errors() {
    #[rustfmt::skip]
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("unknown status word", b"a1 MAYBE fine\r\n".to_vec(), "a tagged answer (a1) that is not OK, NO or BAD"),
        ("a line that is not IMAP", b"(hello)\r\n".to_vec(), "a response that starts with ("),
        ("bad code in a tagged answer", b"a1 OK [UIDNEXT x] y\r\n".to_vec(), "UIDNEXT \"x\" is not a number"),
        ("a body larger than its limit", b"* 1 FETCH (UID 1 BODY[] {2000000}\r\n".to_vec(), "a literal of 2000000 bytes for a message body exceeds the limit of 1048576"),
        ("a mailbox name larger than its limit", b"* LIST () \"/\" {5000}\r\n".to_vec(), "a literal of 5000 bytes for a mailbox name exceeds the limit of 1024"),
        ("a line of text longer than a token", [b"* OK ".to_vec(), vec![b'x'; 70_000], b"\r\n".to_vec()].concat(), "longer than 65536 bytes"),
    ];
    for (name, input, want) in cases {
        let e = parse_all(&input, 4096).expect_err(name).to_string();
        assert!(e.contains(want), "{name}: {e}");
    }
}

/// A small deterministic generator: the property test is the same on every run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A string item as a quoted string or a literal, at random.
fn string(rng: &mut Rng, bytes: &[u8]) -> Vec<u8> {
    let quotable = bytes.iter().all(|b| (0x20..0x7f).contains(b));
    if quotable && rng.below(2) == 0 {
        let mut q = vec![b'"'];
        for &b in bytes {
            if b == b'"' || b == b'\\' {
                q.push(b'\\');
            }
            q.push(b);
        }
        q.push(b'"');
        q
    } else {
        [format!("{{{}}}\r\n", bytes.len()).as_bytes(), bytes].concat()
    }
}

#[test]
fn property_any_item_order_string_form_and_split_gives_the_same_messages() {
    let keywords = ["$MyUID", "liquid", "$Label1", "NonJunk", "$Forwarded", "a[1", "UID", "FLAGS"];
    let system = ["\\Seen", "\\Answered", "\\Flagged", "\\Draft", "\\Deleted", "\\Recent"];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for round in 0..400 {
        let n = 1 + rng.below(4);
        let mut stream = Vec::new();
        let mut want = Vec::new();
        for i in 0..n {
            let uid = 1 + rng.next() as u32 % 100_000;
            let mut words: Vec<&str> = Vec::new();
            for w in keywords.iter().chain(&system) {
                if rng.below(3) == 0 {
                    words.push(w);
                }
            }
            let alphabet = b"ab)(\r\n{}\"\\* UID 7 FLAGS";
            let body: Vec<u8> = (0..rng.below(300)).map(|_| alphabet[rng.below(alphabet.len())]).collect();
            let date = "17-Jul-1996 02:44:25 -0700";
            let size = body.len() as u32;
            let modseq = rng.next() >> 1;
            let mut items: Vec<Vec<u8>> = vec![
                format!("UID {uid}").into_bytes(),
                format!("FLAGS ({})", words.join(" ")).into_bytes(),
                [b"INTERNALDATE ".to_vec(), string(&mut rng, date.as_bytes())].concat(),
                format!("RFC822.SIZE {size}").into_bytes(),
                format!("MODSEQ ({modseq})").into_bytes(),
                [b"BODY[] ".to_vec(), string(&mut rng, &body)].concat(),
            ];
            // any order the RFC allows: items are a list, servers choose
            for k in (1..items.len()).rev() {
                items.swap(k, rng.below(k + 1));
            }
            let seq = i as u32 + 1;
            stream.extend_from_slice(format!("* {seq} FETCH (").as_bytes());
            stream.extend_from_slice(&items.join(&b' '));
            stream.extend_from_slice(b")\r\n");
            if rng.below(3) == 0 {
                // unsolicited data between the answers
                stream.extend_from_slice(b"* 7 EXISTS\r\n* 2 FETCH (FLAGS (\\Seen))\r\n");
            }
            want.push(FetchData {
                seq,
                uid: Some(uid),
                flags: Some(Flags::from_words(words.iter().copied())),
                size: Some(size),
                internal_date: Some(837596665),
                modseq: Some(modseq),
                body: Some(Some(body)),
                ..FetchData::default()
            });
        }
        stream.extend_from_slice(b"r1 OK done\r\n");
        let chunk = 1 + rng.below(40);
        let got = parse_all(&stream, chunk).unwrap_or_else(|e| panic!("round {round}: {e}"));
        let messages: Vec<FetchData> = got
            .into_iter()
            .filter_map(|r| match r {
                Response::Untagged(Untagged::Fetch(f)) if f.uid.is_some() => Some(*f),
                _ => None,
            })
            .collect();
        assert_eq!(messages, want, "round {round}, chunk {chunk}");
    }
}

#[test]
fn internal_dates() {
    #[rustfmt::skip]
    let cases: &[(&str, &str, Option<i64>)] = &[
        ("rfc example", "17-Jul-1996 02:44:25 -0700", Some(837596665)),
        ("utc", "01-Jan-1970 00:00:00 +0000", Some(0)),
        ("one-digit day", "2-Mar-2026 10:00:00 +0000", Some(1772445600)),
        ("space-padded day", " 2-Mar-2026 10:00:00 +0100", Some(1772442000)),
        ("month in caps", "02-MAR-2026 10:00:00 +0000", Some(1772445600)),
        ("bad month", "02-Foo-2026 10:00:00 +0000", None),
        ("bad zone", "02-Mar-2026 10:00:00 0000", None),
        ("no such day", "31-Feb-2026 10:00:00 +0000", None),
        ("no time", "02-Mar-2026", None),
    ];
    for (name, input, want) in cases {
        assert_eq!(internal_date(input.as_bytes()), *want, "{name}");
    }
}

/// The fuzz seeds (fuzz/corpus/imap_fetch: a mode byte, a limit byte, then the server's bytes;
/// fuzz/corpus/imap_response: a read-size byte, then the server's bytes) read as raw server
/// answers, whole and byte by byte: no panic, and every body is as long as a `{N}` says.
#[test]
fn fuzz_seeds_read_without_panic_and_bodies_are_announced_literals() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    let mut n = 0;
    for (target, skip) in [("imap_fetch", 2), ("imap_response", 1)] {
        for entry in std::fs::read_dir(root.join(target)).unwrap() {
            let data = std::fs::read(entry.unwrap().path()).unwrap();
            let stream = data.get(skip..).unwrap_or_default();
            for chunk in [1, 7, 1 << 16] {
                let mut r = Reader::new(Fake::new(stream, chunk), Limits::default());
                let lim = ParseLimits::default();
                while r.get_ref().reply.position() < stream.len() as u64 || r.has_buffered() {
                    match read_response(&mut r, &lim) {
                        Ok(Response::Untagged(Untagged::Fetch(f))) => {
                            if let Some(Some(body)) = f.body {
                                let announced = format!("{{{}}}", body.len()).into_bytes();
                                let plus = format!("{{{}+}}", body.len()).into_bytes();
                                let found = |pat: &[u8]| stream.windows(pat.len()).any(|w| w == pat);
                                assert!(found(&announced) || found(&plus), "{target}: a body no {{N}} announced");
                            }
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            }
            n += 1;
        }
    }
    assert!(n >= 10, "only {n} seeds in {}", root.display());
}
