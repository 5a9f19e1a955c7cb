//! Outbox helpers for the send-side fault tests: a home whose account sends through a given
//! SMTP port, entries queued straight into the store (each with its own Message-ID), and the
//! Message-IDs of what an SMTP sink received.

use std::collections::BTreeMap;

use backproc_testkit::mailgen;

/// The lease of `util::send_short_lease`, in seconds.
pub const LEASE: u64 = 10;

/// The Message-ID (without angle brackets) of queued message `i` of run `seed`.
pub fn message_id(seed: u64, i: usize) -> String {
    format!("send.{seed:x}.{i}@backproc.test")
}

/// Queues `n` messages (to one recipient each) with `Store::outbox_add`, as an application
/// inserting rows would; returns entry id → Message-ID.
pub fn queue(store: &mut backproc_store::Store, account: i64, seed: u64, n: usize) -> BTreeMap<i64, String> {
    let now = backproc_store::now();
    (0..n)
        .map(|i| {
            let mid = message_id(seed, i);
            let raw = mailgen::message_with(
                &format!("queued {i}"),
                "carol@backproc.test",
                "rcpt@x.test",
                "Mon, 23 Nov 2026 10:00:00 +0000",
                &mid,
                &format!("message {i} of run {seed:x}\nsecond line\n"),
            );
            let id = store
                .outbox_add(account, &mid, "carol@backproc.test", &["rcpt@x.test".to_string()], &raw, false, now)
                .expect("outbox_add");
            (id, mid)
        })
        .collect()
}

/// Message-ID → how many times it is in the sink's dump (the dump keeps every transaction).
pub fn sink_counts(sink: &backproc_testkit::SmtpSink) -> BTreeMap<String, usize> {
    let re = regex::Regex::new(r"(?mi)^Message-ID:[ \t]*<([^>\r\n]+)>").unwrap();
    let mut out = BTreeMap::new();
    for m in sink.messages().expect("read the sink's dump") {
        let text = String::from_utf8_lossy(&m);
        let mid = re.captures(&text).map_or_else(|| "(no Message-ID)".to_string(), |c| c[1].to_string());
        *out.entry(mid).or_insert(0) += 1;
    }
    out
}

/// What must hold at every kill point and at the end: integrity aside, every message in the
/// sink is a queued one and is there at most once (the outbox never sends twice on its own);
/// every SUCCESS entry really is in the sink (no SUCCESS without a send); an ERROR is only the
/// lease expiry's "outcome unknown" (smtp-sink refuses nothing).
pub fn check_send_invariants(
    recs: &[backproc_store::outbox::OutboxRecord],
    sink: &BTreeMap<String, usize>,
    by_mid: &BTreeMap<&str, i64>,
    when: &str,
) {
    for (mid, c) in sink {
        assert!(by_mid.contains_key(mid.as_str()), "{when}: the sink got {mid:?}, which was never queued");
        assert_eq!(*c, 1, "{when}: {mid} is in the sink {c} times");
    }
    for r in recs {
        let in_sink = sink.get(&r.message_id).copied().unwrap_or(0);
        match r.state.as_str() {
            "SUCCESS" => {
                assert_eq!(in_sink, 1, "{when}: entry {} is SUCCESS but not in the sink: {r:?}", r.id);
                assert_eq!(
                    r.info.as_ref().map(|i| i.message_id.as_str()),
                    Some(r.message_id.as_str()),
                    "{when}: {r:?}"
                );
            }
            "ERROR" => {
                let e = r.error.as_deref().unwrap_or_default();
                assert!(e.contains("outcome unknown"), "{when}: entry {} is ERROR for another reason: {r:?}", r.id);
            }
            "PENDING" | "RETRY" => {
                assert_eq!(in_sink, 0, "{when}: entry {} is {} but already in the sink", r.id, r.state)
            }
            "PROCESSING" if !r.sending => {
                assert_eq!(in_sink, 0, "{when}: entry {} is only claimed ahead but already in the sink", r.id)
            }
            _ => {}
        }
    }
}
