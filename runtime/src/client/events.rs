//! Following the event stream (`GET /v1/events`): the SSE reader the CLI and the tests use,
//! and `handoff events`, which prints each event as a line (or its JSON, with `--json`) and
//! reconnects with `Last-Event-ID` when the stream ends, so it misses nothing the server still
//! holds.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::time::Duration;

use http::{Method, header};
use http_body_util::BodyExt;

use super::admin::{Admin, AdminClient, Reply, encode, print};
use super::render::short;
use crate::api::{Event, EventKind, LogLine};
use crate::exit::{self, Failure};
use crate::http_client::Connection;

/// How long to wait before reconnecting after the stream ended.
const RECONNECT_AFTER: Duration = Duration::from_millis(500);

/// One Server-Sent Events message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    /// Its `id:`.
    pub id: Option<String>,
    /// Its `event:` (`message` if none).
    pub event: String,
    /// Its `data:` lines, joined with newlines.
    pub data: String,
}

/// Reads SSE messages out of a byte stream, however it is cut into chunks.
#[derive(Debug, Default)]
pub struct Parser {
    line: Vec<u8>,
    message: Message,
    has_data: bool,
}

impl Parser {
    /// Feeds `bytes`; returns the messages they completed.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Message> {
        let mut done = Vec::new();
        for &byte in bytes {
            if byte != b'\n' {
                self.line.push(byte);
                continue;
            }
            let line = std::mem::take(&mut self.line);
            let line = String::from_utf8_lossy(line.strip_suffix(b"\r").unwrap_or(&line));
            if line.is_empty() {
                let message = std::mem::take(&mut self.message);
                if std::mem::take(&mut self.has_data) {
                    done.push(Message {
                        event: if message.event.is_empty() {
                            "message".into()
                        } else {
                            message.event
                        },
                        ..message
                    });
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((&line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => self.message.id = Some(value.to_owned()),
                "event" => self.message.event = value.to_owned(),
                "data" => {
                    if self.has_data {
                        self.message.data.push('\n');
                    }
                    self.message.data.push_str(value);
                    self.has_data = true;
                }
                _ => {}
            }
        }
        done
    }
}

/// An open event stream of a handoff server.
pub struct EventStream {
    body: hyper::body::Incoming,
    parser: Parser,
    ready: VecDeque<Event>,
    _connection: Connection,
}

impl AdminClient {
    /// Opens `GET /v1/events` (only `route`'s events when given), resuming after `last_id`.
    pub async fn events(
        &self,
        route: Option<&str>,
        last_id: Option<u64>,
    ) -> Result<EventStream, Failure> {
        let mut path = "/v1/events".to_owned();
        if let Some(route) = route {
            path = format!("{path}?route={}", encode(route));
        }
        let (body, connection) = self
            .open_stream(&path, last_id, "following the events")
            .await?;
        Ok(EventStream {
            body,
            parser: Parser::default(),
            ready: VecDeque::new(),
            _connection: connection,
        })
    }

    /// Opens the Server-Sent Events stream at `path`, resuming after `last_id`; a refusal
    /// names `what`.
    async fn open_stream(
        &self,
        path: &str,
        last_id: Option<u64>,
        what: &str,
    ) -> Result<(hyper::body::Incoming, Connection), Failure> {
        let mut connection = self.connect().await?;
        let mut request = self
            .request(Method::GET, path)
            .header(header::ACCEPT, "text/event-stream");
        if let Some(id) = last_id {
            request = request.header("last-event-id", id.to_string());
        }
        let request = request
            .body(http_body_util::Full::default())
            .expect("a well-formed request");
        let response = connection.send(request).await.map_err(|e| {
            Failure::new(
                exit::UNREACHABLE,
                format!("the handoff admin API broke off the exchange: {e}"),
            )
        })?;
        if !response.status().is_success() {
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Err(Reply { status, body }.refused(what));
        }
        Ok((response.into_body(), connection))
    }
}

impl EventStream {
    /// The next event; `None` when the server ended the stream (after a `dropped` notice, or
    /// at shutdown).
    pub async fn next(&mut self) -> Result<Option<Event>, Failure> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Ok(Some(event));
            }
            let Some(frame) = self.body.frame().await else {
                return Ok(None);
            };
            let frame = frame.map_err(|e| {
                Failure::new(
                    exit::UNREACHABLE,
                    format!("the event stream broke off: {e}"),
                )
            })?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            for message in self.parser.push(&data) {
                let event: Event = serde_json::from_str(&message.data).map_err(|e| {
                    Failure::new(
                        exit::UNREACHABLE,
                        format!("an event does not read ({e}): {}", message.data),
                    )
                })?;
                self.ready.push_back(event);
            }
        }
    }
}

