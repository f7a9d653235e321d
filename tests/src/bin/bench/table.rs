//! The main table of `just bench`: every row a ratio of two measurements taken in the same run,
//! A and B interleaved, round by round, the order alternating, so drift over the run hits both
//! alike. A module adds rows with [`Table::compare`] (two loads) or [`Table::row`] (figures it
//! measured itself); [`Table::print`] writes the Markdown table `docs/benchmarks.md` carries.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};

use super::{Samples, Stats, ms};

/// The protocol a load speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// HTTP/1.1 keep-alive, one connection per client.
    H1,
    /// HTTP/2 with prior knowledge (h2c), [`H2_STREAMS`] clients' streams per connection.
    H2,
}

/// Clients sharing one HTTP/2 connection.
const H2_STREAMS: usize = 8;

/// What one side of a comparison sends, and where.
#[derive(Clone)]
pub struct Target {
    /// The server.
    pub addr: SocketAddr,
    /// The request path.
    pub path: String,
    /// HTTP/1.1 or h2c.
    pub proto: Proto,
    /// A request body (a POST) or none (a GET).
    pub body: Option<Bytes>,
    /// Send `x-user: u{client}-{n % 64}`: varied sticky keys.
    pub users: bool,
    /// The server's process: `bench --cpu` reports its CPU time per request.
    pub pid: Option<u32>,
}

impl Target {
    /// `GET path` over HTTP/1.1.
    pub fn get(addr: SocketAddr, path: &str) -> Self {
        Self {
            addr,
            path: path.to_owned(),
            proto: Proto::H1,
            body: None,
            users: false,
            pid: None,
        }
    }

    /// The same, its server being process `pid` (for `bench --cpu`).
    pub fn pid(mut self, pid: u32) -> Self {
        self.pid = Some(pid);
        self
    }

    /// The same over h2c.
    pub fn h2(mut self) -> Self {
        self.proto = Proto::H2;
        self
    }

    /// The same as a POST of `body`.
    pub fn post(mut self, body: Bytes) -> Self {
        self.body = Some(body);
        self
    }

    /// The same with varied `x-user` headers.
    pub fn users(mut self) -> Self {
        self.users = true;
        self
    }

    fn request(&self, client: usize, n: usize) -> Request<Full<Bytes>> {
        let uri = match self.proto {
            Proto::H1 => self.path.clone(),
            Proto::H2 => format!("http://bench{}", self.path),
        };
        let mut req = Request::builder()
            .method(if self.body.is_some() {
                Method::POST
            } else {
                Method::GET
            })
            .uri(uri);
        if self.proto == Proto::H1 {
            req = req.header("host", "bench");
        }
        if self.users {
            req = req.header("x-user", format!("u{client}-{}", n % 64));
        }
        req.body(Full::new(self.body.clone().unwrap_or_default()))
            .unwrap()
    }
}

/// Drives `clients` concurrent clients at `target` for `duration`.
pub async fn drive(target: &Target, clients: usize, duration: Duration) -> Samples {
    let started = Instant::now();
    let target = Arc::new(target.clone());
    let mut h2 = Vec::new();
    if target.proto == Proto::H2 {
        for _ in 0..clients.div_ceil(H2_STREAMS) {
            h2.push(handoff_tests::h2_connect(target.addr, 1 << 20).await);
        }
    }
    let mut tasks = Vec::new();
    for client in 0..clients {
        let target = target.clone();
        let mut sender = h2.get(client / H2_STREAMS).cloned();
        tasks.push(tokio::spawn(async move {
            let mut conn = match target.proto {
                Proto::H1 => Some(handoff_tests::Connection::open(target.addr).await),
                Proto::H2 => None,
            };
            let mut latencies = Vec::with_capacity(16 * 1024);
            let mut errors = 0;
            let mut n = 0;
            while started.elapsed() < duration {
                n += 1;
                let req = target.request(client, n);
                let t = Instant::now();
                let response = match (&mut conn, &mut sender) {
                    (Some(conn), _) => conn.send(req).await,
                    (None, Some(sender)) => sender.send_request(req).await,
                    (None, None) => unreachable!("a client has a connection"),
                };
                let ok = match response {
                    Ok(response) => {
                        let status = response.status();
                        response.into_body().collect().await.is_ok() && status == StatusCode::OK
                    }
                    Err(_) => false,
                };
                if ok {
                    latencies.push(t.elapsed());
                } else {
                    errors += 1;
                    if let Some(conn) = &mut conn {
                        *conn = handoff_tests::Connection::open(target.addr).await;
                    }
                }
            }
            (latencies, errors)
        }));
    }
    let mut samples = Samples::default();
    for task in tasks {
        let (l, e) = task.await.expect("load task");
        samples.latencies.extend(l);
        samples.errors += e;
    }
    samples.elapsed = started.elapsed();
    samples
}

