# handoff: one-line aliases; CI runs the same cargo lines without `just`.

# List recipes.
default:
    @just --list

# Build the examples, serve them, rebuild and hot-deploy on every change.
run:
    cargo run --release -p handoff -- dev examples

# Put `handoff` on PATH (~/.cargo/bin): a release build of this checkout.
install:
    cargo install --path runtime --locked

# Run the server alone (flags pass through, e.g. `just serve --listen 127.0.0.1:0`).
serve *args:
    cargo run --release -p handoff -- serve {{args}}

# Every test: unit, integration (builds the guests itself), CLI and dev loop.
test *args:
    tests/install-tools
    cargo test --workspace {{args}}

# handoff vs `wasmtime serve` on the same component, same load generator, one run.
bench *args:
    cargo build --release -p handoff -p handoff-tests --bin handoff --bin bench --bin handoff-compile-worker
    target/release/bench --handoff target/release/handoff {{args}}

# Instructions per request under callgrind (repeatable on a busy machine), without and with
# tracing: `tests/instructions-per-request` on the hello example.
instructions *args:
    cargo build --release -p handoff-tests --bin serve-in-process
    tests/instructions-per-request target/release/serve-in-process "$(ls -t target/release/build/handoff-tests-*/out/guests/wasm32-wasip2/release/hello.wasm | head -1)" {{args}}
    tests/instructions-per-request target/release/serve-in-process "$(ls -t target/release/build/handoff-tests-*/out/guests/wasm32-wasip2/release/hello.wasm | head -1)" --traced {{args}}

# The same for WASI 0.3 shared instances: the `spin-sdk` 7 hello with the bench's
# `reuse=128&instance-concurrency=16` and 16 clients, then `wasmtime serve` (on PATH) on it at its
# 0.3 defaults, without and with epoch interruption (which handoff's engines always have).
instructions-p3 *args:
    cargo build --release -p handoff-tests --bin serve-in-process
    tests/instructions-per-request target/release/serve-in-process "$(ls -t target/release/build/handoff-tests-*/out/guests/wasm32-wasip2/release/spin_hello.wasm | head -1)" --query 'reuse=128&instance-concurrency=16' --clients 16 --requests 2048 {{args}}
    tests/instructions-per-request target/release/serve-in-process "$(ls -t target/release/build/handoff-tests-*/out/guests/wasm32-wasip2/release/spin_hello.wasm | head -1)" --peer "$(command -v wasmtime)" --clients 16 --requests 2048 {{args}}
    tests/instructions-per-request target/release/serve-in-process "$(ls -t target/release/build/handoff-tests-*/out/guests/wasm32-wasip2/release/spin_hello.wasm | head -1)" --peer "$(command -v wasmtime)" --peer-epoch --clients 16 --requests 2048 {{args}}

# Property-based fuzzing of the admin API's parsers and the upload path, many more cases.
fuzz cases="20000":
    PROPTEST_CASES={{cases}} cargo test --release -p handoff --lib fuzz_

# Format everything, host and guest workspaces.
fmt:
    cargo fmt --all
    cargo fmt --all --manifest-path tests/guests/Cargo.toml
    cargo fmt --all --manifest-path examples/Cargo.toml

# Check formatting without changing files.
fmt-check:
    cargo fmt --all --check

# Clippy, warnings as errors, host and guest workspaces.
lint:
    cargo clippy --workspace --all-targets -- -D warnings
    cargo clippy --target wasm32-wasip2 --target-dir target/guests --manifest-path tests/guests/Cargo.toml -- -D warnings
    cargo clippy --target wasm32-wasip2 --target-dir target/guests --manifest-path examples/Cargo.toml -- -D warnings

# Build the example and test guests into target/guests.
guests:
    cargo build --release --target wasm32-wasip2 --target-dir target/guests --manifest-path examples/Cargo.toml
    cargo build --release --target wasm32-wasip2 --target-dir target/guests --manifest-path tests/guests/Cargo.toml

# Compile and lint for Windows, which has no Unix domain sockets (`--takeover` is refused
# there). Needs `rustup target add x86_64-pc-windows-gnu` and a MinGW C compiler for ring and
# mimalloc (Debian: gcc-mingw-w64-x86-64). Not part of `ci`.
check-windows:
    cargo clippy -p handoff --lib --bins --target x86_64-pc-windows-gnu --locked -- -D warnings

# What CI runs.
ci: fmt-check lint test
