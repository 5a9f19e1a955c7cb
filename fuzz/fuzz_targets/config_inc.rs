//! config.inc reader: any bytes → `Loaded` or `ConfigErrors`, never a panic; every error and
//! warning names a line that exists in the input and fits on one line of output.
#![no_main]

use backproc_config::{Source, parse, specs};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // PHP (and the lexer) count `\n` only; a file has at least line 1.
    let lines = data.iter().filter(|&&b| b == b'\n').count() + 1;
    let check = |d: &backproc_config::Diagnostic| {
        assert!((1..=lines).contains(&d.line), "line {} outside 1..={lines}: {d}", d.line);
        assert_eq!(d.file, "config.inc");
        // `config check` prints one diagnostic per line: a message must not break that.
        assert!(!d.message.contains(['\n', '\r']), "multi-line message: {:?}", d.message);
    };
    match parse(data, "config.inc") {
        Ok(loaded) => {
            loaded.warnings.iter().for_each(check);
            assert!(!loaded.file_missing);
            for s in specs() {
                match loaded.source(s.name) {
                    Some(Source::Default) => {}
                    Some(Source::File { line }) => assert!((1..=lines).contains(&line), "{}: line {line}", s.name),
                    None => panic!("{} has no source", s.name),
                }
            }
            assert_eq!(loaded.entries().len(), specs().len());
        }
        Err(e) => {
            assert!(!e.errors.is_empty(), "an Err without errors");
            e.errors.iter().for_each(check);
            // errors come in file order
            assert!(e.errors.windows(2).all(|w| w[0].line <= w[1].line), "{e}");
        }
    }
});
