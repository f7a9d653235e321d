//! The `serve --config FILE` file: the serve flags as TOML keys, spelled exactly like the flags
//! (`admin-listen`, `request-timeout`, `max-memory`, ...). Every key is optional; unknown keys
//! are refused. Values take the flags' text (`"500ms"`, `"128MiB"`) or a bare number (seconds,
//! bytes); `true` sets a switch; an array repeats a repeatable flag. Relative paths are taken
//! relative to the file's directory. Admin tokens and trusted signing keys may also live in the
//! file, as `[[token]]` and `[[key]]` tables like those of `--tokens-file` and `--signing-keys`.
//!
//! ```toml
//! listen = "0.0.0.0:8080"
//! admin-listen = "127.0.0.1:8081"
//! request-timeout = "10s"
//! max-memory = "64MiB"
//! signatures = "require"
//!
//! [[token]]
//! name = "ci"
//! token = "a-long-random-secret"
//! scope = "deploy"
//! ```
//!
//! There is no list of keys here: the file is read against the `serve` command's own flags,
//! each value checked by that flag's parser, so a new flag is a new key with nothing to add.
//! [`ConfigFile::args`] turns the file into the flags it stands for, leaving out every flag the
//! command line or the environment already gave, which is what makes flags win.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::ArgAction;
use clap::parser::ValueSource;
use clap::{Arg, ArgMatches, Command, ValueHint};

/// A loaded config file.
#[derive(Debug)]
pub struct ConfigFile {
    /// `(flag, values)` in file order; a switch set to `true` has no values.
    settings: Vec<(String, Vec<OsString>)>,
    /// `[[token]]` tables.
    pub tokens: Vec<crate::auth::Token>,
    /// `[[key]]` tables.
    pub keys: Vec<crate::signing::TrustedKey>,
    /// What the server should warn about once its log is set up (loading runs before it).
    pub warnings: Vec<String>,
}

/// Why a config file was refused. The message names the file and says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The file could not be read.
    #[error("cannot read the config file {path}: {error}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key, or a value of the wrong type or form.
    #[error("the config file {path} is invalid: {problem}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the key and the line.
        problem: String,
    },
}

/// The `[[token]]` and `[[key]]` tables.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Tables {
    #[serde(default)]
    token: Vec<crate::auth::TokenEntry>,
    #[serde(default)]
    key: Vec<crate::signing::KeyEntry>,
}

