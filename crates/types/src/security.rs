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

impl Security {
    /// Every value, as the store and the command line write them.
    pub const NAMES: [&'static str; 3] = ["ssl", "starttls", "none"];

    /// As the store and the command line write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Security::Ssl => "ssl",
            Security::StartTls => "starttls",
            Security::None => "none",
        }
    }

    /// From its written form; `None` for anything else.
    pub fn parse(s: &str) -> Option<Security> {
        match s {
            "ssl" => Some(Security::Ssl),
            "starttls" => Some(Security::StartTls),
            "none" => Some(Security::None),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Security;

    #[test]
    fn names_round_trip() {
        for name in Security::NAMES {
            assert_eq!(Security::parse(name).map(Security::as_str), Some(name));
        }
        assert_eq!(Security::parse("STARTTLS"), None, "written in lower case only");
        assert_eq!(Security::parse("tls"), None);
    }
}
