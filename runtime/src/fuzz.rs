//! Property-based fuzzing of everything the admin API parses from a client: route names,
//! prefixes, config pairs, byte sizes, durations, and uploaded bytes (preamble check and the
//! compiler). Cheap at the default 256 cases per property in `cargo test`; `just fuzz` runs
//! them with many more (`PROPTEST_CASES`).

#![cfg(test)]

use proptest::prelude::*;

use crate::config::{parse_bytes, parse_duration};
use crate::names::{Prefix, RouteName};
use crate::version::parse_config;

proptest! {
    #[test]
    fn fuzz_route_names_are_safe_path_segments(name in "\\PC{0,80}") {
        if let Ok(parsed) = RouteName::parse(&name) {
            let text = parsed.as_str();
            prop_assert!(!text.is_empty() && text.len() <= 64);
            prop_assert!(text != "." && text != "..");
            prop_assert!(text.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.')));
        }
    }

    #[test]
    fn fuzz_sizes_and_durations_print_as_they_parse(n in any::<u64>(), ms in 0u64..(1 << 40)) {
        let text = crate::config::format_bytes(n);
        prop_assert_eq!(crate::config::parse_bytes(&text), Ok(n), "{}", text);
        let duration = std::time::Duration::from_millis(ms);
        let text = crate::config::format_duration(duration);
        prop_assert_eq!(crate::config::parse_duration(&text), Ok(duration), "{}", text);
    }

    #[test]
    fn fuzz_route_names_from_likely_bytes(name in "[a-z0-9._/%\\-]{0,70}") {
        let _ = RouteName::parse(&name);
    }

    #[test]
    fn fuzz_prefixes_normalize_once(prefix in "(/[a-zA-Z0-9._~%-]{0,8}){0,6}/?") {
        if let Ok(parsed) = Prefix::parse(&prefix) {
            let text = parsed.as_str();
            prop_assert!(text.starts_with('/'));
            prop_assert!(text == "/" || !text.ends_with('/'));
            prop_assert!(!text.contains("//"));
            prop_assert!(!text.split('/').any(|s| s == "." || s == ".."));
            let again = Prefix::parse(text).unwrap();
            prop_assert_eq!(again.as_str(), text);
        }
    }

    #[test]
    fn fuzz_prefixes_never_panic(prefix in "\\PC{0,300}") {
        let _ = Prefix::parse(&prefix);
    }

    #[test]
    fn fuzz_config_pairs(pairs in proptest::collection::vec("\\PC{0,40}", 0..8)) {
        if let Ok(config) = parse_config(pairs.iter().map(String::as_str)) {
            prop_assert!(config.windows(2).all(|w| w[0].0 < w[1].0), "sorted, unique keys");
            for (key, _) in config.iter() {
                prop_assert!(key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
            }
        }
    }

    #[test]
    fn fuzz_sizes_and_durations(text in "\\PC{0,24}") {
        let _ = parse_bytes(&text);
        let _ = parse_duration(&text);
    }
}

proptest! {
    // Each case compiles with a real engine: fewer cases by default.
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn fuzz_uploaded_bytes_never_panic_the_compiler(
        body in proptest::collection::vec(any::<u8>(), 0..512),
        component in any::<bool>(),
    ) {
        let engine = engine();
        let mut bytes = if component {
            b"\0asm\x0d\0\x01\0".to_vec()
        } else {
            Vec::new()
        };
        bytes.extend(body);
        let wasi = crate::engine::Wasi::of(&bytes);
        if let Ok(component) = engine.compile(&bytes, wasi) {
            let _ = engine.link(&component, wasi);
        }
    }
}

fn engine() -> &'static crate::engine::Engine {
    static ENGINE: std::sync::OnceLock<crate::engine::Engine> = std::sync::OnceLock::new();
    ENGINE.get_or_init(|| {
        let config = crate::config::Config {
            max_instances: 0,
            ..crate::config::Config::default()
        };
        crate::engine::Engine::new(
            crate::engine::Pool {
                slots: config.max_instances,
                max_memory: config.limits.max_memory_bytes,
            },
            config.opt_level,
        )
        .expect("engine")
    })
}

proptest! {
    #[test]
    fn fuzz_numbers_with_units(n in any::<u64>(), unit in "(ms|s|m|h|B|K|KiB|M|MiB|G|GiB|)") {
        let text = format!("{n}{unit}");
        let _ = parse_bytes(&text);
        let _ = parse_duration(&text);
    }
}