/// How long each side runs, and how.
#[derive(Clone, Copy)]
pub struct Plan {
    /// Concurrent clients.
    pub clients: usize,
    /// Interleaved rounds per side.
    pub rounds: u32,
    /// Each side's time in one round.
    pub per_round: Duration,
    /// Each side's warm-up before the rounds.
    pub warmup: Duration,
}

/// A row of the table.
struct Row {
    what: String,
    a: String,
    b: String,
    ratio: String,
    goal: String,
}

/// The main table.
#[derive(Default)]
pub struct Table {
    rows: Vec<Row>,
    /// `--cpu`: each comparison also reports each server's CPU time per request.
    pub cpu: bool,
    /// `--rows TEXT`: only the comparisons whose name contains it run.
    pub only: Option<String>,
}

impl Table {
    /// A row of figures measured elsewhere: `a` against `b`, their ratio (if one means
    /// something) and the goal.
    pub fn row(&mut self, what: &str, a: String, b: String, ratio: Option<f64>, goal: &str) {
        let row = Row {
            what: what.to_owned(),
            a,
            b,
            ratio: ratio.map_or_else(|| "".to_owned(), |r| format!("**{r:.2}×**")),
            goal: goal.to_owned(),
        };
        println!(
            "  {}: {} vs {} {} (goal {})",
            row.what, row.a, row.b, row.ratio, row.goal
        );
        self.rows.push(row);
    }

    /// Runs `a` and `b` interleaved under `plan`; adds a throughput row (A/B) and a p99 row
    /// (A/B, lower is better) named `what`, and returns both sides' figures.
    pub async fn compare(
        &mut self,
        what: &str,
        (a_name, a): (&str, &Target),
        (b_name, b): (&str, &Target),
        plan: Plan,
        goals: (&str, &str),
    ) -> Option<(Stats, Stats)> {
        if self
            .only
            .as_ref()
            .is_some_and(|only| !what.contains(only.as_str()))
        {
            return None;
        }
        let (sa, sb) = interleave(a, b, plan).await;
        self.row(
            &format!("{what}: req/s, {a_name} / {b_name}"),
            format!("{:.0}", sa.rps),
            format!("{:.0}", sb.rps),
            Some(sa.rps / sb.rps),
            goals.0,
        );
        self.row(
            &format!("{what}: p99, {a_name} / {b_name}"),
            format!("{:.2} ms", ms(sa.p99)),
            format!("{:.2} ms", ms(sb.p99)),
            Some(ms(sa.p99) / ms(sb.p99)),
            goals.1,
        );
        if self.cpu
            && let (Some(ca), Some(cb)) = (sa.cpu_per_request, sb.cpu_per_request)
        {
            let us = |d: Duration| d.as_secs_f64() * 1e6;
            self.row(
                &format!("{what}: server CPU per request, {a_name} / {b_name}"),
                format!("{:.1} µs", us(ca)),
                format!("{:.1} µs", us(cb)),
                Some(us(ca) / us(cb)),
                "",
            );
        }
        if sa.errors + sb.errors > 0 {
            println!("  errors: {a_name} {}, {b_name} {}", sa.errors, sb.errors);
        }
        Some((sa, sb))
    }

    /// The table as Markdown.
    pub fn print(&self) {
        println!();
        println!("| measurement | A | B | A/B | goal |");
        println!("|---|---|---|---|---|");
        for row in &self.rows {
            println!(
                "| {} | {} | {} | {} | {} |",
                row.what, row.a, row.b, row.ratio, row.goal
            );
        }
    }
}

/// `a` and `b` under `plan`, interleaved.
pub async fn interleave(a: &Target, b: &Target, plan: Plan) -> (Stats, Stats) {
    drive(a, plan.clients, plan.warmup).await;
    drive(b, plan.clients, plan.warmup).await;
    let mut samples = [Samples::default(), Samples::default()];
    let targets = [a, b];
    for round in 0..plan.rounds {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let before = targets[i].pid.and_then(cpu_time);
            let mut run = drive(targets[i], plan.clients, plan.per_round).await;
            run.cpu = before
                .zip(targets[i].pid.and_then(cpu_time))
                .map(|(b, a)| a - b);
            samples[i].add(run);
        }
    }
    let [sa, sb] = samples.map(Samples::stats);
    (sa, sb)
}

/// The CPU time (user and system, every thread, 10 ms ticks) process `pid` has used so far, from
/// `/proc/PID/stat` (`None` where there is none).
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces) in parentheses: utime and stime are
    // the 14th and 15th fields of the line, in clock ticks.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // Clock ticks are USER_HZ, 100 per second in Linux's user-space ABI.
    Some(Duration::from_nanos((utime + stime) * 10_000_000))
}
