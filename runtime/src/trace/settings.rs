//! Where traces go and which are kept, from the OpenTelemetry SDK's standard environment
//! variables.

use std::path::PathBuf;
use std::time::Duration;

use opentelemetry_sdk::trace::Sampler;

use super::export::Batching;

/// How spans reach the collector (`OTEL_EXPORTER_OTLP_PROTOCOL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `http/protobuf` (the default): `POST <endpoint>/v1/traces`.
    HttpProtobuf,
    /// `grpc`: the OTLP gRPC service.
    Grpc,
}

impl Protocol {
    /// The name the environment variable uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HttpProtobuf => "http/protobuf",
            Self::Grpc => "grpc",
        }
    }
}

/// Where traces go and which are kept.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The collector's URL: for `http/protobuf` the full URL spans are posted to.
    pub endpoint: String,
    /// How spans reach it.
    pub protocol: Protocol,
    /// Headers (gRPC metadata) sent with every export, e.g. an API key.
    pub headers: Vec<(String, String)>,
    /// A PEM file of CA certificates to trust for an `https://` endpoint.
    pub certificate: Option<PathBuf>,
    /// `service.name` (default `handoff`).
    pub service_name: String,
    /// Further resource attributes.
    pub resource: Vec<(String, String)>,
    /// Which traces are recorded (default: parent-based, always on).
    pub sampler: Sampler,
    /// The export queue's bounds.
    pub batching: Batching,
}

impl Settings {
    /// Settings for `endpoint` (`http/protobuf`: the full URL of the traces path) with every
    /// other choice at its default.
    pub fn new(endpoint: impl Into<String>, protocol: Protocol) -> Self {
        Self {
            endpoint: endpoint.into(),
            protocol,
            headers: Vec::new(),
            certificate: None,
            service_name: "handoff".into(),
            resource: Vec::new(),
            sampler: Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            batching: Batching::default(),
        }
    }