impl ConfigFile {
    /// Reads the file at `path` against `command`'s flags.
    pub fn load(path: &Path, command: &Command) -> Result<Self, ConfigFileError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigFileError::Unreadable {
            path: path.to_owned(),
            error,
        })?;
        #[allow(unused_mut)]
        let mut file = Self::parse(&text, path.parent().unwrap_or(Path::new("")), command)
            .map_err(|problem| ConfigFileError::Invalid {
                path: path.to_owned(),
                problem,
            })?;
        #[cfg(unix)]
        if !file.tokens.is_empty() {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(path)
                && meta.permissions().mode() & 0o077 != 0
            {
                file.warnings.push(format!(
                    "the config file {} holds admin tokens and other users may read it; chmod 600 it",
                    path.display()
                ));
            }
        }
        Ok(file)
    }

    /// Parses `text` against `command`'s flags; relative paths are joined to `base`.
    pub fn parse(text: &str, base: &Path, command: &Command) -> Result<Self, String> {
        let table: toml::Table = toml::from_str(text).map_err(|error| {
            let message = error.message().trim_end();
            match error.span() {
                Some(span) => {
                    let (line, column) = line_and_column(text, span.start);
                    format!("{message} (line {line}, column {column})")
                }
                None => message.to_owned(),
            }
        })?;
        let mut settings = Vec::new();
        let mut tables = toml::Table::new();
        for (key, value) in table {
            if key == "token" || key == "key" {
                tables.insert(key, value);
                continue;
            }
            let at = |problem: String| match line_of(text, &key) {
                Some(line) => format!("`{key}`: {problem} (line {line})"),
                None => format!("`{key}`: {problem}"),
            };
            let Some(arg) = command
                .get_arguments()
                .find(|a| a.get_long() == Some(key.as_str()) && settable(a))
            else {
                let where_ = line_of(text, &key)
                    .map(|line| format!(" (line {line}, column 1)"))
                    .unwrap_or_default();
                return Err(format!(
                    "unknown field `{key}`; the keys are the `serve` flags without `--`{where_}"
                ));
            };
            if is_switch(arg) {
                match value {
                    toml::Value::Boolean(true) => settings.push((key, Vec::new())),
                    toml::Value::Boolean(false) => {}
                    other => {
                        return Err(at(format!(
                            "expected true or false, not {}",
                            other.type_str()
                        )));
                    }
                }
                continue;
            }
            let values = values(&value, arg).map_err(at)?;
            let values: Vec<OsString> = values
                .into_iter()
                .map(|v| match arg.get_value_hint() {
                    ValueHint::FilePath | ValueHint::DirPath | ValueHint::AnyPath => {
                        base.join(v).into_os_string()
                    }
                    _ => OsString::from(v),
                })
                .collect();
            for value in &values {
                check(command, arg, value).map_err(at)?;
            }
            settings.push((key, values));
        }
        let tables: Tables = toml::Value::Table(tables)
            .try_into()
            .map_err(|e: toml::de::Error| e.message().trim_end().to_owned())?;
        Ok(Self {
            settings,
            tokens: crate::auth::tokens_from(tables.token, "the config file")?,
            keys: crate::signing::keys_from(tables.key, "the config file")?,
            warnings: Vec::new(),
        })
    }

    /// The flags this file stands for, leaving out each one `given` (the command line's
    /// matches) got from the command line or the environment.
    pub fn args(&self, given: &ArgMatches, command: &Command) -> Vec<OsString> {
        let mut args = Vec::new();
        for (key, values) in &self.settings {
            let Some(arg) = command.get_arguments().find(|a| a.get_long() == Some(key)) else {
                continue;
            };
            let id = arg.get_id().as_str();
            if matches!(
                given.value_source(id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            ) {
                continue;
            }
            if values.is_empty() {
                args.push(OsString::from(format!("--{key}")));
            }
            for value in values {
                let mut flag = OsString::from(format!("--{key}="));
                flag.push(value);
                args.push(flag);
            }
        }
        args
    }
}

/// Whether the file may set `arg`: a named flag other than `--config`, `--help`, `--version`
/// and `--takeover` (how one start is made, not a setting: a unit's start and reload share the
/// file).
pub fn settable(arg: &Arg) -> bool {
    arg.get_long().is_some_and(|long| {
        !matches!(long, "config" | "help" | "version" | "takeover") && !arg.is_positional()
    })
}

fn is_switch(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::SetTrue)
}

