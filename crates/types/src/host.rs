//! Whether a host name is this machine: where plain text is allowed (a test server, a local
//! proxy) and compression costs more than it saves.

/// `localhost` (any case), or a loopback address (127.0.0.0/8, ::1; IPv6 in brackets too).
pub fn is_loopback(host: &str) -> bool {
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    bare.eq_ignore_ascii_case("localhost") || bare.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_hosts() {
        let cases = [
            ("name", "localhost", true),
            ("name in capitals", "LocalHost", true),
            ("v4", "127.0.0.1", true),
            ("v4, another of 127/8", "127.1.2.3", true),
            ("v6", "::1", true),
            ("v6 in brackets", "[::1]", true),
            ("a name that starts like loopback", "127.0.0.1.example", false),
            ("a remote name", "imap.example.com", false),
            ("a remote address", "192.0.2.1", false),
        ];
        for (name, host, want) in cases {
            assert_eq!(super::is_loopback(host), want, "{name}");
        }
    }
}
