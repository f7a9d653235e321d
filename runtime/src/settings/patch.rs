//! What a deploy changes of its route's settings, in one shape: a [`SettingsPatch`], parsed
//! once at the edge from `name=value` pairs (the admin API's query keys, which the CLI's deploy
//! flags are sent as) and carried whole to the change that applies it.
//!
//! The names are the table's: the limits of [`SETTINGS`] and the four settings that are
//! not limits ([`KEYS`]: `config`, `allow-outbound`, `dir`, `kv`). An error sentence that
//! lists what a deploy takes is written from them ([`deploy_keys`]), so a setting added to the
//! table is named there too.

use super::config::{RouteConfig, parse_config};
use super::table::{LimitOverrides, SETTINGS};
use crate::outbound::Outbound;

/// The per-route settings that are not limits, as query keys and deploy flags, with the form
/// each takes. Each may be repeated (`config`, `allow-outbound`, `kv`) or given once (`dir`); a
/// lone empty value clears it.
pub const KEYS: &[(&str, &str)] = &[
    ("config", "KEY=VALUE"),
    ("allow-outbound", "scheme://host[:port]"),
    ("dir", "NAME"),
    ("kv", "BUCKET"),
];

/// What a deploy sets of its route's settings; each `None` keeps the route's current value
/// (the server's default for a new route).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SettingsPatch {
    /// The guest's environment (`config=KEY=VALUE`, repeated).
    pub config: Option<RouteConfig>,
    /// Its limits (one key per limit of the table).
    pub limits: LimitOverrides,
    /// Where it may send outbound HTTP requests (`allow-outbound=`, repeated).
    pub outbound: Option<Outbound>,
    /// The directory under `--guest-dirs` to mount at `/data` (`dir=NAME`; `""` unmounts).
    pub dir: Option<String>,
    /// The shared key-value buckets it may open besides its own (`kv=BUCKET`, repeated),
    /// checked, sorted and without repeats.
    pub kv: Option<Vec<String>>,
}

/// Reads a [`SettingsPatch`] from `name=value` pairs: [`Reader::offer`] each pair, then
/// [`Reader::finish`].
#[derive(Debug, Default)]
pub struct Reader {
    config: Option<Vec<String>>,
    limits: LimitOverrides,
    outbound: Option<Vec<String>>,
    dir: Option<String>,
    kv: Option<Vec<String>>,
}

impl Reader {
    /// Takes the pair `key=value` if `key` names a per-route setting (`Ok(true)`); `Ok(false)`:
    /// it names none. `Err`: the value is unusable, in a sentence naming the setting.
    pub fn offer(&mut self, key: &str, value: &str) -> Result<bool, String> {
        match key {
            "config" => self
                .config
                .get_or_insert_with(Vec::new)
                .push(value.to_owned()),
            "allow-outbound" => self
                .outbound
                .get_or_insert_with(Vec::new)
                .push(value.to_owned()),
            "kv" => self.kv.get_or_insert_with(Vec::new).push(value.to_owned()),
            "dir" if self.dir.is_none() => self.dir = Some(value.to_owned()),
            "dir" => return Err("give `dir` at most once".into()),
            other => return self.limits.set(other, value),
        }
        Ok(true)
    }

    /// The patch the pairs make, each setting parsed and checked as far as it can be without
    /// the server (a directory is resolved against `--guest-dirs` by the deploy).
    pub fn finish(self) -> Result<SettingsPatch, String> {
        let config = self
            .config
            .map(|pairs| parse_config(pairs.iter().map(String::as_str)))
            .transpose()?;
        let outbound = self
            .outbound
            .map(|rules| crate::outbound::parse_rules(rules.iter().map(String::as_str)))
            .transpose()?;
        let kv = self.kv.map(|names| grants(&names)).transpose()?;
        Ok(SettingsPatch {
            config,
            limits: self.limits,
            outbound,
            dir: self.dir,
            kv,
        })
    }
}

/// The shared buckets `kv=` pairs grant, checked, sorted and without repeats; a lone empty
/// one grants none.
fn grants(names: &[String]) -> Result<Vec<String>, String> {
    let mut granted = Vec::new();
    for name in names.iter().filter(|n| !n.is_empty()) {
        crate::kv::BucketName::shared(name)?;
        granted.push(name.clone());
    }
    granted.sort();
    granted.dedup();
    Ok(granted)
}

/// What a deploy's query takes, as the end of a sentence: the settings that are not limits
/// (with their forms) and every limit of the table.
pub fn deploy_keys() -> String {
    let keys: Vec<String> = KEYS
        .iter()
        .map(|(key, form)| format!("`{key}={form}`"))
        .collect();
    let limits: Vec<String> = SETTINGS.iter().map(|s| format!("`{}`", s.name)).collect();
    format!("{} and the limits {}", keys.join(", "), limits.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(pairs: &[(&str, &str)]) -> Result<SettingsPatch, String> {
        let mut reader = Reader::default();
        for (key, value) in pairs {
            assert!(reader.offer(key, value)?, "{key} is a setting");
        }
        reader.finish()
    }

    #[test]
    fn every_setting_is_read_from_its_query_key_and_named_in_the_sentence() {
        let patch = read(&[
            ("config", "B=2"),
            ("config", "A=1"),
            ("allow-outbound", "https://api.example.com"),
            ("dir", "assets"),
            ("kv", "shared"),
            ("kv", "other"),
            ("kv", "shared"),
            ("max-memory", "1MiB"),
            ("instance-concurrency", "4"),
        ])
        .unwrap();
        let config: Vec<(String, String)> = patch.config.unwrap().to_vec();
        assert_eq!(config, [("A".into(), "1".into()), ("B".into(), "2".into())]);
        assert_eq!(patch.outbound.unwrap().len(), 1);
        assert_eq!(patch.dir.as_deref(), Some("assets"));
        assert_eq!(patch.kv.unwrap(), ["other", "shared"]);
        assert_eq!(patch.limits.max_memory_bytes, Some(1 << 20));
        assert_eq!(patch.limits.instance_concurrency, Some(4));
        let sentence = deploy_keys();
        for name in KEYS
            .iter()
            .map(|(k, _)| *k)
            .chain(SETTINGS.iter().map(|s| s.name))
        {
            assert!(
                sentence.contains(&format!("`{name}")),
                "{name} in {sentence}"
            );
        }
    }

    #[test]
    fn unknown_keys_are_left_and_bad_values_are_named() {
        let mut reader = Reader::default();
        assert_eq!(reader.offer("label", "x"), Ok(false));
        assert!(read(&[("dir", "a"), ("dir", "b")]).is_err());
        assert!(
            read(&[("config", "no-equals")])
                .unwrap_err()
                .contains("KEY=VALUE")
        );
        assert!(read(&[("kv", "default")]).is_err());
        assert!(
            read(&[("max-memory", "lots")])
                .unwrap_err()
                .contains("max-memory")
        );
        assert_eq!(read(&[("kv", "")]).unwrap().kv, Some(Vec::new()));
    }
}
