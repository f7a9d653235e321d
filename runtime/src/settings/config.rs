//! A route's configuration: the `KEY=VALUE` pairs handed to its guests as their environment.

use std::sync::Arc;

/// Deploy-time key/value configuration, handed to the guest as its environment variables.
/// Sorted by key; keys are unique.
pub type RouteConfig = Arc<[(String, String)]>;

/// The most configuration pairs one route may have.
pub const MAX_CONFIG_PAIRS: usize = 64;
/// The longest configuration value, in bytes.
pub const MAX_CONFIG_VALUE: usize = 4096;

/// Parses `KEY=VALUE` pairs into a route configuration, saying what is wrong in a sentence.
/// Keys are environment-variable names: a letter or `_`, then letters, digits or `_`.
pub fn parse_config<'a>(pairs: impl IntoIterator<Item = &'a str>) -> Result<RouteConfig, String> {
    let mut config: Vec<(String, String)> = Vec::new();
    for pair in pairs {
        if pair.is_empty() {
            continue;
        }
        let Some((key, value)) = pair.split_once('=') else {
            return Err(format!(
                "config `{}` needs the form KEY=VALUE",
                pair.escape_debug()
            ));
        };
        let valid_key = key.len() <= 128
            && key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_key {
            return Err(format!(
                "config key `{}` is not usable: start with a letter or `_`, then letters, digits or `_` (at most 128)",
                key.escape_debug()
            ));
        }
        if value.len() > MAX_CONFIG_VALUE {
            return Err(format!(
                "config value of `{key}` is longer than {MAX_CONFIG_VALUE} bytes"
            ));
        }
        if value.contains('\0') {
            return Err(format!("config value of `{key}` contains a NUL byte"));
        }
        match config.iter_mut().find(|(k, _)| k == key) {
            Some(existing) => existing.1 = value.to_owned(),
            None => config.push((key.to_owned(), value.to_owned())),
        }
    }
    if config.len() > MAX_CONFIG_PAIRS {
        return Err(format!(
            "a route may have at most {MAX_CONFIG_PAIRS} config values; got {}",
            config.len()
        ));
    }
    config.sort();
    Ok(config.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_pairs_are_validated_and_sorted() {
        let config = parse_config(["B=2", "A=1=one", "B=3", ""]).unwrap();
        assert_eq!(
            &config[..],
            [("A".into(), "1=one".into()), ("B".into(), "3".into())]
        );
        assert!(parse_config(["novalue"]).unwrap_err().contains("KEY=VALUE"));
        assert!(parse_config(["1X=a"]).unwrap_err().contains("not usable"));
        assert!(parse_config(["A-B=a"]).unwrap_err().contains("not usable"));
        let long = format!("K={}", "x".repeat(MAX_CONFIG_VALUE + 1));
        assert!(parse_config([long.as_str()]).is_err());
    }
}
