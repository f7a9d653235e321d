//! Adversarial components Rust cannot produce (slow to compile, many memories or instances),
//! written as wat.

/// A component whose core module has `functions` functions: slow and memory-hungry to
/// compile (seconds and hundreds of MiB at 20 000), and with no HTTP handler, so its deploy
/// fails after compiling. An adversarial input, hence wat.
pub fn slow_to_compile(functions: usize) -> Vec<u8> {
    let mut wat = String::from("(component (core module");
    for i in 0..functions {
        wat.push_str(&format!(
            " (func (export \"f{i}\") (param i32) (result i32) \
             local.get 0 i32.const {i} i32.add i32.const 7 i32.mul \
             local.get 0 i32.xor i32.const 3 i32.shr_u)"
        ));
    }
    wat.push_str("))");
    wat::parse_str(&wat).expect("valid wat")
}

/// A `wasi:http` handler component that instantiates one small core module (one 64 KiB memory
/// and a `grow` function) `memories` times. Each request grows every one of those memories by
/// `pages` wasm pages (trapping if a growth is refused), then answers 200 with an empty body.
/// With a cap per memory it could commit `memories` times its route's `max-memory`. An
/// adversarial input Rust cannot produce, hence wat.
pub fn many_memories(memories: usize, pages: u32) -> Vec<u8> {
    many_instances(memories, pages, 0, 0)
}

/// [`many_memories`], plus `tables` instances of a module with one table and `empty` instances
/// of an empty module: `1 + memories + tables + empty` core instances in all.
pub fn many_instances(memories: usize, pages: u32, tables: usize, empty: usize) -> Vec<u8> {
    // The `wasi:http/types` functions the handler calls, with their exact types (the
    // `error-code` variant is part of `response-outparam.set`'s signature).
    const TYPES: &str = r#"
      (type $types (instance
        (export "fields" (type (sub resource)))
        (export "incoming-request" (type (sub resource)))
        (export "outgoing-response" (type (sub resource)))
        (export "response-outparam" (type (sub resource)))
        (type $ostr (option string))
        (type $dns-record (record (field "rcode" $ostr) (field "info-code" (option u16))))
        (export "DNS-error-payload" (type $dns (eq $dns-record)))
        (type $tls-record
          (record (field "alert-id" (option u8)) (field "alert-message" $ostr)))
        (export "TLS-alert-received-payload" (type $tls (eq $tls-record)))
        (type $ou32 (option u32))
        (type $fsp-record (record (field "field-name" $ostr) (field "field-size" $ou32)))
        (export "field-size-payload" (type $fsp (eq $fsp-record)))
        (type $ou64 (option u64))
        (type $error-code-variant (variant (case "DNS-timeout") (case "DNS-error" $dns)
          (case "destination-not-found") (case "destination-unavailable")
          (case "destination-IP-prohibited") (case "destination-IP-unroutable")
          (case "connection-refused") (case "connection-terminated") (case "connection-timeout")
          (case "connection-read-timeout") (case "connection-write-timeout")
          (case "connection-limit-reached") (case "TLS-protocol-error")
          (case "TLS-certificate-error") (case "TLS-alert-received" $tls)
          (case "HTTP-request-denied") (case "HTTP-request-length-required")
          (case "HTTP-request-body-size" $ou64) (case "HTTP-request-method-invalid")
          (case "HTTP-request-URI-invalid") (case "HTTP-request-URI-too-long")
          (case "HTTP-request-header-section-size" $ou32)
          (case "HTTP-request-header-size" (option $fsp))
          (case "HTTP-request-trailer-section-size" $ou32)
          (case "HTTP-request-trailer-size" $fsp) (case "HTTP-response-incomplete")
          (case "HTTP-response-header-section-size" $ou32)
          (case "HTTP-response-header-size" $fsp) (case "HTTP-response-body-size" $ou64)
          (case "HTTP-response-trailer-section-size" $ou32)
          (case "HTTP-response-trailer-size" $fsp)
          (case "HTTP-response-transfer-coding" $ostr)
          (case "HTTP-response-content-coding" $ostr) (case "HTTP-response-timeout")
          (case "HTTP-upgrade-failed") (case "HTTP-protocol-error") (case "loop-detected")
          (case "configuration-error") (case "internal-error" $ostr)))
        (export "error-code" (type $error-code (eq $error-code-variant)))
        (export "[constructor]fields" (func (result (own 0))))
        (export "[constructor]outgoing-response"
          (func (param "headers" (own 0)) (result (own 2))))
        (export "[static]response-outparam.set"
          (func (param "param" (own 3)) (param "response" (result (own 2) (error $error-code)))))
      ))
      (import "wasi:http/types@0.2.12" (instance $http (type $types)))
      (alias export $http "incoming-request" (type $incoming-request))
      (alias export $http "response-outparam" (type $response-outparam))
      (alias export $http "[constructor]fields" (func $fields))
      (alias export $http "[constructor]outgoing-response" (func $response))
      (alias export $http "[static]response-outparam.set" (func $set))
    "#;
    let mut wat = String::from("(component");
    wat.push_str(TYPES);
    wat.push_str(
        r#"(core module $memory
             (memory (export "memory") 1)
             (func (export "grow") (param i32) (result i32) local.get 0 memory.grow))"#,
    );
    for i in 0..memories {
        wat.push_str(&format!("(core instance $m{i} (instantiate $memory))"));
    }
    wat.push_str("(core module $table (table 1 funcref)) (core module $empty)");
    for _ in 0..tables {
        wat.push_str("(core instance (instantiate $table))");
    }
    for _ in 0..empty {
        wat.push_str("(core instance (instantiate $empty))");
    }
    wat.push_str(
        r#"(alias core export $m0 "memory" (core memory $mem0))
           (core func $c-fields (canon lower (func $fields)))
           (core func $c-response (canon lower (func $response)))
           (core func $c-set (canon lower (func $set) (memory $mem0)))
           (core instance $host (export "fields" (func $c-fields))
             (export "response" (func $c-response)) (export "set" (func $c-set)))
           (core module $main
             (import "host" "fields" (func $fields (result i32)))
             (import "host" "response" (func $response (param i32) (result i32)))
             (import "host" "set" (func $set (param i32 i32 i32 i32 i64 i32 i32 i32 i32)))"#,
    );
    for i in 0..memories {
        wat.push_str(&format!(
            r#"(import "m{i}" "grow" (func $grow{i} (param i32) (result i32)))"#
        ));
    }
    wat.push_str(r#"(func (export "handle") (param $request i32) (param $out i32)"#);
    for i in 0..memories {
        wat.push_str(&format!(
            "(if (i32.eq (call $grow{i} (i32.const {pages})) (i32.const -1)) (then unreachable))"
        ));
    }
    wat.push_str(
        r#"(call $set (local.get $out) (i32.const 0) (call $response (call $fields))
             (i32.const 0) (i64.const 0) (i32.const 0) (i32.const 0) (i32.const 0)
             (i32.const 0))))
           (core instance $main (instantiate $main (with "host" (instance $host))"#,
    );
    for i in 0..memories {
        wat.push_str(&format!(r#"(with "m{i}" (instance $m{i}))"#));
    }
    wat.push_str(
        r#"))
           (func $handle (param "request" (own $incoming-request))
             (param "response-out" (own $response-outparam))
             (canon lift (core func $main "handle")))
           (instance $handler (export "handle" (func $handle)))
           (export "wasi:http/incoming-handler@0.2.12" (instance $handler)))"#,
    );
    wat::parse_str(&wat).expect("valid wat")
}
