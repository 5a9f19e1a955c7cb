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
            Err(&[(
                1,
                "EMAIL_BG_HI_FOLDERS_RECENT_SYNC_INTERVAL = -5 is out of range: expected an integer (seconds) from 1 to 604800",
            )]),
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
        // PHP's lexical corners
        ("octal int", "<?php define('BG_LOG_KEEP', 010);", Ok(vec![("BG_LOG_KEEP", int(8))])),
        ("binary int", "<?php define('BG_LOG_KEEP', 0b101);", Ok(vec![("BG_LOG_KEEP", int(5))])),
        ("explicit octal", "<?php define('BG_LOG_KEEP', 0o17);", Ok(vec![("BG_LOG_KEEP", int(15))])),
        ("minus zero", "<?php define('BG_LOG_KEEP', -0);", Ok(vec![("BG_LOG_KEEP", int(0))])),
        (
            "bool as 0",
            "<?php define('EMAIL_BG_SENT_APPEND', 0);",
            Ok(vec![("EMAIL_BG_SENT_APPEND", Value::Bool(false))]),
        ),
        (
            "octal and NUL-free escapes",
            r#"<?php define('BACKPROC_PID_LOCATION', "\101\t\"q\"");"#,
            Ok(vec![("BACKPROC_PID_LOCATION", Value::Str("A\t\"q\"".into()))]),
        ),
        (
            "single quotes keep \\n",
            r"<?php define('BACKPROC_PID_LOCATION', 'a\nb');",
            Ok(vec![("BACKPROC_PID_LOCATION", Value::Str("a\\nb".into()))]),
        ),
        (
            "close tag ends a line comment",
            "<?php // note ?>text it's <?php define('BG_MAX_THREADS', 13);",
            Ok(vec![("BG_MAX_THREADS", int(13))]),
        ),
        (
            "close tag inside a block comment is no close tag",
            "<?php /* ?> it's */ define('BG_MAX_THREADS', 15);",
            Ok(vec![("BG_MAX_THREADS", int(15))]),
        ),
        (
            "inline html between php blocks",
            "<p>don't</p><?php define('BG_MAX_THREADS', 16); ?>\n<b>\"</b>\n<?= 1 ?>",
            Ok(vec![("BG_MAX_THREADS", int(16))]),
        ),
        (
            "defines in strings and html are text",
            "define('BG_MAX_THREADS', 0);<?php $s = \"define('BG_MAX_THREADS', 0);\";",
            Ok(vec![("BG_MAX_THREADS", int(14))]),
        ),
        (
            "heredoc and nowdoc with quotes",
            "<?php\n$a = <<<EOT\nIt's \"here\"\nEOT;\n$b = <<<'N'\n  don't\n  N;\ndefine('BG_MAX_THREADS', 17);",
            Ok(vec![("BG_MAX_THREADS", int(17))]),
        ),
        (
            "methods named define are not define()",
            "<?php $o->define('BG_MAX_THREADS', 0); X::define('BG_MAX_THREADS', 0); function define($a) {}",
            Ok(vec![("BG_MAX_THREADS", int(14))]),
        ),
        (
            "guarded define and namespaced define",
            "<?php if (!defined('BG_MAX_THREADS')) \\define('BG_MAX_THREADS', 18);",
            Ok(vec![("BG_MAX_THREADS", int(18))]),
        ),
        (
            "broken unrelated statement is skipped",
            "<?php $x = ; foo(1, ; define('A', B . ;\ndefine('BG_MAX_THREADS', 19);",
            Ok(vec![("BG_MAX_THREADS", int(19))]),
        ),
        ("DEFINE in capitals", "<?php DEFINE('BG_MAX_THREADS', 20);", Ok(vec![("BG_MAX_THREADS", int(20))])),
        ("no php tag at all", "define('BG_MAX_THREADS', 21);", Ok(vec![("BG_MAX_THREADS", int(21))])),
        (
            "huge int",
            "<?php\ndefine('BG_LOG_MAX_SIZE', 999999999999999999999999999999999999999999);",
            Err(&[(2, "BG_LOG_MAX_SIZE = 999999999999999999999999999999999999999999 is out of range")]),
        ),
        (
            "interpolated string",
            "<?php define('BACKPROC_PID_LOCATION', \"$home/pid\");",
            Err(&[(1, "BACKPROC_PID_LOCATION = \"$home/pid\" is not a literal")]),
        ),
        (
            "constant as value",
            "<?php\ndefine('BG_MAX_THREADS', OTHER_LIMIT);",
            Err(&[(2, "BG_MAX_THREADS = OTHER_LIMIT is not a literal: expected an integer from 1 to 256")]),
        ),
        (
            "string for a seconds value",
            "<?php define('BG_TICK_INTERVAL', 'abc');",
            Err(&[(1, "BG_TICK_INTERVAL = 'abc' has the wrong type: expected an integer (seconds)")]),
        ),
        (
            "'1' for bool",
            "<?php define('EMAIL_OUTBOX_ENABLED', '1');",
            Err(&[(1, "EMAIL_OUTBOX_ENABLED = '1' has the wrong type: expected TRUE or FALSE")]),
        ),
        (
            "null lower",
            "<?php define('EMAIL_OUTBOX_ENABLED', null);",
            Err(&[(1, "EMAIL_OUTBOX_ENABLED = null is NULL")]),
        ),
        ("bad octal", "<?php define('BG_LOG_KEEP', 09);", Err(&[(1, "BG_LOG_KEEP = 09 has the wrong type")])),
        (
            "multi-line value reported at the define's line",
            "<?php\n\ndefine(\n  'BG_BACKUP_KEEP',\n  0\n);",
            Err(&[(3, "BG_BACKUP_KEEP = 0 is out of range: expected an integer from 1 to 1000")]),
        ),
        (
            "missing value",
            "<?php\ndefine('BG_MAX_THREADS');\ndefine('BG_TICK_INTERVAL', );",
            Err(&[(2, "BG_MAX_THREADS: cannot read"), (3, "BG_TICK_INTERVAL: cannot read")]),
        ),
        (
            "close tag inside an unclosed define",
            "<?php define('BG_MAX_THREADS', 5 ?> text",
            Err(&[(1, "BG_MAX_THREADS: cannot read this define(): expected define('BG_MAX_THREADS', 14);")]),
        ),
        (
            "unterminated heredoc",
            "<?php\ndefine('BG_MAX_THREADS', 3);\n$x = <<<EOT\nnever closed\n",
            Err(&[(3, "unterminated heredoc")]),
        ),
        (
            "error after an unrelated expression define",
            "<?php\ndefine('APP', dirname(__FILE__) . '/x');\ndefine('BG_SHUTDOWN_GRACE', 3601);",
            Err(&[(3, "BG_SHUTDOWN_GRACE = 3601 is out of range: expected an integer (seconds) from 0 to 3600")]),
        ),
        (
            "crlf keeps line numbers",
            "<?php\r\n// x\r\n\r\ndefine('BG_MAX_THREADS', 257);\r\n",
            Err(&[(4, "BG_MAX_THREADS = 257 is out of range")]),
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
