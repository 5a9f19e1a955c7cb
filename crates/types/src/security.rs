/// How a connection to a mail server is protected: TLS from the first byte (IMAPS on 993,
/// SMTPS on 465), STARTTLS after the greeting, or none (refused off loopback unless the
/// account allows it). One type for IMAP, SMTP, the store and the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize), serde(rename_all = "lowercase"))]
pub enum Security {
    Ssl,
    StartTls,
    None,
}

crate::words::words!(Security { Ssl => "ssl", StartTls => "starttls", None => "none" });

#[cfg(test)]
mod tests {
    use super::Security;

    #[test]
    fn names_round_trip() {
        for &name in Security::NAMES {
            assert_eq!(Security::parse(name).map(Security::as_str), Some(name));
        }
        assert_eq!(Security::parse("STARTTLS"), None, "written in lower case only");
        assert_eq!(Security::parse("tls"), None);
    }
}