/// The text values of `value` for `arg`.
fn values(value: &toml::Value, arg: &Arg) -> Result<Vec<String>, String> {
    let one = |value: &toml::Value| match value {
        toml::Value::String(text) => Ok(text.clone()),
        toml::Value::Integer(n) if *n >= 0 => Ok(n.to_string()),
        toml::Value::Integer(_) => Err("a negative number is not a duration or a size".into()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        other => Err(format!(
            "expected text or a number, not {}",
            other.type_str()
        )),
    };
    match value {
        toml::Value::Array(items) if matches!(arg.get_action(), ArgAction::Append) => {
            items.iter().map(one).collect()
        }
        toml::Value::Array(_) => Err("takes one value, not a list".into()),
        value => Ok(vec![one(value)?]),
    }
}

/// Checks `value` with `arg`'s own parser; the error is the parser's sentence.
fn check(command: &Command, arg: &Arg, value: &OsString) -> Result<(), String> {
    let mut flag = OsString::from(format!("--{}=", arg.get_long().unwrap_or_default()));
    flag.push(value);
    command
        .clone()
        .try_get_matches_from([OsString::from(command.get_name()), flag])
        .map(drop)
        .map_err(|error| {
            use std::error::Error as _;
            match error.source() {
                Some(source) => source.to_string(),
                None => error
                    .to_string()
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .trim_start_matches("error: ")
                    .to_owned(),
            }
        })
}

/// The 1-based line on which `key` is set, if it can be found.
fn line_of(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|line| {
            line.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|i| i + 1)
}

/// The 1-based line and column of byte `offset` in `text`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(text: &str, base: &str) -> Result<ConfigFile, String> {
        let command = crate::cli::Cli::command();
        ConfigFile::parse(
            text,
            Path::new(base),
            command.find_subcommand("serve").unwrap(),
        )
    }

    /// The flags `file` stands for when no flag is given.
    fn args(file: &ConfigFile) -> Vec<String> {
        let command = crate::cli::Cli::command();
        let serve = command.find_subcommand("serve").unwrap();
        let given = serve.clone().try_get_matches_from(["serve"]).unwrap();
        file.args(&given, serve)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn a_config_file_mirrors_the_flags() {
        let file = parse(
            "listen = \"127.0.0.1:0\"\nadmin-listen = \"127.0.0.1:9\"\nrequest-timeout = \"250ms\"\n\
             drain-timeout = 5\nmax-memory = \"64MiB\"\nmax-upload = 1024\nmax-instances = 0\n\
             data-dir = \"state\"\nephemeral = false\n",
            "/etc/handoff",
        )
        .unwrap();
        assert_eq!(
            args(&file),
            [
                "--admin-listen=127.0.0.1:9",
                "--data-dir=/etc/handoff/state",
                "--drain-timeout=5",
                "--listen=127.0.0.1:0",
                "--max-instances=0",
                "--max-memory=64MiB",
                "--max-upload=1024",
                "--request-timeout=250ms",
            ]
        );
        let on = parse("ephemeral = true\n", "").unwrap();
        assert_eq!(args(&on), ["--ephemeral"]);
    }

    #[test]
    fn a_config_file_may_hold_tokens_keys_and_the_new_limits() {
        let file = parse(
            "signatures = \"warn\"\ncompile-timeout = \"90s\"\ncompile-memory = \"1GiB\"\n\
             max-connections = 64\nidle-timeout = \"3s\"\n\
             [[token]]\nname = \"ci\"\ntoken = \"0123456789abcdef0123\"\nscope = \"deploy\"\n\
             [[key]]\nname = \"release\"\npublic = \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"\n",
            "",
        )
        .unwrap();
        assert_eq!(
            args(&file),
            [
                "--compile-memory=1GiB",
                "--compile-timeout=90s",
                "--idle-timeout=3s",
                "--max-connections=64",
                "--signatures=warn",
            ]
        );
        assert_eq!(file.tokens.len(), 1);
        assert_eq!(file.tokens[0].name, "ci");
        assert_eq!(file.keys.len(), 1);
        let twice = parse(
            "[[token]]\nname = \"ci\"\ntoken = \"0123456789abcdef0123\"\nscope = \"deploy\"\n\
             [[token]]\nname = \"ci\"\ntoken = \"fedcba9876543210fedc\"\nscope = \"read\"\n",
            "",
        )
        .unwrap_err();
        assert!(twice.contains("names token `ci` twice"), "{twice}");
        let short = parse(
            "[[token]]\nname = \"ci\"\ntoken = \"short\"\nscope = \"deploy\"\n",
            "",
        )
        .unwrap_err();
        assert!(short.starts_with("in the config file"), "{short}");
    }

    #[test]
    fn a_config_file_names_what_is_wrong() {
        let unknown = parse("listen = \"127.0.0.1:0\"\ncolour = \"blue\"\n", "").unwrap_err();
        assert!(unknown.contains("unknown field `colour`"), "{unknown}");
        assert!(unknown.contains("line 2, column 1"), "{unknown}");
        let bad_value = parse("request-timeout = \"soon\"", "").unwrap_err();
        assert!(bad_value.starts_with("`request-timeout`:"), "{bad_value}");
        assert!(bad_value.contains("not a duration"), "{bad_value}");
        let bad_address = parse("listen = \"here\"", "").unwrap_err();
        assert!(bad_address.starts_with("`listen`:"), "{bad_address}");
        let bad_type = parse("max-instances = \"many\"", "").unwrap_err();
        assert!(bad_type.contains("line 1"), "{bad_type}");
        let not_toml = parse("listen = ", "").unwrap_err();
        assert!(not_toml.contains("line 1"), "{not_toml}");
        let config_in_config = parse("config = \"other.toml\"", "").unwrap_err();
        assert!(
            config_in_config.contains("unknown field `config`"),
            "{config_in_config}"
        );
    }
}