    /// Reads the standard variables through `var` (the process environment in `serve`):
    /// `None` when no endpoint is set (tracing off), or when `OTEL_SDK_DISABLED=true` or
    /// `OTEL_TRACES_EXPORTER=none`. A value that cannot be used is an error naming it.
    ///
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is used as it is; `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// gets `/v1/traces` appended for `http/protobuf`. Also read: `OTEL_EXPORTER_OTLP_PROTOCOL`,
    /// `_HEADERS`, `_CERTIFICATE` (each also as `OTEL_EXPORTER_OTLP_TRACES_*`, which wins),
    /// `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`,
    /// `OTEL_TRACES_SAMPLER_ARG`, and `OTEL_BSP_MAX_QUEUE_SIZE`, `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`,
    /// `OTEL_BSP_SCHEDULE_DELAY`, `OTEL_BSP_EXPORT_TIMEOUT` and `OTEL_EXPORTER_OTLP_TIMEOUT`
    /// (milliseconds).
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, String> {
        let var = |name: &str| {
            var(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        if let Some(exporter) = var("OTEL_TRACES_EXPORTER") {
            match exporter.as_str() {
                "none" => return Ok(None),
                "otlp" => {}
                other => {
                    return Err(format!(
                        "OTEL_TRACES_EXPORTER=`{other}` is not supported; handoff exports traces over OTLP (`otlp`, the default) or not at all (`none`)"
                    ));
                }
            }
        }
        let signal = |name: &str| {
            var(&format!("OTEL_EXPORTER_OTLP_TRACES_{name}"))
                .or_else(|| var(&format!("OTEL_EXPORTER_OTLP_{name}")))
        };
        let protocol = match signal("PROTOCOL").as_deref() {
            None | Some("http/protobuf") => Protocol::HttpProtobuf,
            Some("grpc") => Protocol::Grpc,
            Some(other) => {
                return Err(format!(
                    "OTEL_EXPORTER_OTLP_PROTOCOL=`{other}` is not supported; use `http/protobuf` (the default) or `grpc`"
                ));
            }
        };
        let (named, given, endpoint) = match (
            var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            var("OTEL_EXPORTER_OTLP_ENDPOINT"),
        ) {
            (Some(endpoint), _) => (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                endpoint.clone(),
                endpoint,
            ),
            (None, Some(base)) => {
                let endpoint = match protocol {
                    Protocol::HttpProtobuf => {
                        format!("{}/v1/traces", base.trim_end_matches('/'))
                    }
                    Protocol::Grpc => base.clone(),
                };
                ("OTEL_EXPORTER_OTLP_ENDPOINT", base, endpoint)
            }
            (None, None) => return Ok(None),
        };
        // The sentence names the variable and the value as the operator wrote them.
        let usable = endpoint.parse::<http::Uri>().ok().is_some_and(|url| {
            matches!(url.scheme_str(), Some("http" | "https")) && url.host().is_some()
        });
        if !usable {
            return Err(format!(
                "{named}=`{given}` is not a usable OTLP endpoint: give an http:// or https:// URL with a host, such as http://localhost:4318"
            ));
        }
        let mut settings = Self::new(endpoint, protocol);
        if let Some(headers) = signal("HEADERS") {
            settings.headers = pairs("OTEL_EXPORTER_OTLP_HEADERS", &headers)?;
        }
        settings.certificate = signal("CERTIFICATE").map(PathBuf::from);
        if let Some(attributes) = var("OTEL_RESOURCE_ATTRIBUTES") {
            settings.resource = pairs("OTEL_RESOURCE_ATTRIBUTES", &attributes)?;
        }
        let from_attributes = settings
            .resource
            .iter()
            .find(|(k, _)| k == "service.name")
            .map(|(_, v)| v.clone());
        if let Some(name) = var("OTEL_SERVICE_NAME").or(from_attributes) {
            settings.service_name = name;
        }
        settings.sampler = sampler(
            var("OTEL_TRACES_SAMPLER").as_deref(),
            var("OTEL_TRACES_SAMPLER_ARG").as_deref(),
        )?;
        let number = |name: &str| -> Result<Option<u64>, String> {
            var(name)
                .map(|v| {
                    v.parse::<u64>()
                        .map_err(|_| format!("{name}=`{v}` is not a whole number"))
                })
                .transpose()
        };
        let batching = &mut settings.batching;
        if let Some(n) = number("OTEL_BSP_MAX_QUEUE_SIZE")? {
            batching.max_queue = (n as usize).max(1);
        }
        if let Some(n) = number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE")? {
            batching.max_batch = (n as usize).max(1);
        }
        batching.max_batch = batching.max_batch.min(batching.max_queue);
        if let Some(ms) = number("OTEL_BSP_SCHEDULE_DELAY")? {
            batching.delay = Duration::from_millis(ms);
        }
        // The exporter's own bound on one export (also `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`);
        // `OTEL_BSP_EXPORT_TIMEOUT`, if set, wins.
        for name in [
            "OTEL_EXPORTER_OTLP_TIMEOUT",
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
        ] {
            if let Some(ms) = number(name)? {
                batching.export_timeout = Duration::from_millis(ms.max(1));
            }
        }
        if let Some(ms) = number("OTEL_BSP_EXPORT_TIMEOUT")? {
            batching.export_timeout = Duration::from_millis(ms.max(1));
        }
        Ok(Some(settings))
    }
}

impl Settings {
    /// Names this process `id` in the resource (`service.instance.id`, a cluster node's name)
    /// unless `OTEL_RESOURCE_ATTRIBUTES` named it already.
    pub fn default_instance(&mut self, id: &str) {
        if !self
            .resource
            .iter()
            .any(|(k, _)| k == "service.instance.id")
        {
            self.resource
                .push(("service.instance.id".to_owned(), id.to_owned()));
        }
    }
}

/// `OTEL_TRACES_SAMPLER` and its argument as a sampler.
fn sampler(name: Option<&str>, arg: Option<&str>) -> Result<Sampler, String> {
    let ratio = || -> Result<f64, String> {
        match arg {
            None => Ok(1.0),
            Some(arg) => arg
                .parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or_else(|| {
                    format!(
                        "OTEL_TRACES_SAMPLER_ARG=`{arg}` must be a ratio from 0 to 1, such as 0.25"
                    )
                }),
        }
    };
    let parent = |root: Sampler| Sampler::ParentBased(Box::new(root));
    Ok(match name.unwrap_or("parentbased_always_on") {
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => Sampler::TraceIdRatioBased(ratio()?),
        "parentbased_always_on" => parent(Sampler::AlwaysOn),
        "parentbased_always_off" => parent(Sampler::AlwaysOff),
        "parentbased_traceidratio" => parent(Sampler::TraceIdRatioBased(ratio()?)),
        other => {
            return Err(format!(
                "OTEL_TRACES_SAMPLER=`{other}` is not supported; use always_on, always_off, traceidratio, parentbased_always_on (the default), parentbased_always_off or parentbased_traceidratio"
            ));
        }
    })
}

/// `key=value,key=value` (values percent-decoded), as the OTLP headers and resource
/// attributes are written.
fn pairs(name: &str, text: &str) -> Result<Vec<(String, String)>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            let (key, value) = item
                .split_once('=')
                .filter(|(k, _)| !k.trim().is_empty())
                .ok_or_else(|| format!("{name}: `{item}` is not of the form key=value"))?;
            Ok((key.trim().to_owned(), percent_decode(value.trim())))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(hex) = std::str::from_utf8(&bytes[i + 1..i + 3])
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn read(vars: &[(&str, &str)]) -> Result<Option<Settings>, String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_env(|name| vars.get(name).cloned())
    }

    #[test]
    fn off_without_an_endpoint_or_when_disabled() {
        assert!(read(&[]).unwrap().is_none());
        assert!(read(&[("OTEL_SERVICE_NAME", "x")]).unwrap().is_none());
        let on = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")];
        assert!(read(&on).unwrap().is_some());
        assert!(
            read(&[on[0], ("OTEL_SDK_DISABLED", "true")])
                .unwrap()
                .is_none()
        );
        assert!(
            read(&[on[0], ("OTEL_TRACES_EXPORTER", "none")])
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn endpoints_protocols_and_defaults() {
        let s = read(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")])
            .unwrap()
            .unwrap();
        assert_eq!(s.endpoint, "http://c:4318/v1/traces");
        assert_eq!(s.protocol, Protocol::HttpProtobuf);
        assert_eq!(s.service_name, "handoff");
        assert!(format!("{:?}", s.sampler).starts_with("ParentBased(AlwaysOn"));
        let s = read(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://t:1/x"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(s.endpoint, "https://t:1/x");
        let s = read(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            (s.endpoint.as_str(), s.protocol),
            ("http://c:4317", Protocol::Grpc)
        );
        let e = read(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ])
        .unwrap_err();
        assert!(e.contains("http/protobuf"), "{e}");
        let e = read(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "c:4318")]).unwrap_err();
        assert!(e.contains("http://"), "{e}");
    }

    #[test]
    fn headers_resource_sampler_and_queue() {
        let s = read(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=a%20b, x=1"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "service.name=shop,deployment.environment=prod",
            ),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "8"),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            s.headers,
            vec![("api-key".into(), "a b".into()), ("x".into(), "1".into())]
        );
        assert_eq!(s.service_name, "shop");
        assert_eq!(s.resource.len(), 2);
        assert!(format!("{:?}", s.sampler).contains("0.25"));
        assert_eq!(s.batching.max_queue, 8);
        assert_eq!(s.batching.max_batch, 8);
        assert_eq!(s.batching.delay, Duration::from_millis(50));
        assert_eq!(s.batching.export_timeout, Duration::from_secs(10));
        let s = read(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(s.batching.export_timeout, Duration::from_millis(2500));
        let s = read(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "1500"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(s.batching.export_timeout, Duration::from_millis(1500));
        let s = read(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_RESOURCE_ATTRIBUTES", "service.name=shop"),
            ("OTEL_SERVICE_NAME", "edge"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(s.service_name, "edge");
        for (k, v) in [
            ("OTEL_TRACES_SAMPLER", "sometimes"),
            ("OTEL_TRACES_SAMPLER_ARG", "2"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "many"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "novalue"),
        ] {
            let mut vars = vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), (k, v)];
            if k == "OTEL_TRACES_SAMPLER_ARG" {
                vars.push(("OTEL_TRACES_SAMPLER", "traceidratio"));
            }
            let e = read(&vars).unwrap_err();
            assert!(e.contains(k) || e.contains("OTEL_"), "{k}: {e}");
        }
    }
}
