//! AUTH with an OAuth2 access token against aiosmtpd checking it at testkit's token server
//! (issue 19): a good token signs in and a message goes through; a refused one's error
//! challenge is answered and reported as a sign-in error naming the server's status.

use std::time::Duration;

use backproc_smtp::{Credential, Envelope, ErrorKind, Params, Security, Smtp};
use backproc_testkit::{PySmtp, TokenServer};

fn params(port: u16, token: &str) -> Params {
    Params {
        host: "127.0.0.1".into(),
        port,
        security: Security::None,
        login: Some("gus".into()),
        credential: Some(Credential::Bearer(token.into())),
        ca_pem: None,
        insecure: false,
        timeout: Duration::from_secs(10),
    }
}

#[test]
fn a_bearer_token_signs_in_and_a_refused_one_names_the_status() {
    let ts = TokenServer::start().unwrap();
    let server = PySmtp::start_oauth(&ts.introspection_url()).unwrap();
    let mut smtp = Smtp::connect(&params(server.port(), &ts.issue_access_token("gus"))).expect("signed in");
    let to = vec!["r@backproc.test".to_string()];
    let Envelope::Open(open) = smtp.envelope("gus@backproc.test", &to) else { panic!("envelope refused") };
    let (sent, _) = smtp.data(open, b"Subject: s\r\n\r\nbody\r\n", None);
    assert_eq!(sent.expect("accepted").accepted, to);
    smtp.quit();
    let bad = "at-never-issued-0123456789";
    let e = Smtp::connect(&params(server.port(), bad)).err().expect("refused");
    assert_eq!(e.kind, ErrorKind::Auth, "{e}");
    assert!(e.to_string().contains("AUTH OAUTHBEARER") && e.to_string().contains("status: 401"), "{e}");
    assert!(!e.to_string().contains(bad));
    let log = server.auth_log().unwrap();
    assert_eq!(
        log.iter().map(|a| (a.mechanism.as_str(), a.accepted)).collect::<Vec<_>>(),
        [("OAUTHBEARER", true), ("OAUTHBEARER", false)]
    );
    assert_eq!(server.messages().unwrap().len(), 1);
}