/// `handoff events [--route NAME]`: prints events (only `route`'s, when given) as they
/// happen, until interrupted.
pub async fn events(admin: &Admin, route: Option<&str>) -> Result<(), Failure> {
    let client = admin.client()?;
    let mut last_id = None;
    loop {
        let mut stream = client.events(route, last_id).await?;
        while let Some(event) = stream.next().await? {
            if event.id != 0 {
                last_id = Some(event.id);
            }
            let line = if admin.json {
                serde_json::to_string(&event).expect("an event serializes") + "\n"
            } else {
                line(&event)
            };
            print(line.as_bytes());
        }
        // The server ended the stream (it dropped a slow reader, or restarts): resume.
        tokio::time::sleep(RECONNECT_AFTER).await;
    }
}

/// `handoff logs ROUTE`: prints the route's guest log lines as they are written (`--json`:
/// each line's JSON), following again when the server ends the stream, until interrupted.
/// Lines written while it is not connected are not shown (the server keeps none).
pub async fn logs(admin: &Admin, route: &str) -> Result<(), Failure> {
    let client = admin.client()?;
    let path = format!("/v1/routes/{}/logs", encode(route));
    loop {
        let (mut body, _connection) = client
            .open_stream(&path, None, "following the guest logs")
            .await?;
        let mut parser = Parser::default();
        while let Some(Ok(frame)) = body.frame().await {
            let Ok(data) = frame.into_data() else {
                continue;
            };
            for message in parser.push(&data) {
                let text = if message.event == "missed" {
                    let missed: serde_json::Value =
                        serde_json::from_str(&message.data).unwrap_or_default();
                    format!(
                        "({} lines missed: this client fell behind)\n",
                        missed["missed"]
                    )
                } else if admin.json {
                    message.data + "\n"
                } else {
                    match serde_json::from_str::<LogLine>(&message.data) {
                        Ok(line) => log_line(&line),
                        Err(_) => continue,
                    }
                };
                print(text.as_bytes());
            }
        }
        // The server ended the stream (it shuts down or restarts): follow again.
        tokio::time::sleep(RECONNECT_AFTER).await;
    }
}

