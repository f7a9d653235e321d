//! The commands the README and the manual in `docs/` tell a user to type: every `handoff …`
//! line in their `sh` blocks (and `cargo run -p handoff -- …`) parses with the binary's real
//! command line, so a renamed flag or command cannot leave a page behind.

use std::path::{Path, PathBuf};

use clap::error::ErrorKind;
use handoff::cli::Cli;

/// The repository's root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("runtime/ has a parent")
        .to_owned()
}

/// The README and every page of the manual, by path relative to the root.
fn pages() -> Vec<(String, String)> {
    let mut pages = vec![("README.md".to_owned(), read(&root().join("README.md")))];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .expect("docs/ exists")
        .map(|entry| entry.expect("a docs/ entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    docs.sort();
    for path in docs {
        let name = format!("docs/{}", path.file_name().unwrap().to_string_lossy());
        pages.push((name, read(&path)));
    }
    pages
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A shell line's words, as `sh` would split them (quotes, backslashes), without its comment;
/// the operators `&&`, `||`, `;`, `|`, `&`, `(` and `)` are words of their own.
pub(crate) fn words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    word.push(c);
                }
            }
            '"' => {
                in_word = true;
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => word.extend(chars.next()),
                        c => word.push(c),
                    }
                }
            }
            '\\' => {
                in_word = true;
                word.extend(chars.next());
            }
            '#' if !in_word => break,
            c if c.is_whitespace() || "&|;()".contains(c) => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
                if !c.is_whitespace() {
                    let mut op = c.to_string();
                    if let Some(&next) = chars.peek()
                        && (c == '&' || c == '|')
                        && next == c
                    {
                        op.push(chars.next().unwrap());
                    }
                    words.push(op);
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// The `handoff` commands of a page's `sh` blocks: line number and arguments (without the
/// program name).
fn commands(page: &str) -> Vec<(usize, Vec<String>)> {
    let mut found = Vec::new();
    let mut in_sh = false;
    let mut pending = String::new();
    let mut first_line = 0;
    for (index, line) in page.lines().enumerate() {
        if line.starts_with("```") {
            in_sh = matches!(line.trim(), "```sh" | "```bash" | "```shell");
            continue;
        }
        if !in_sh {
            continue;
        }
        if pending.is_empty() {
            first_line = index + 1;
        }
        if let Some(continued) = line.strip_suffix('\\') {
            pending.push_str(continued);
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        let line = std::mem::take(&mut pending);
        let words = words(&line);
        for segment in words.split(|w| ["&&", "||", ";", "|", "&", "(", ")"].contains(&w.as_str()))
        {
            // Leading `NAME=value` assignments and `then`/`do` keywords are not the program.
            let start = segment
                .iter()
                .position(|w| (!w.contains('=') || w.starts_with('-')) && w != "then" && w != "do")
                .unwrap_or(segment.len());
            let segment = &segment[start..];
            match segment {
                [program, args @ ..] if program == "handoff" => {
                    found.push((first_line, args.to_vec()));
                }
                [cargo, run, rest @ ..] if cargo == "cargo" && run == "run" => {
                    let runs_handoff = rest.windows(2).any(|w| w[0] == "-p" && w[1] == "handoff");
                    if let Some(dashes) = rest.iter().position(|w| w == "--")
                        && runs_handoff
                    {
                        found.push((first_line, rest[dashes + 1..].to_vec()));
                    }
                }
                _ => {}
            }
        }
    }
    found
}

#[test]
fn every_documented_command_parses_with_the_real_command_line() {
    let mut total = 0;
    let mut failures = Vec::new();
    for (name, text) in pages() {
        for (line, args) in commands(&text) {
            total += 1;
            let argv = std::iter::once("handoff".to_owned()).chain(args.iter().cloned());
            // `--version` and `--help` "fail" with what they print: they parse.
            if let Err(error) = Cli::try_parse_args(argv)
                && !matches!(
                    error.kind(),
                    ErrorKind::DisplayVersion | ErrorKind::DisplayHelp
                )
            {
                failures.push(format!(
                    "{name}:{line}: `handoff {}`: {}",
                    args.join(" "),
                    error.render()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(total >= 40, "only {total} documented commands found");
}

#[test]
fn the_rollout_guide_types_every_delivery_command() {
    let guide = read(&root().join("docs/rollout-guide.md"));
    let typed: Vec<Vec<String>> = commands(&guide).into_iter().map(|(_, a)| a).collect();
    for (command, flag) in [
        ("rollout", "--steps"),
        ("rollout", "--manual"),
        ("rollout", "--max-error-rate"),
        ("status", "--watch"),
        ("events", "--route"),
        ("pause", ""),
        ("resume", ""),
        ("weight", ""),
        ("promote", ""),
        ("abort", ""),
        ("versions", ""),
        ("shadow", "--percent"),
        ("shadow", "--off"),
        ("shadow", "--json"),
    ] {
        assert!(
            typed
                .iter()
                .any(|args| args.first().is_some_and(|c| c == command)
                    && (flag.is_empty() || args.iter().any(|a| a == flag))),
            "docs/rollout-guide.md never types `handoff {command} {flag}`"
        );
    }
}

#[test]
fn shell_lines_split_as_sh_splits_them() {
    assert_eq!(
        words(r#"cd my-api && handoff deploy a "b c" 'd e' f\ g # comment"#),
        [
            "cd", "my-api", "&&", "handoff", "deploy", "a", "b c", "d e", "f g"
        ]
    );
    let page = "```sh\nW=x handoff routes; (cd a && cargo run --release -p handoff -- dev .)\n\
                handoff rollout r v.wasm \\\n  --manual\n```\nhandoff not-in-a-block\n";
    assert_eq!(
        commands(page),
        [
            (2, vec!["routes".to_owned()]),
            (2, vec!["dev".to_owned(), ".".to_owned()]),
            (
                3,
                vec![
                    "rollout".to_owned(),
                    "r".to_owned(),
                    "v.wasm".to_owned(),
                    "--manual".to_owned()
                ]
            ),
        ]
    );
}
