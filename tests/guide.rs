//! Keeps docs/ADMIN.md from rotting: runs the demo in a small mode, checks that every
//! `backproc …` command of the guide's Quick path parses (subcommands and flags exist), that
//! the constants table matches `backproc config --json` (names and defaults), and that CLI
//! output the guide quotes is what the binary prints.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::util::*;

fn guide() -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/ADMIN.md");
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
}

/// The text between `<!-- NAME -->` and the end marker (`<!-- /NAME -->`, or the end of the
/// first fenced block after the marker when `fenced`).
fn section(text: &str, name: &str) -> String {
    let start = format!("<!-- {name} -->");
    let at = text.find(&start).unwrap_or_else(|| panic!("docs/ADMIN.md has no `{start}` marker"));
    let rest = &text[at + start.len()..];
    let end = format!("<!-- /{name} -->");
    let stop = rest.find(&end).unwrap_or_else(|| panic!("docs/ADMIN.md has no `{end}` marker"));
    rest[..stop].to_owned()
}

/// The lines of the first ```sh block right after `<!-- quick-path -->`, with `\` line
/// continuations joined and comments removed.
fn quick_path(text: &str) -> Vec<String> {
    let marker = "<!-- quick-path -->";
    let at = text.find(marker).expect("docs/ADMIN.md has no `<!-- quick-path -->` marker");
    let mut lines = text[at + marker.len()..].lines().skip_while(|l| l.trim().is_empty());
    let open = lines.next().unwrap_or_default();
    assert!(open.trim_start().starts_with("```sh"), "the quick-path marker must be followed by a ```sh block");
    let mut out: Vec<String> = Vec::new();
    let mut cont = false;
    for l in lines.take_while(|l| !l.trim_start().starts_with("```")) {
        let l = strip_comment(l);
        let (body, more) = match l.trim_end().strip_suffix('\\') {
            Some(b) => (b.to_owned(), true),
            None => (l.trim_end().to_owned(), false),
        };
        if cont {
            let last = out.last_mut().expect("continued line");
            last.push(' ');
            last.push_str(body.trim());
        } else if !body.trim().is_empty() {
            out.push(body.trim().to_owned());
        }
        cont = more;
    }
    out
}

/// Removes a `# comment` that is outside quotes.
fn strip_comment(l: &str) -> String {
    let (mut sq, mut dq) = (false, false);
    let mut prev = ' ';
    for (i, c) in l.char_indices() {
        match c {
            '\'' if !dq => sq = !sq,
            '"' if !sq => dq = !dq,
            '#' if !sq && !dq && prev.is_whitespace() => return l[..i].to_owned(),
            _ => {}
        }
        prev = c;
    }
    l.to_owned()
}

