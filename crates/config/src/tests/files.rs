//! Whole files and properties: sources, warnings, a realistic application config, garbage.

use crate::*;
use std::path::Path;

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

/// fuzz/config_inc found this: a near-miss name with a newline in it split its warning over
/// two lines of output; the name is now shown escaped.
#[test]
fn a_misspelled_name_with_a_newline_warns_on_one_line() {
    let l = parse(b"<?php\ndefine('BG_MAX_T\nHREADS', 3);", "config.inc").unwrap();
    let w: Vec<String> = l.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(w, ["config.inc:2: unknown constant BG_MAX_T\\nHREADS, did you mean BG_MAX_THREADS?"]);
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
require_once __DIR__ . '/vendor/autoload.php';
include 'local.php';
ini_set('memory_limit', '512M');
$banner = <<<EOT
Don't panic, it's "fine"
EOT;
define('EXTENSIONS', array('pdf' => 'application/pdf', "doc" => 1));
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

#[test]
fn random_bytes_and_truncations_never_panic() {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..3000 {
        let len = (next() % 200) as usize;
        let buf: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let _ = parse(&buf, "config.inc");
    }
    // every prefix of a file full of PHP corners, so each construct is cut at every byte
    let text = "<?php /* c */ # h\n// d\n$a = <<<EOT\nIt's\nEOT;\n$b = <<<'N'\nx\nN;\ndefine(\"BG_MAX_THREADS\", 0x1_0);\n\
                define('BACKPROC_PID_LOCATION', \"p\\x41\\101$v\"); ?>html<?= 1 ?><?php define('X', [1, (2)]);";
    for end in 0..=text.len() {
        let _ = parse(&text.as_bytes()[..end], "config.inc");
    }
}

#[test]
fn every_error_is_collected_and_shown_one_per_line() {
    let e = parse(
        b"<?php\ndefine('BG_MAX_THREADS', 0);\n$x = 1;\ndefine('EMAIL_BG_LO_FOLDERS_SYNC_START', '25:61');\ndefine('BG_TICK_INTERVAL', -1);\n",
        "config.inc",
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "config.inc:2: BG_MAX_THREADS = 0 is out of range: expected an integer from 1 to 256\n\
         config.inc:4: EMAIL_BG_LO_FOLDERS_SYNC_START = '25:61' is not a time: expected 'HH:MM' from 00:00 to 23:59\n\
         config.inc:5: BG_TICK_INTERVAL = -1 is out of range: expected an integer (seconds) from 1 to 300"
    );
}

#[test]
fn sources_use_the_label_given() {
    let l = parse(b"<?php\ndefine('BG_LOG_KEEP', 2);", "my.inc").unwrap();
    assert_eq!(l.label(), "my.inc");
    assert_eq!(l.source("BG_LOG_KEEP"), Some(Source::File { line: 2 }));
    assert_eq!(l.source("BG_MAX_THREADS"), Some(Source::Default));
    assert_eq!(l.source("NOT_OURS"), None);
    assert_eq!(Source::File { line: 2 }.to_string(), "config.inc:2");
    assert_eq!(Source::Default.to_string(), "default");
    let e = l.entries().into_iter().find(|e| e.name == "BG_LOG_KEEP").unwrap();
    assert_eq!(e.source, "my.inc:2");
}

#[test]
fn a_file_without_php_tag_warns() {
    let l = parse(b"define('BG_MAX_THREADS', 2);", "config.inc").unwrap();
    assert_eq!(l.config.bg_max_threads, 2);
    assert_eq!(l.warnings.len(), 1);
    assert!(l.warnings[0].to_string().starts_with("config.inc:1: no <?php tag"));
    assert!(parse(b"", "config.inc").unwrap().warnings.is_empty());
}

#[test]
fn values_serialize_untagged() {
    let v =
        [Value::Bool(true), Value::Int(600), Value::Str("pid".into()), Value::Time(TimeOfDay { hour: 20, minute: 0 })];
    assert_eq!(serde_json::to_string(&v).unwrap(), r#"[true,600,"pid","20:00"]"#);
}

#[test]
fn the_table_is_consistent() {
    let specs = specs();
    let defaults = Config::default().values();
    assert_eq!(specs.len(), defaults.len());
    assert_eq!(specs.len(), 57);
    for (s, v) in specs.iter().zip(&defaults) {
        // the kind matches the field's type and the default is itself valid
        let ok = match (s.kind, v) {
            (Kind::Bool, Value::Bool(_)) | (Kind::Time, Value::Time(_)) => true,
            (Kind::Str, Value::Str(t)) => !t.is_empty(),
            (Kind::Int { min, max }, Value::Int(i)) => (min..=max).contains(i),
            _ => false,
        };
        assert!(ok, "{} default {v} does not fit {:?}", s.name, s.kind);
        assert_eq!(s.default, v.to_string());
        assert!(!s.doc.is_empty());
        assert_eq!(specs.iter().filter(|o| o.name == s.name).count(), 1, "{} twice", s.name);
        // each default, written back as PHP, reads as itself
        let l = parse(format!("<?php define('{}', {});", s.name, s.default).as_bytes(), "config.inc").unwrap();
        assert_eq!(l.config, Config::default());
        assert_eq!(l.source(s.name), Some(Source::File { line: 1 }));
    }
    assert_eq!(Config::default().email_bg_lo_folders_sync_start.to_string(), "20:00");
    assert_eq!(Config::default().backproc_pid_location, "pid");
}

/// The fuzz seeds (fuzz/corpus/config_inc) under the fuzz target's properties, so the stable
/// suite keeps them working: every diagnostic names an existing line, on one line of output.
#[test]
fn fuzz_seeds_keep_their_properties() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/config_inc");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let lines = data.iter().filter(|&&b| b == b'\n').count() + 1;
        let diags = match parse(&data, "config.inc") {
            Ok(l) => l.warnings,
            Err(e) => e.errors,
        };
        for d in diags {
            assert!((1..=lines).contains(&d.line), "{}: {d}", path.display());
            assert!(!d.message.contains(['\n', '\r']), "{}: {:?}", path.display(), d.message);
        }
        n += 1;
    }
    assert!(n >= 5, "only {n} seeds in {}", dir.display());
}
