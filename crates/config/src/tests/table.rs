//! A table of valid and invalid config.inc inputs with the value or the error each gives.

use crate::*;

enum Expect {
    /// (constant, value) that must be in effect
    Ok(Vec<(&'static str, Value)>),
    /// (line, text that must appear in the error of that line, incl. the constant)
    Err(&'static [(usize, &'static str)]),
}

fn int(v: u64) -> Value {
    Value::Int(v)
}

fn table() -> Vec<(&'static str, &'static str, Expect)> {
    use Expect::*;
    vec![
        ("empty file", "", Ok(vec![])),
        ("only the php tag", "<?php\n", Ok(vec![])),
        ("int", "<?php define('BG_MAX_THREADS', 3);", Ok(vec![("BG_MAX_THREADS", Value::Int(3))])),
        ("double-quoted name", "<?php define(\"BG_MAX_THREADS\", 4);", Ok(vec![("BG_MAX_THREADS", Value::Int(4))])),
        (
            "spaces and newlines",
            "<?php\ndefine (\n  'BG_MAX_THREADS' ,\n  5\n) ;",
            Ok(vec![("BG_MAX_THREADS", Value::Int(5))]),
        ),
        (
            "true upper",
            "<?php define('EMAIL_OUTBOX_ENABLED', TRUE);",
            Ok(vec![("EMAIL_OUTBOX_ENABLED", Value::Bool(true))]),
        ),
        (
            "true lower",
            "<?php define('EMAIL_OUTBOX_ENABLED', true);",
            Ok(vec![("EMAIL_OUTBOX_ENABLED", Value::Bool(true))]),
        ),
        (
            "false mixed",
            "<?php define('EMAIL_OUTBOX_ENABLED', False);",
            Ok(vec![("EMAIL_OUTBOX_ENABLED", Value::Bool(false))]),
        ),
        (
            "bool as 1",
            "<?php define('EMAIL_BACKGROUND_SYNC_ENABLED', 1);",
            Ok(vec![("EMAIL_BACKGROUND_SYNC_ENABLED", Value::Bool(true))]),
        ),
        (
            "time",
            "<?php define('EMAIL_BG_LO_FOLDERS_SYNC_START', '07:30');",
            Ok(vec![("EMAIL_BG_LO_FOLDERS_SYNC_START", Value::Time(TimeOfDay { hour: 7, minute: 30 }))]),
        ),
        (
            "time one-digit hour",
            "<?php define('EMAIL_BG_LO_FOLDERS_SYNC_START', \"7:05\");",
            Ok(vec![("EMAIL_BG_LO_FOLDERS_SYNC_START", Value::Time(TimeOfDay { hour: 7, minute: 5 }))]),
        ),
        (
            "string",
            "<?php define('BACKPROC_PID_LOCATION', 'run/pid');",
            Ok(vec![("BACKPROC_PID_LOCATION", Value::Str("run/pid".into()))]),
        ),
        (
            "string with escapes",
            r#"<?php define('BACKPROC_PID_LOCATION', 'it\'s\\here');"#,
            Ok(vec![("BACKPROC_PID_LOCATION", Value::Str("it's\\here".into()))]),
        ),
        (
            "double-quoted escapes",
            r#"<?php define('BACKPROC_PID_LOCATION', "a\x41\$b\q");"#,
            Ok(vec![("BACKPROC_PID_LOCATION", Value::Str("aA$b\\q".into()))]),
        ),
        ("hex int", "<?php define('BG_MAX_THREADS', 0x10);", Ok(vec![("BG_MAX_THREADS", int(16))])),
        (
            "underscored int",
            "<?php define('BG_LOG_MAX_SIZE', 1_048_576);",
            Ok(vec![("BG_LOG_MAX_SIZE", int(1_048_576))]),
        ),
        ("third argument ignored", "<?php define('BG_MAX_THREADS', 6, true);", Ok(vec![("BG_MAX_THREADS", int(6))])),
        (
            "line comment",
            "<?php // define('BG_MAX_THREADS', 0);\ndefine('BG_MAX_THREADS', 7);",
            Ok(vec![("BG_MAX_THREADS", int(7))]),
        ),
        ("hash comment", "<?php # define('BG_MAX_THREADS', 0);\n", Ok(vec![("BG_MAX_THREADS", int(14))])),
        (
            "block comment",
            "<?php /* define('BG_MAX_THREADS', 0);\n define('X', 1); */ define('BG_MAX_THREADS', 8);",
            Ok(vec![("BG_MAX_THREADS", int(8))]),
        ),
        (
            "comment marker inside a string",
            "<?php define('BACKPROC_PID_LOCATION', 'a//b#c/*d');",
            Ok(vec![("BACKPROC_PID_LOCATION", Value::Str("a//b#c/*d".into()))]),
        ),
        (
            "close tag then html",
            "<?php define('BG_MAX_THREADS', 9); ?>\n<html>define is text</html>",
            Ok(vec![("BG_MAX_THREADS", int(9))]),
        ),
        (
            "other statements ignored",
            "<?php $x = 5; if ($x) { include 'a.php'; } foo(1, 2); define('BG_MAX_THREADS', 10);",
            Ok(vec![("BG_MAX_THREADS", int(10))]),
        ),
        (
            "unrelated non-literal defines ignored",
            "<?php define('APP_DIR', __DIR__ . '/x'); define('LIST', [1, 2]); define('BG_MAX_THREADS', 11);",
            Ok(vec![("BG_MAX_THREADS", int(11))]),
        ),
        ("crlf", "<?php\r\ndefine('BG_MAX_THREADS', 12);\r\n", Ok(vec![("BG_MAX_THREADS", int(12))])),
        ("max bound", "<?php define('BG_MAX_THREADS', 256);", Ok(vec![("BG_MAX_THREADS", int(256))])),
        ("zero grace allowed", "<?php define('BG_SHUTDOWN_GRACE', 0);", Ok(vec![("BG_SHUTDOWN_GRACE", int(0))])),
        // invalid ones: line and constant in the message
        (
            "zero threads",
            "<?php\ndefine('BG_MAX_THREADS', 0);",
            Err(&[(2, "BG_MAX_THREADS = 0 is out of range: expected an integer from 1 to 256")]),
        ),
        (
            "too many threads",
            "<?php\n\ndefine('BG_MAX_THREADS', 10000);",
            Err(&[(3, "BG_MAX_THREADS = 10000 is out of range")]),
        ),
        (
            "negative interval",
            "<?php define('EMAIL_BG_HI_FOLDERS_RECENT_SYNC_INTERVAL', -5);",
            Err(&[(1, "EMAIL_BG_HI_FOLDERS_RECENT_SYNC_INTERVAL = -5 is out of range: expected an integer (seconds) from 1 to 604800")]),
        ),
        (
            "time out of range",
            "<?php\ndefine('EMAIL_BG_LO_FOLDERS_SYNC_START', '25:61');",
            Err(&[(2, "EMAIL_BG_LO_FOLDERS_SYNC_START = '25:61' is not a time: expected 'HH:MM'")]),
        ),
        (
            "time garbage",
            "<?php define('EMAIL_BG_LO_FOLDERS_SYNC_START', 'eight');",
            Err(&[(1, "EMAIL_BG_LO_FOLDERS_SYNC_START = 'eight' is not a time")]),
        ),
        (
            "time as int",
            "<?php define('EMAIL_BG_LO_FOLDERS_SYNC_START', 20);",
            Err(&[(1, "EMAIL_BG_LO_FOLDERS_SYNC_START = 20 has the wrong type")]),
        ),
        (
            "string for int",
            "<?php define('BG_MAX_THREADS', 'abc');",
            Err(&[(1, "BG_MAX_THREADS = 'abc' has the wrong type: expected an integer")]),
        ),
        (
            "float for int",
            "<?php define('BG_MAX_THREADS', 2.5);",
            Err(&[(1, "BG_MAX_THREADS = 2.5 has the wrong type")]),
        ),
        (
            "yes for bool",
            "<?php define('EMAIL_OUTBOX_ENABLED', 'yes');",
            Err(&[(1, "EMAIL_OUTBOX_ENABLED = 'yes' has the wrong type: expected TRUE or FALSE")]),
        ),
        (
            "2 for bool",
            "<?php define('EMAIL_OUTBOX_ENABLED', 2);",
            Err(&[(1, "EMAIL_OUTBOX_ENABLED = 2 has the wrong type")]),
        ),
        ("null", "<?php define('BG_MAX_THREADS', NULL);", Err(&[(1, "BG_MAX_THREADS = NULL is NULL")])),
        (
            "expression for ours",
            "<?php define('BG_MAX_THREADS', 2 * 3);",
            Err(&[(1, "BG_MAX_THREADS = 2 * 3 is not a literal")]),
        ),
        (
            "empty string",
            "<?php define('BACKPROC_PID_LOCATION', '');",
            Err(&[(1, "BACKPROC_PID_LOCATION = '' is empty: expected a non-empty 'string'")]),
        ),
        (
            "unterminated define",
            "<?php\ndefine('BG_MAX_THREADS', 5",
            Err(&[(2, "BG_MAX_THREADS: cannot read this define()")]),
        ),
        (
            "unterminated string",
            "<?php\n\ndefine('BG_MAX_THREADS', 'x);\n",
            Err(&[(3, "BG_MAX_THREADS: cannot read this define()"), (3, "unterminated string")]),
        ),
        ("unterminated comment", "<?php /* \n\n", Err(&[(1, "unterminated comment")])),
        (
            "every error is reported",
            "<?php\ndefine('BG_MAX_THREADS', 0);\ndefine('BG_TICK_INTERVAL', 301);\ndefine('EMAIL_OUTBOX_ENABLED', 'no');",
            Err(&[(2, "BG_MAX_THREADS"), (3, "BG_TICK_INTERVAL = 301"), (4, "EMAIL_OUTBOX_ENABLED")]),
        ),
    ]
}

#[test]
fn table_of_inputs() {
    let t = table();
    assert!(t.len() >= 35);
    for (name, input, expect) in t {
        let got = parse(input.as_bytes(), "config.inc");
        match (expect, got) {
            (Expect::Ok(want), Ok(loaded)) => {
                let entries = loaded.entries();
                for (k, v) in &want {
                    let e = entries.iter().find(|e| e.name == *k).unwrap();
                    assert_eq!(&e.value, v, "{name}: {k}");
                }
            }
            (Expect::Err(want), Err(errs)) => {
                assert_eq!(errs.errors.len(), want.len(), "{name}: {errs}");
                for ((line, text), d) in want.iter().zip(&errs.errors) {
                    assert_eq!(d.line, *line, "{name}: {d}");
                    let shown = d.to_string();
                    assert!(shown.starts_with(&format!("config.inc:{line}: ")), "{name}: {shown}");
                    assert!(shown.contains(text), "{name}: {shown:?} lacks {text:?}");
                }
            }
            (Expect::Ok(_), Err(e)) => panic!("{name}: unexpected error {e}"),
            (Expect::Err(_), Ok(_)) => panic!("{name}: expected an error"),
        }
    }
}