/// Splits a shell line into commands at `|`, `&&`, `||` and `;`, and each into words
/// (quotes removed; no expansion).
fn commands(line: &str) -> Vec<Vec<String>> {
    let mut cmds = vec![Vec::new()];
    let mut word = String::new();
    let mut in_word = false;
    let (mut sq, mut dq) = (false, false);
    let mut chars = line.chars().peekable();
    let flush = |word: &mut String, in_word: &mut bool, cmds: &mut Vec<Vec<String>>| {
        if *in_word {
            cmds.last_mut().expect("one command").push(std::mem::take(word));
            *in_word = false;
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '\'' if !dq => {
                sq = !sq;
                in_word = true;
            }
            '"' if !sq => {
                dq = !dq;
                in_word = true;
            }
            '\\' if !sq => {
                if let Some(n) = chars.next() {
                    word.push(n);
                    in_word = true;
                }
            }
            c if !sq && !dq && c.is_whitespace() => flush(&mut word, &mut in_word, &mut cmds),
            '|' | ';' | '&' if !sq && !dq => {
                flush(&mut word, &mut in_word, &mut cmds);
                if matches!(chars.peek(), Some('|' | '&')) {
                    chars.next();
                }
                cmds.push(Vec::new());
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    flush(&mut word, &mut in_word, &mut cmds);
    cmds.into_iter().filter(|c| !c.is_empty()).collect()
}

/// The arguments after `backproc` when `words` runs backproc (possibly through `sudo -u
/// USER`, `env`, or `VAR=value` prefixes); None for other commands.
fn backproc_args(words: &[String]) -> Option<Vec<String>> {
    let mut i = 0;
    loop {
        let w = words.get(i)?;
        if w == "sudo" {
            i += 1;
            while let Some(o) = words.get(i).filter(|o| o.starts_with('-')) {
                // options of sudo that take a value
                i += if ["-u", "-g", "-C", "-D", "-h", "-p", "-r", "-t", "-U"].contains(&o.as_str()) { 2 } else { 1 };
            }
        } else if w == "env" || (w.contains('=') && !w.starts_with('-')) {
            i += 1;
        } else {
            break;
        }
    }
    let cmd = words.get(i)?;
    (Path::new(cmd).file_name()? == "backproc").then(|| words[i + 1..].to_vec())
}

fn backproc(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_backproc"))
        .args(args)
        .env_remove("BACKPROC_HOME")
        .stdin(Stdio::null())
        .output()
        .expect("run backproc")
}

/// The subcommand names listed under "Commands:" in a help text.
fn subcommands(help: &str) -> BTreeSet<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

#[test]
fn quick_path_commands_parse() {
    let text = guide();
    let lines = quick_path(&text);
    let mut checked = 0;
    for line in &lines {
        for words in commands(line) {
            let Some(args) = backproc_args(&words) else { continue };
            // global option first, then the subcommand path, then its arguments
            let mut rest: Vec<String> = Vec::new();
            let mut it = args.iter();
            while let Some(a) = it.next() {
                if a == "--home" {
                    it.next();
                } else if !a.starts_with("--home=") {
                    rest.push(a.clone());
                }
            }
            let mut path: Vec<String> = Vec::new();
            let mut help = stdout(&backproc(&["--help"]));
            for w in rest.iter().take_while(|w| !w.starts_with('-')) {
                if !subcommands(&help).contains(w) {
                    break;
                }
                path.push(w.clone());
                let mut a: Vec<&str> = path.iter().map(String::as_str).collect();
                a.push("--help");
                let o = backproc(&a);
                assert!(o.status.success(), "`backproc {}` from the guide's quick path: {}", a.join(" "), stderr(&o));
                help = stdout(&o);
            }
            assert!(!path.is_empty(), "quick path line `{line}`: `{}` is not a backproc subcommand", rest.join(" "));
            for flag in rest.iter().filter(|w| w.starts_with("--")) {
                let flag = flag.split('=').next().unwrap_or(flag);
                assert!(
                    help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
                    "quick path line `{line}`: `backproc {}` has no option {flag}:\n{help}",
                    path.join(" ")
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 5, "only {checked} backproc commands found in the quick path: {lines:?}");
}

/// (name, default as written in the table) of every constant row of the constants section.
fn constants_table(text: &str) -> Vec<(String, String)> {
    let sec = section(text, "constants");
    let mut rows = Vec::new();
    for l in sec.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = l.split('|').map(str::trim).collect();
        let name = cells[1].trim_matches('`').to_owned();
        let default = cells[2].trim_matches('`').to_owned();
        rows.push((name, default));
    }
    rows
}

/// A JSON value of `config --json` written as in config.inc.
fn php(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Bool(true) => "TRUE".into(),
        serde_json::Value::Bool(false) => "FALSE".into(),
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::String(s) => format!("'{s}'"),
        other => other.to_string(),
    }
}

#[test]
fn constants_section_matches_config_json() {
    let text = guide();
    let rows = constants_table(&text);
    let h = Home::new(); // no config.inc: every value is the default
    let o = h.run(&["config", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).expect("config --json");
    let effective: Vec<(String, String)> = json
        .as_array()
        .expect("array")
        .iter()
        .map(|e| (e["name"].as_str().expect("name").to_owned(), php(&e["value"])))
        .collect();
    let doc: BTreeSet<&str> = rows.iter().map(|(n, _)| n.as_str()).collect();
    let code: BTreeSet<&str> = effective.iter().map(|(n, _)| n.as_str()).collect();
    let missing: Vec<_> = code.difference(&doc).collect();
    let unknown: Vec<_> = doc.difference(&code).collect();
    assert!(missing.is_empty(), "constants missing from docs/ADMIN.md's constants section: {missing:?}");
    assert!(unknown.is_empty(), "constants in docs/ADMIN.md that `backproc config` does not know: {unknown:?}");
    assert_eq!(rows.len(), doc.len(), "a constant is listed twice in docs/ADMIN.md");
    // every name mentioned anywhere in the section is a real constant
    let mentioned: BTreeSet<String> = section(&text, "constants")
        .split(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
        .filter(|w| w.contains('_') && ["BG_", "EMAIL_", "BACKPROC_", "INTERNAL_"].iter().any(|p| w.starts_with(p)))
        .map(str::to_owned)
        .collect();
    for m in &mentioned {
        assert!(code.contains(m.as_str()), "docs/ADMIN.md mentions {m}, which is not a constant");
    }
    for (name, default) in &rows {
        let real = &effective.iter().find(|(n, _)| n == name).expect("checked above").1;
        assert_eq!(default, real, "docs/ADMIN.md gives {name} the default {default}; the code has {real}");
    }
}

#[test]
fn guide_quotes_real_cli_output() {
    let text = guide();
    let quoted = |s: &str, what: &str| assert!(text.contains(s), "docs/ADMIN.md should quote {what} exactly: {s:?}");

    let h = Home::new();
    let o = h.run(&["history"]);
    assert!(o.status.success());
    quoted(stdout(&o).trim(), "the empty history message");
    let o = h.run(&["stop"]);
    assert!(o.status.success());
    quoted(stdout(&o).trim(), "`stop` without a master");

    // the config error example of Troubleshooting §9, line for line
    h.write_config(
        "<?php\ndefine('BG_TICK_INTERVAL', 0);\ndefine('EMAIL_BG_LO_FOLDERS_SYNC_START', '25:00');\ndefine('EMAIL_OUTBOX_ENABLED', 'yes');\n",
    );
    let o = h.run(&["run"]);
    assert_eq!(o.status.code(), Some(78), "{}", stderr(&o));
    for l in stderr(&o).lines() {
        quoted(l, "the config error output");
    }
    assert!(!h.file("logs").exists(), "an invalid config.inc must not create anything");

    // the warnings of the configuration section
    h.write_config(
        "<?php\ndefine('DB_HOST', 'localhost');\ndefine('BG_MAX_THREAD', 8);\ndefine('bg_max_threads', 8);\n",
    );
    let o = h.run(&["config"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let warnings = stderr(&o);
    assert_eq!(warnings.lines().count(), 2, "DB_HOST must be ignored silently: {warnings}");
    for l in warnings.lines() {
        quoted(l.trim_start_matches("warning: "), "the misspelling warnings");
    }

    // a second start while a master runs exits 0 at once, silently
    h.write_config("<?php\n");
    let mut master = h.spawn(&["run"]);
    assert!(wait_until(Duration::from_secs(20), || h.log("l-info.log").contains("master started")), "no master");
    let o = h.run(&["run"]);
    assert!(o.status.success() && o.stdout.is_empty() && o.stderr.is_empty(), "{}", stderr(&o));
    assert!(wait_until(Duration::from_secs(5), || h.log("l-debug.log").contains("another master is running (pid ")));
    let o = h.run(&["stop"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("master (pid ") && stdout(&o).trim_end().ends_with(") stopped"));
    let _ = master.wait();
    for line in ["master started (pid ", "stopping: no new work, waiting up to 30s for running tasks", "master stopped"]
    {
        assert!(h.log("l-info.log").contains(line), "l-info.log lacks {line:?}");
        quoted(line, "a shutdown line");
    }
}

/// `<target>/<profile>/examples/demo`, built when missing.
fn demo_binary() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_backproc"));
    let profile_dir = bin.parent().expect("target/<profile>");
    let demo = profile_dir.join("examples").join("demo");
    if !demo.exists() {
        let mut c = Command::new(env!("CARGO"));
        c.current_dir(env!("CARGO_MANIFEST_DIR")).args(["build", "--example", "demo"]);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            c.arg("--release");
        }
        let s = c.status().expect("cargo build --example demo");
        assert!(s.success(), "cargo build --example demo failed");
    }
    assert!(demo.exists(), "{} missing after the build", demo.display());
    demo
}

#[test]
fn demo_runs_in_a_small_mode() {
    let demo = demo_binary();
    let mut child = Command::new(&demo)
        .arg("40")
        .env_remove("BACKPROC_HOME")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the demo");
    let (tx, rx) = mpsc::channel::<String>();
    let out = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let err = child.stderr.take().expect("stderr");
    let err_reader = std::thread::spawn(move || std::io::read_to_string(err).unwrap_or_default());

    // The demo's own wait for the engine gives up after 120 s; if no line comes for longer,
    // it is stuck: ask the master of its home to stop so that the demo can finish and clean
    // up its servers, and fail.
    let stall = Duration::from_secs(150);
    let mut output = String::new();
    let mut home: Option<String> = None;
    let mut last = Instant::now();
    let mut stuck = false;
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(l) => {
                if let Some(h) = l.strip_prefix("==== home ").and_then(|r| r.strip_suffix(" ====")) {
                    home = Some(h.to_owned());
                }
                output.push_str(&l);
                output.push('\n');
                last = Instant::now();
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if !stuck && last.elapsed() > stall {
                    stuck = true;
                    if let Some(h) = &home {
                        let debug = std::fs::read_to_string(Path::new(h).join("logs/l-debug.log")).unwrap_or_default();
                        output.push_str("\n[guide test] the demo printed nothing for 150 s; l-debug.log says:\n");
                        for l in debug.lines().filter(|l| l.contains("another master") || l.contains("master started"))
                        {
                            output.push_str(l);
                            output.push('\n');
                        }
                        let _ = backproc(&["--home", h, "stop"]);
                    } else {
                        let _ = child.kill();
                    }
                }
            }
        }
    }
    let status = child.wait().expect("wait for the demo");
    let _ = reader.join();
    let errors = err_reader.join().unwrap_or_default();
    assert!(
        !stuck,
        "the demo hung (a second `backproc run` that should exit at once stayed up as the master?):\n{output}\n{errors}"
    );
    assert!(status.success(), "the demo failed ({status}):\n{output}\n{errors}");
    for want in ["==== backproc status ====", "master: running", "received", "SUCCESS", "master (pid"] {
        assert!(output.contains(want), "the demo's output lacks {want:?}:\n{output}\n{errors}");
    }
    assert!(!output.contains("timed out") && !errors.contains("timed out"), "{output}\n{errors}");
}
