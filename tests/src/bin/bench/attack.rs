//! A well-behaved route's latency under attack, against the same route without it.

use std::time::Duration;

use handoff_tests::{Connection, guests};

use super::{Options, load, ms, print_table, put_route, start_handoff};

/// A well-behaved route's latency while a hostile guest on another route loops, blows its
/// memory and its stack, and a crowd of connections sends nothing or half a request head;
/// against the same route's latency without the attack, in the same run.
pub async fn under_attack(opts: &Options, wasm: &[u8]) {
    const GOOD_CONNECTIONS: usize = 8;
    const CROWD: usize = 1_000;
    let run = Duration::from_secs(opts.seconds.clamp(2, 10));
    let (_server, data, admin) = start_handoff(
        &opts.handoff,
        &[
            "--request-timeout",
            "1s",
            "--max-memory",
            "64MiB",
            "--idle-timeout",
            "2s",
        ],
    );
    put_route(admin, "good", wasm).await;
    put_route(
        admin,
        "hostile",
        &std::fs::read(guests::HOSTILE).expect("hostile guest"),
    )
    .await;
    load(data, "/good", GOOD_CONNECTIONS, Duration::from_secs(1)).await;
    let baseline = load(data, "/good", GOOD_CONNECTIONS, run).await.stats();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut attackers = Vec::new();
    // Two clients per kind of hostile request.
    let kinds: Vec<String> = opts
        .attack
        .iter()
        .filter(|k| *k != "crowd")
        .map(|k| format!("/hostile/{k}"))
        .collect();
    for path in kinds.iter().flat_map(|p| [p.clone(), p.clone()]) {
        let stop = stop.clone();
        attackers.push(tokio::spawn(async move {
            let mut sent = 0u64;
            let mut conn = Connection::open(data).await;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                sent += 1;
                if conn.get(&path).await.is_err() {
                    conn = Connection::open(data).await;
                }
            }
            sent
        }));
    }
    let crowd_size = if opts.attack.iter().any(|k| k == "crowd") {
        CROWD
    } else {
        0
    };
    let mut crowd = Vec::with_capacity(crowd_size);
    for i in 0..crowd_size {
        use tokio::io::AsyncWriteExt;
        let Ok(mut stream) = tokio::net::TcpStream::connect(data).await else {
            break;
        };
        if i % 2 == 1 {
            let _ = stream
                .write_all(b"GET /good HTTP/1.1\r\nHost: a\r\nX-Slow: ")
                .await;
        }
        crowd.push(stream);
    }
    let attacked = load(data, "/good", GOOD_CONNECTIONS, run).await.stats();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut hostile_requests = 0;
    for attacker in attackers {
        hostile_requests += attacker.await.expect("attacker");
    }
    drop(crowd);

    println!();
    println!(
        "a well-behaved route under attack ({GOOD_CONNECTIONS} connections, {} s each; the attack: 2 clients \
         each sending {} ({hostile_requests} requests sent, 1 s deadline) and {crowd_size} silent or \
         half-sent connections)",
        run.as_secs(),
        kinds.join(", ")
    );
    print_table("", &[("no attack", &baseline), ("under attack", &attacked)]);
    println!(
        "ratio under attack/no attack: throughput {:.2}x, p50 {:.2}x, p99 {:.2}x",
        attacked.rps / baseline.rps,
        ms(attacked.p50) / ms(baseline.p50),
        ms(attacked.p99) / ms(baseline.p99)
    );
}
