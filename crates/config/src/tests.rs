//! config.inc reader: a table of valid and invalid inputs, and the edge cases around it.

use super::*;

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
            Err(&[(1, "EMAIL_BG_HI_FOLDERS_RECENT_SYNC_INTERVAL = - 5 is out of range")]),
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
            Err(&[(1, "BACKPROC_PID_LOCATION = '' has the wrong type: expected a non-empty 'string'")]),
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

#[test]
fn sources_say_default_or_the_line() {
    let l = parse(b"<?php\n\ndefine('BG_MAX_THREADS', 3);\n", "config.inc").unwrap();
    let e = l.entries();
    assert_eq!(e.len(), specs().len());
    let t = e.iter().find(|e| e.name == "BG_MAX_THREADS").unwrap();
    assert_eq!((t.value.to_string(), t.source.as_str()), ("3".into(), "config.inc:3"));
    let d = e.iter().find(|e| e.name == "EMAIL_BG_LO_FOLDERS_SYNC_START").unwrap();
    assert_eq!((d.value.to_string(), d.source.as_str()), ("'20:00'".into(), "default"));
    assert_eq!(l.config.bg_max_threads, 3);
}

#[test]
fn duplicates_warn_and_the_later_wins() {
    let l = parse(b"<?php\ndefine('BG_MAX_THREADS', 3);\ndefine('BG_MAX_THREADS', 4);", "config.inc").unwrap();
    assert_eq!(l.config.bg_max_threads, 4);
    assert_eq!(l.warnings.len(), 1);
    assert_eq!(
        l.warnings[0].to_string(),
        "config.inc:3: BG_MAX_THREADS defined again (first at line 2); the later value wins"
    );
}

#[test]
fn misspellings_warn_with_the_intended_name() {
    let l = parse(
        b"<?php\ndefine('BG_MAX_THREAD', 3);\ndefine('bg_max_threads', 3);\ndefine('EMAIL_OUTBOX_ENABLD', TRUE);\ndefine('DB_HOST', 'x');",
        "config.inc",
    )
    .unwrap();
    let w: Vec<String> = l.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(w.len(), 3, "{w:?}");
    assert!(w[0].starts_with("config.inc:2: unknown constant BG_MAX_THREAD, did you mean BG_MAX_THREADS?"));
    assert!(w[1].contains("bg_max_threads, did you mean BG_MAX_THREADS?"));
    assert!(w[2].contains("EMAIL_OUTBOX_ENABLD, did you mean EMAIL_OUTBOX_ENABLED?"));
    assert_eq!(l.config.bg_max_threads, 14);
}

#[test]
fn a_realistic_application_config() {
    let text = r#"<?php
/**
 * eDokumenty configuration
 */
define('DB_HOST', 'localhost');
define('DB_NAME', "edokumenty");
define('DB_USER', 'edok');
define('DB_PASS', 'p@ss;word//#');
define('APP_ROOT', dirname(__FILE__) . '/..');
define('UPLOAD_DIR', APP_ROOT . '/upload');
define('DEBUG', false);
define('MAX_UPLOAD', 1024 * 1024 * 20);
define('LANGS', ['pl', 'en']);
define('SESSION_TIMEOUT', 3600);
$config['mail'] = array('host' => 'smtp', 'port' => 25);
if (!defined('X')) { define('X', 1); }
function helper($a) { return $a * 2; }
define('EMAIL_OUTBOX_ENABLED', TRUE);
define('EMAIL_BACKGROUND_SYNC_ENABLED', TRUE);
define('BG_MAX_THREADS', 4); // fewer threads on this box
define('EMAIL_BG_LO_FOLDERS_SYNC_START', '21:30');
define('CACHE_DIR', '/tmp/cache');
define('THEME', 'default');
define('LOG_LEVEL', 3);
define('SMTP_HOST', 'mail.example.org');
define('SMTP_PORT', 587);
define('FEATURE_A', true);
define('FEATURE_B', false);
define('FEATURE_C', null);
define('VERSION', '5.1.2');
define('BUILD', 20240824);
define('TZ', 'Europe/Warsaw');
date_default_timezone_set(TZ);
define('ADMIN_MAIL', 'admin@example.org');
define('ITEMS_PER_PAGE', 50);
?>
"#;
    let l = parse(text.as_bytes(), "config.inc").unwrap();
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    assert!(l.config.email_outbox_enabled && l.config.email_background_sync_enabled);
    assert_eq!(l.config.bg_max_threads, 4);
    assert_eq!(l.config.email_bg_lo_folders_sync_start, TimeOfDay { hour: 21, minute: 30 });
    let src = l.entries().into_iter().find(|e| e.name == "BG_MAX_THREADS").unwrap().source;
    assert_eq!(src, "config.inc:20");
}

#[test]
fn garbage_never_panics() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let alphabet = b"define('BG_MAX_THREADS', \"0x1_2\\/*#?><php)(;,-\n\r\xff\xfe\x00TRUE";
    for _ in 0..5000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = (x % 80) as usize;
        let mut buf = Vec::with_capacity(len);
        let mut y = x;
        for _ in 0..len {
            y ^= y << 13;
            y ^= y >> 7;
            y ^= y << 17;
            buf.push(alphabet[(y % alphabet.len() as u64) as usize]);
        }
        let _ = parse(&buf, "config.inc");
    }
}

#[test]
fn a_missing_file_means_defaults() {
    let l = load(Path::new("definitely/not/here/config.inc")).unwrap();
    assert!(l.file_missing);
    assert_eq!(l.config, Config::default());
    assert!(l.entries().iter().all(|e| e.source == "default"));
}

#[test]
fn the_example_file_documents_every_constant_with_its_default() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../config.inc.example")).unwrap();
    // uncommented, the example must parse to exactly the defaults
    let uncommented = text.replace("// define(", "define(");
    let l = parse(uncommented.as_bytes(), "config.inc.example").unwrap();
    assert_eq!(l.config, Config::default());
    for s in specs() {
        assert!(
            text.contains(&format!("define('{}', {});", s.name, s.default)),
            "{} missing from config.inc.example",
            s.name
        );
    }
}

#[test]
fn values_render_as_php() {
    assert_eq!(Value::Bool(true).to_string(), "TRUE");
    assert_eq!(Value::Str("it's".into()).to_string(), "'it\\'s'");
    assert_eq!(Value::Time(TimeOfDay { hour: 7, minute: 5 }).to_string(), "'07:05'");
}
