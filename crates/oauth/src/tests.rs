use super::*;

const EP: &str = "https://login.example/token";
const NOW: i64 = 1_000_000;

fn tokens(access: &str, expires_in: i64, refresh: Option<&str>) -> Answer {
    Answer::Tokens(Tokens {
        access_token: access.into(),
        expires_at: NOW + expires_in,
        refresh_token: refresh.map(str::to_owned),
    })
}

fn needs(code: &str, description: &str) -> Error {
    Error::NeedsAuthorization { endpoint: EP.into(), code: code.into(), description: description.into() }
}

fn unavailable(detail: &str) -> Error {
    Error::Unavailable { endpoint: EP.into(), detail: detail.into() }
}

fn invalid(detail: &str) -> Error {
    Error::Invalid { endpoint: EP.into(), detail: detail.into() }
}

#[test]
fn token_endpoint_answers() {
    struct Case {
        name: &'static str,
        status: u16,
        body: &'static str,
        want: Result<Answer, Error>,
    }
    let cases = [
        Case {
            name: "refresh without rotation",
            status: 200,
            body: r#"{"access_token":"at","token_type":"Bearer","expires_in":3599,"scope":"x"}"#,
            want: Ok(tokens("at", 3599, None)),
        },
        Case {
            name: "rotated refresh token",
            status: 200,
            body: r#"{"access_token":"at","token_type":"bearer","expires_in":60,"refresh_token":"rt2"}"#,
            want: Ok(tokens("at", 60, Some("rt2"))),
        },
        Case {
            name: "expires_in as a string (Azure AD v1)",
            status: 200,
            body: r#"{"access_token":"at","token_type":"Bearer","expires_in":"3599"}"#,
            want: Ok(tokens("at", 3599, None)),
        },
        Case {
            name: "no expires_in: an hour",
            status: 200,
            body: r#"{"access_token":"at","token_type":"Bearer"}"#,
            want: Ok(tokens("at", 3600, None)),
        },
        Case {
            name: "revoked",
            status: 400,
            body: r#"{"error":"invalid_grant","error_description":"Token has been expired or revoked."}"#,
            want: Err(needs("invalid_grant", "Token has been expired or revoked.")),
        },
        Case {
            name: "wrong client secret",
            status: 401,
            body: r#"{"error":"invalid_client"}"#,
            want: Err(needs("invalid_client", "")),
        },
        Case {
            name: "device: pending",
            status: 400,
            body: r#"{"error":"authorization_pending"}"#,
            want: Ok(Answer::Pending),
        },
        Case { name: "device: slow down", status: 400, body: r#"{"error":"slow_down"}"#, want: Ok(Answer::SlowDown) },
        Case {
            name: "device: the user said no",
            status: 400,
            body: r#"{"error":"access_denied"}"#,
            want: Err(needs("access_denied", "")),
        },
        Case {
            name: "temporarily unavailable",
            status: 503,
            body: r#"{"error":"temporarily_unavailable"}"#,
            want: Err(unavailable("temporarily_unavailable")),
        },
        Case {
            name: "a proxy's error page",
            status: 502,
            body: "<html>Bad Gateway</html>",
            want: Err(unavailable("HTTP 502")),
        },
        Case { name: "html with 200", status: 200, body: "<html>", want: Err(invalid("HTTP 200, not JSON")) },
        Case {
            name: "no access token",
            status: 200,
            body: r#"{"token_type":"Bearer"}"#,
            want: Err(invalid("no access_token")),
        },
        Case {
            name: "not a bearer token",
            status: 200,
            body: r#"{"access_token":"at","token_type":"mac"}"#,
            want: Err(invalid("token_type \"mac\", not Bearer")),
        },
        Case {
            name: "negative lifetime",
            status: 200,
            body: r#"{"access_token":"at","expires_in":-5}"#,
            want: Err(invalid("expires_in is not a positive number")),
        },
        Case {
            name: "a token with a line end",
            status: 200,
            body: r#"{"access_token":"a\r\nt","expires_in":5}"#,
            want: Err(invalid("no access_token")),
        },
        Case {
            name: "a 4xx without a code",
            status: 403,
            body: r#"{"message":"forbidden"}"#,
            want: Err(invalid("HTTP 403 without an error code")),
        },
        Case {
            name: "an error description cannot break a log line",
            status: 400,
            body: r#"{"error":"invalid_grant","error_description":"a\nb"}"#,
            want: Err(needs("invalid_grant", "ab")),
        },
    ];
    for c in cases {
        assert_eq!(parse_answer(EP, c.status, c.body, NOW), c.want, "{}", c.name);
    }
}

#[test]
fn device_authorization_answers() {
    let google = r#"{"device_code":"dc","user_code":"ABCD-EFGH","verification_url":"https://www.google.com/device","expires_in":1800,"interval":5}"#;
    let d = parse_device_answer(EP, 200, google, NOW).unwrap();
    assert_eq!(
        (d.device_code.as_str(), d.user_code.as_str(), d.verification_uri.as_str(), d.interval, d.expires_at),
        ("dc", "ABCD-EFGH", "https://www.google.com/device", 5, NOW + 1800),
        "google spells it verification_url"
    );
    let microsoft = r#"{"device_code":"dc","user_code":"X1","verification_uri":"https://microsoft.com/devicelogin","expires_in":"900","message":"To sign in…"}"#;
    let d = parse_device_answer(EP, 200, microsoft, NOW).unwrap();
    assert_eq!((d.verification_uri.as_str(), d.interval), ("https://microsoft.com/devicelogin", 5), "no interval: 5 s");
    let cases = [
        ("no user code", 200, r#"{"device_code":"dc","verification_uri":"u","expires_in":5}"#, invalid("no user_code")),
        (
            "no device code",
            200,
            r#"{"user_code":"u","verification_uri":"u","expires_in":5}"#,
            invalid("no device_code"),
        ),
        (
            "zero interval",
            200,
            r#"{"device_code":"d","user_code":"u","verification_uri":"u","expires_in":5,"interval":0}"#,
            invalid("interval is not a positive number"),
        ),
        ("an error", 401, r#"{"error":"invalid_client"}"#, needs("invalid_client", "")),
        (
            "pending out of place",
            400,
            r#"{"error":"authorization_pending"}"#,
            invalid("a polling answer to the start of a device authorization"),
        ),
    ];
    for (name, status, body, want) in cases {
        assert_eq!(parse_device_answer(EP, status, body, NOW).unwrap_err(), want, "{name}");
    }
}

#[test]
fn when_to_refresh() {
    let cases = [
        ("none held", None, true),
        ("plenty left", Some(NOW + 3600), false),
        ("just above the margin", Some(NOW + 300), false),
        ("inside the margin", Some(NOW + 299), true),
        ("expired", Some(NOW - 1), true),
    ];
    for (name, expires_at, want) in cases {
        assert_eq!(needs_refresh(expires_at, NOW, 300), want, "{name}");
    }
}

#[test]
fn poll_intervals() {
    assert_eq!(next_interval(5, &Answer::SlowDown), 10, "slow_down adds 5 s");
    assert_eq!(next_interval(5, &Answer::Pending), 5, "pending keeps it");
    assert_eq!(next_interval(u64::MAX, &Answer::SlowDown), u64::MAX, "never wraps");
}

#[test]
fn endpoints() {
    let cases = [
        ("https", "https://oauth2.googleapis.com/token", true),
        ("http to loopback", "http://127.0.0.1:8080/token", true),
        ("http to localhost", "http://localhost/token", true),
        ("http to ipv6 loopback", "http://[::1]:99/token", true),
        ("http elsewhere", "http://login.example/token", false),
        ("http to a name that starts like loopback", "http://127.0.0.1.example/token", false),
        ("not http", "ftp://x/y", false),
    ];
    for (name, url, ok) in cases {
        assert_eq!(check_endpoint(url).is_ok(), ok, "{name}");
    }
}

#[test]
fn presets() {
    let m = Provider::Microsoft.preset("contoso.onmicrosoft.com");
    assert_eq!(m.token_endpoint, "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token");
    assert_eq!(m.device_endpoint, "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/devicecode");
    assert!(m.scopes.iter().any(|s| s == "offline_access"));
    let g = Provider::Google.preset("common");
    assert_eq!(g.scopes, vec!["https://mail.google.com/".to_string()]);
}

#[test]
fn debug_hides_secrets() {
    let s = Settings {
        token_endpoint: EP.into(),
        device_endpoint: None,
        client_id: "cid".into(),
        client_secret: Some("s3cret".into()),
        scopes: vec![],
    };
    let t = Tokens { access_token: "at-1".into(), expires_at: 0, refresh_token: Some("rt-1".into()) };
    let d = DeviceCode {
        device_code: "dc-1".into(),
        user_code: "U".into(),
        verification_uri: "v".into(),
        verification_uri_complete: None,
        interval: 5,
        expires_at: 0,
    };
    let shown = format!("{s:?} {t:?} {d:?}");
    for secret in ["s3cret", "at-1", "rt-1", "dc-1"] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
}