/// A guest's log line as one line of text: time, level, version, request id, stream and the
/// line, its control characters escaped (a guest's output cannot drive the terminal).
pub fn log_line(line: &LogLine) -> String {
    let message: String = line
        .message
        .chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() && c != '\t' {
                c.escape_debug().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect();
    let request = line.request_id.as_deref().unwrap_or("-");
    format!(
        "{}  {:<5}  {}  {request}  {}  {message}\n",
        utc(line.at_ms),
        line.level.to_ascii_uppercase(),
        line.version,
        line.stream
    )
}

/// An event as one line of text: time, kind, route, version and what else it carries.
pub fn line(event: &Event) -> String {
    let mut out = format!("{}  {}", utc(event.at_ms), event.kind.as_str());
    if let Some(route) = &event.route {
        let _ = write!(out, "  {route}");
    }
    // Cluster mode: the node that converged, or whose controller made the change.
    if let Some(node) = &event.node {
        let _ = write!(out, "  on {node}");
    }
    if let Some(version) = &event.version {
        let _ = write!(out, "  {}", short(version));
    }
    let mut details = Vec::new();
    if let Some(previous) = &event.previous {
        let what = match event.kind {
            EventKind::Activated => "previous",
            _ => "stable",
        };
        details.push(format!("{what} {}", short(previous)));
    }
    if let Some(action) = &event.action {
        details.push(action.clone());
    }
    if let Some(revision) = event.revision {
        details.push(format!("revision {revision}"));
    }
    if let Some(step) = event.step {
        // People count steps from 1; the JSON's `step` is the index.
        details.push(format!("step {}", step + 1));
    }
    if let Some(weight) = event.weight {
        details.push(format!("{weight}%"));
    }
    if let Some(n) = event.in_flight {
        details.push(format!("{n} in flight"));
    }
    if let Some(ms) = event.waited_ms {
        details.push(format!("after {ms} ms"));
    }
    if let Some(s) = &event.shadow {
        details.push(format!(
            "{} requests, {} matches, {} mismatches, {} noise, {} errors, {} skipped",
            s.requests, s.matches, s.mismatches, s.noise, s.errors, s.skipped
        ));
    }
    if let Some(label) = &event.label {
        details.push(format!("label {label}"));
    }
    if let Some(message) = &event.message {
        details.push(format!("message {message:?}"));
    }
    if let Some(first) = event.first_id {
        details.push(format!("events before {first} were lost"));
    }
    if let Some(by) = &event.by {
        details.push(format!("by {by}"));
    }
    if !details.is_empty() {
        let _ = write!(out, "  ({})", details.join(", "));
    }
    if let Some(reason) = &event.reason {
        let _ = write!(out, ": {reason}");
    }
    out.push('\n');
    out
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for milliseconds since the Unix epoch.
pub fn utc(ms: u64) -> String {
    let (days, rest) = (ms / 86_400_000, ms % 86_400_000);
    // Howard Hinnant's civil-from-days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3_600_000,
        rest / 60_000 % 60,
        rest / 1000 % 60,
        rest % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_read_however_the_bytes_are_cut() {
        let text = "retry: 2000\n\n: heartbeat\n\nid: 5\nevent: drained\ndata: {\"a\":1}\n\n\
                    event: dropped\r\ndata: x\r\ndata: y\r\n\r\n";
        for cut in 1..text.len() {
            let mut parser = Parser::default();
            let mut got = parser.push(&text.as_bytes()[..cut]);
            got.extend(parser.push(&text.as_bytes()[cut..]));
            assert_eq!(
                got,
                [
                    Message {
                        id: Some("5".into()),
                        event: "drained".into(),
                        data: "{\"a\":1}".into()
                    },
                    Message {
                        id: None,
                        event: "dropped".into(),
                        data: "x\ny".into()
                    }
                ],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn events_read_as_lines() {
        assert_eq!(utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc(1_795_000_000_123), "2026-11-18T11:06:40.123Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00.000Z");
        let event = Event {
            at_ms: 0,
            previous: Some("sha256:0011223344556677".into()),
            action: Some("deploy".into()),
            by: Some("ci".into()),
            ..Event::new(EventKind::Activated, "api").version("sha256:aabbccddeeff00112233")
        };
        assert_eq!(
            line(&event),
            "1970-01-01T00:00:00.000Z  activated  api  aabbccddeeff  (previous 001122334455, deploy, by ci)\n"
        );
        let rolled_back = Event {
            reason: Some("error rate 0.5".into()),
            ..Event::new(EventKind::RolloutRolledBack, "api")
        };
        assert!(line(&rolled_back).ends_with("rollout_rolled_back  api: error rate 0.5\n"));
        let converged = Event {
            at_ms: 0,
            node: Some("web-2".into()),
            revision: Some(7),
            ..Event::new(EventKind::NodeConverged, "api").version("sha256:aabbccddeeff00112233")
        };
        assert_eq!(
            line(&converged),
            "1970-01-01T00:00:00.000Z  node_converged  api  on web-2  aabbccddeeff  (revision 7)\n"
        );
    }

    #[test]
    fn a_guest_line_prints_with_its_request_and_escaped() {
        let line = LogLine {
            at_ms: 1_000,
            route: "app".into(),
            version: "a964cd35222e".into(),
            stream: "stderr".into(),
            level: "error".into(),
            request_id: Some("0000000000000002".into()),
            trace_id: None,
            span_id: None,
            message: "bad \u{1b}[2J\tthing".into(),
        };
        assert_eq!(
            log_line(&line),
            format!(
                "{}  ERROR  a964cd35222e  0000000000000002  stderr  bad \\u{{1b}}[2J\tthing\n",
                utc(1_000)
            )
        );
    }
}
