//! Configuration errors as a user sees them, through the public API
//! (`ssegate::config::parse` / `load`): one test per class of mistake, each
//! asserting file, line, column, dotted key (0-based indexes) and a fragment
//! of the reason; plus every shipped `conf/*.toml` loading, several errors
//! reported together, and arbitrary input never panicking.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use ssegate::config::{self, ConfigError, ConfigErrors};

const LISTENER: &str = "[[listener]]\naddress = \"127.0.0.1:8080\"\n";
const UPSTREAM: &str = "[[upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:3000\"]\n";
const ROUTE: &str = "[[route]]\npath = \"/\"\nupstream = \"app\"\n";

/// `head` followed by whichever required sections it does not define, so
/// the line numbers of the mistake under test are those of `head`.
fn doc(head: &str) -> String {
    let mut text = head.to_string();
    for (header, section) in [
        ("[[listener]]", LISTENER),
        ("[[upstream]]", UPSTREAM),
        ("[[route]]", ROUTE),
    ] {
        if !head.contains(header) {
            text.push_str(section);
        }
    }
    text
}

fn parse_errors(text: &str, base_dir: &Path) -> Vec<ConfigError> {
    match config::parse(text, "test.toml", base_dir) {
        Ok(_) => panic!("should be rejected:\n{text}"),
        Err(ConfigErrors(errors)) => errors,
    }
}

/// Asserts that `text` has exactly one error, at this place, about this key.
#[track_caller]
fn assert_error(text: &str, line: usize, column: usize, key: &str, fragment: &str) {
    assert_error_in(text, Path::new("."), line, column, key, fragment);
}

#[track_caller]
fn assert_error_in(
    text: &str,
    base_dir: &Path,
    line: usize,
    column: usize,
    key: &str,
    fragment: &str,
) {
    let errors = parse_errors(text, base_dir);
    assert_eq!(
        errors.len(),
        1,
        "expected one error for:\n{text}\ngot: {errors:#?}"
    );
    check(&errors[0], Some((line, column)), key, fragment);
}

#[track_caller]
fn check(e: &ConfigError, at: Option<(usize, usize)>, key: &str, fragment: &str) {
    assert_eq!(e.file, "test.toml", "{e}");
    assert_eq!(e.line.zip(e.column), at, "position of {e}");
    assert_eq!(e.key, key, "{e}");
    assert!(e.message.contains(fragment), "{e}\n  lacks {fragment:?}");
}

/// A fresh folder under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "ssegate-config-errors-{}-{n}-{name}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).expect("write temp file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn shipped(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("conf")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// ---- the file as a whole -------------------------------------------------

#[test]
fn toml_syntax_error_is_reported_alone_with_its_position() {
    let text = doc("[server]\nthreads = 2\npid_file = \"/tmp/x\n");
    let errors = parse_errors(&text, Path::new("."));
    assert_eq!(errors.len(), 1, "{errors:?}");
    check(&errors[0], Some((3, 19)), "", "invalid TOML");
}

#[test]
fn unknown_key_names_the_valid_ones() {
    assert_error(
        &doc("[server]\nthreads = 2\nthred = 2\n"),
        3,
        1,
        "server.thred",
        "unknown field `thred`, expected one of `threads`, `pid_file`",
    );
}

#[test]
fn unknown_key_in_an_indexed_section() {
    let text = doc("[[listener]]\naddress = \"127.0.0.1:8080\"\n[[listener]]\naddress = \"127.0.0.1:8081\"\nh2_streams = 5\n");
    assert_error(
        &text,
        5,
        1,
        "listener[1].h2_streams",
        "expected one of `address`, `tls`, `h2_max_streams`",
    );
}

#[test]
fn unknown_section() {
    assert_error(
        &doc("[serer]\nthreads = 2\n"),
        1,
        2,
        "serer",
        "unknown field `serer`, expected one of `server`, `listener`",
    );
}

#[test]
fn missing_required_key_names_the_table() {
    let text = doc("[[route]]\npath = \"/\"\nupstream = \"app\"\n[[route]]\npath = \"/b\"\n");
    assert_error(&text, 4, 1, "route[1].upstream", "missing field `upstream`");
}

#[test]
fn wrong_value_type() {
    assert_error(
        &doc("[server]\nthreads = \"two\"\n"),
        2,
        11,
        "server.threads",
        "expected an integer",
    );
    assert_error(
        &doc("[server]\nwork_stealing = \"yes\"\n"),
        2,
        17,
        "server.work_stealing",
        "expected a boolean",
    );
}

#[test]
fn unreadable_config_file_has_no_position() {
    let dir = TempDir::new("missing");
    let path = dir.0.join("nope.toml");
    let errors = match config::load(&path) {
        Ok(_) => panic!("missing file loaded"),
        Err(ConfigErrors(errors)) => errors,
    };
    assert_eq!(errors.len(), 1);
    let e = &errors[0];
    assert_eq!(e.file, path.display().to_string());
    assert_eq!((e.line, e.column, e.key.as_str()), (None, None, ""));
    assert!(e.message.contains("cannot read config file"), "{e}");
    assert_eq!(e.to_string(), format!("{}: {}", path.display(), e.message));
}

// ---- [server] ------------------------------------------------------------

#[test]
fn zero_threads() {
    assert_error(
        &doc("[server]\nthreads = 0\n"),
        2,
        11,
        "server.threads",
        "must be at least 1",
    );
}

// ---- [[listener]] --------------------------------------------------------

#[test]
fn no_listener() {
    let text = format!("{UPSTREAM}{ROUTE}");
    let errors = parse_errors(&text, Path::new("."));
    assert_eq!(errors.len(), 1, "{errors:?}");
    check(
        &errors[0],
        None,
        "listener",
        "at least one [[listener]] is required",
    );
    assert_eq!(
        errors[0].to_string(),
        format!("test.toml: `listener`: {}", errors[0].message)
    );
}

#[test]
fn control_characters_in_values_are_escaped_in_messages() {
    // A raw CR or ESC would let a value overwrite the FILE:LINE:COL prefix on a terminal.
    let text = doc("[[listener]]\naddress = \"x\\ry\\u001b[31m\"\n");
    let errors = parse_errors(&text, Path::new("."));
    let shown: String = errors.iter().map(|e| e.to_string()).collect();
    assert!(
        shown.contains(r#""x\ry\u{1b}[31m" is not an IP:port address"#),
        "{shown}"
    );
    assert!(!shown.chars().any(|c| c.is_control()), "{shown:?}");
}

#[test]
fn bad_listener_address() {
    assert_error(
        &doc("[[listener]]\naddress = \"localhost:8080\"\n"),
        2,
        11,
        "listener[0].address",
        "\"localhost:8080\" is not an IP:port address",
    );
    assert_error(
        &doc("[[listener]]\naddress = \"127.0.0.1\"\n"),
        2,
        11,
        "listener[0].address",
        "IP:port",
    );
}

#[test]
fn duplicate_listener_address() {
    let text = doc(
        "[[listener]]\naddress = \"127.0.0.1:8080\"\n[[listener]]\naddress = \"127.0.0.1:8080\"\n",
    );
    assert_error(
        &text,
        4,
        11,
        "listener[1].address",
        "already used by listener[0]",
    );
}

#[test]
fn h2_max_streams_out_of_range() {
    let head = "[[listener]]\naddress = \"127.0.0.1:8080\"\nh2_max_streams = 0\n";
    assert_error(
        &doc(head),
        3,
        18,
        "listener[0].h2_max_streams",
        "between 1 and 1000000, got 0",
    );
    let head = head.replace("= 0", "= 1000001");
    assert_error(
        &doc(&head),
        3,
        18,
        "listener[0].h2_max_streams",
        "got 1000001",
    );
}

fn tls_head(cert: &str, key: &str) -> String {
    doc(&format!(
        "[[listener]]\naddress = \"127.0.0.1:8443\"\ntls = {{ cert = \"{cert}\", key = \"{key}\" }}\n"
    ))
}

/// A folder holding a valid pair at `good/cert.pem` and `good/key.pem`.
fn cert_dir(name: &str) -> TempDir {
    let dir = TempDir::new(name);
    std::fs::create_dir_all(dir.0.join("good")).expect("mkdir");
    dir.write("good/cert.pem", &shipped("certs/cert.pem"));
    dir.write("good/key.pem", &shipped("certs/key.pem"));
    dir
}

#[test]
fn tls_pair_that_reads_is_accepted() {
    let dir = cert_dir("tls-ok");
    let config = config::parse(
        &tls_head("good/cert.pem", "good/key.pem"),
        "test.toml",
        &dir.0,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let tls = config.listeners[0].tls.as_ref().expect("tls");
    assert_eq!(tls.cert, dir.0.join("good/cert.pem"));
}

#[test]
fn tls_cert_missing_names_the_resolved_path() {
    let dir = cert_dir("tls-missing");
    let resolved = dir.0.join("certs/none.pem");
    assert_error_in(
        &tls_head("certs/none.pem", "good/key.pem"),
        &dir.0,
        3,
        16,
        "listener[0].tls.cert",
        &format!("cannot read certificate file {}", resolved.display()),
    );
}

#[test]
fn tls_key_unreadable() {
    // A directory cannot be read as a file, even by root (who ignores permissions).
    let dir = cert_dir("tls-unreadable");
    std::fs::create_dir_all(dir.0.join("adir")).expect("mkdir");
    assert_error_in(
        &tls_head("good/cert.pem", "adir"),
        &dir.0,
        3,
        39,
        "listener[0].tls.key",
        &format!(
            "cannot read private key file {}",
            dir.0.join("adir").display()
        ),
    );
}

#[test]
fn tls_files_that_are_not_pem() {
    let dir = cert_dir("tls-not-pem");
    dir.write("garbage.pem", "hello\n");
    assert_error_in(
        &tls_head("garbage.pem", "good/key.pem"),
        &dir.0,
        3,
        16,
        "listener[0].tls.cert",
        &format!(
            "{} is not a PEM certificate",
            dir.0.join("garbage.pem").display()
        ),
    );
    // Swapped: the key field names the certificate.
    assert_error_in(
        &tls_head("good/cert.pem", "good/cert.pem"),
        &dir.0,
        3,
        39,
        "listener[0].tls.key",
        "is not a PEM private key",
    );
}

// ---- [admin] ---------------------------------------------------------------

#[test]
fn admin_section_is_optional_and_kept() {
    let none =
        config::parse(&doc(""), "test.toml", Path::new(".")).unwrap_or_else(|e| panic!("{e}"));
    assert!(none.admin.is_none());
    let text = doc("[admin]\naddress = \"127.0.0.1:9090\"\n");
    let some = config::parse(&text, "test.toml", Path::new(".")).unwrap_or_else(|e| panic!("{e}"));
    let admin = some.admin.expect("admin");
    assert_eq!(admin.address.to_string(), "127.0.0.1:9090");
}

#[test]
fn bad_admin_address() {
    assert_error(
        &doc("[admin]\naddress = \"localhost:9090\"\n"),
        2,
        11,
        "admin.address",
        "\"localhost:9090\" is not an IP:port address; write e.g. \"127.0.0.1:9090\"",
    );
    assert_error(
        &doc("[admin]\naddress = \"127.0.0.1:0\"\n"),
        2,
        11,
        "admin.address",
        "port 0",
    );
}

#[test]
fn admin_address_of_a_listener() {
    let head =
        "[[listener]]\naddress = \"127.0.0.1:8080\"\n[[listener]]\naddress = \"127.0.0.1:9090\"\n\
                [admin]\naddress = \"127.0.0.1:9090\"\n";
    assert_error(
        &doc(head),
        6,
        11,
        "admin.address",
        "127.0.0.1:9090 is already used by listener[1]; the admin listener needs a port of its own",
    );
    // A wildcard on either side takes the port on every address.
    let head = "[admin]\naddress = \"0.0.0.0:8080\"\n[[listener]]\naddress = \"127.0.0.1:8080\"\n";
    assert_error(
        &doc(head),
        2,
        11,
        "admin.address",
        "0.0.0.0:8080 overlaps listener[0] (127.0.0.1:8080)",
    );
}

#[test]
fn admin_without_address() {
    assert_error(
        &doc("[admin]\n"),
        1,
        1,
        "admin.address",
        "missing field `address`",
    );
}

#[test]
fn unknown_key_in_admin() {
    assert_error(
        &doc("[admin]\naddress = \"127.0.0.1:9090\"\nport = 9090\n"),
        3,
        1,
        "admin.port",
        "unknown field `port`, expected `address`",
    );
}

// ---- [[upstream]] --------------------------------------------------------

#[test]
fn no_upstream() {
    let errors = parse_errors(LISTENER, Path::new("."));
    assert_eq!(errors.len(), 2, "{errors:?}");
    check(
        &errors[0],
        None,
        "upstream",
        "at least one [[upstream]] is required",
    );
    check(
        &errors[1],
        None,
        "route",
        "at least one [[route]] is required",
    );
}

#[test]
fn empty_servers() {
    assert_error(
        &doc("[[upstream]]\nname = \"app\"\nservers = []\n"),
        3,
        11,
        "upstream[0].servers",
        "at least one server is required",
    );
}

#[test]
fn bad_server_address() {
    assert_error(
        &doc(
            "[[upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:3000\", \"app.internal:3000\"]\n",
        ),
        3,
        30,
        "upstream[0].servers[1]",
        "\"app.internal:3000\" is not an IP:port address",
    );
}

#[test]
fn duplicate_upstream_name() {
    let head = format!("{UPSTREAM}{}", UPSTREAM.replace("3000", "3001"));
    assert_error(
        &doc(&head),
        5,
        8,
        "upstream[1].name",
        "already used by upstream[0]",
    );
}

#[test]
fn unknown_protocol() {
    assert_error(
        &doc(
            "[[upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:3000\"]\nprotocol = \"http2\"\n",
        ),
        4,
        12,
        "upstream[0].protocol",
        "unknown protocol \"http2\"; expected \"http1\" or \"h2c\"",
    );
}

// ---- [[route]] -----------------------------------------------------------

#[test]
fn route_to_unknown_upstream_lists_the_known_ones() {
    let head = format!(
        "{UPSTREAM}[[upstream]]\nname = \"push\"\nservers = [\"127.0.0.1:3100\"]\n[[route]]\npath = \"/\"\nupstream = \"ap\"\n"
    );
    assert_error(
        &doc(&head),
        9,
        12,
        "route[0].upstream",
        "unknown upstream \"ap\"; known upstreams: \"app\", \"push\"",
    );
}

#[test]
fn route_path_must_start_with_slash() {
    assert_error(
        &doc("[[route]]\npath = \"events/\"\nupstream = \"app\"\n"),
        2,
        8,
        "route[0].path",
        "must start with \"/\"",
    );
}

#[test]
fn bad_host_patterns() {
    for (host, reason) in [
        ("", "must not be empty"),
        ("a.com/x", "without scheme or path"),
        ("a.com:443", "port"),
        ("a .com", "whitespace"),
        ("*", "leading \"*.\""),
        ("a.*.com", "leading"),
        ("*.", "followed by a domain"),
    ] {
        let head = format!("[[route]]\nhost = \"{host}\"\npath = \"/\"\nupstream = \"app\"\n");
        assert_error(&doc(&head), 2, 8, "route[0].host", reason);
        assert_error(&doc(&head), 2, 8, "route[0].host", "invalid host pattern");
    }
}

#[test]
fn duplicate_route() {
    let head = "[[route]]\nhost = \"A.com\"\npath = \"/e\"\nupstream = \"app\"\n\
                [[route]]\nhost = \"a.com\"\npath = \"/e\"\nupstream = \"app\"\n";
    assert_error(
        &doc(head),
        7,
        8,
        "route[1].path",
        "duplicate route: route[0] already has host \"a.com\" and path \"/e\"",
    );
}

// ---- durations -----------------------------------------------------------

#[test]
fn bad_duration() {
    assert_error(
        &doc("[timeouts]\nconnect = \"5 s\"\n"),
        2,
        11,
        "timeouts.connect",
        "invalid duration \"5 s\"",
    );
    assert_error(
        &doc("[timeouts]\nconnect = \"5sec\"\n"),
        2,
        11,
        "timeouts.connect",
        "unknown unit \"sec\" (units: ms, s, m, h, d)",
    );
}

#[test]
fn zero_duration() {
    assert_error(
        &doc("[timeouts]\nread = \"0s\"\n"),
        2,
        8,
        "timeouts.read",
        "greater than zero",
    );
    assert_error(
        &doc("[stream]\nheartbeat = \"0s\"\n"),
        2,
        13,
        "stream.heartbeat",
        "write \"off\"",
    );
}

#[test]
fn off_where_not_allowed() {
    assert_error(
        &doc("[timeouts]\nwrite = \"off\"\n"),
        2,
        9,
        "timeouts.write",
        "\"off\" is not allowed here",
    );
}

#[test]
fn integer_duration_says_what_to_write() {
    assert_error(
        &doc("[[route]]\npath = \"/\"\nupstream = \"app\"\nidle_timeout = 30\n"),
        4,
        16,
        "route[0].idle_timeout",
        "write \"30s\"",
    );
}

// ---- [stream] ------------------------------------------------------------

#[test]
fn heartbeat_text_must_be_sse_comments() {
    assert_error(
        &doc("[stream]\nheartbeat_text = \"\"\n"),
        2,
        18,
        "stream.heartbeat_text",
        "must not be empty",
    );
    assert_error(
        &doc("[stream]\nheartbeat_text = \"ping\\n\\n\"\n"),
        2,
        18,
        "stream.heartbeat_text",
        "line 1 (\"ping\") is not an SSE comment",
    );
    assert_error(
        &doc("[stream]\nheartbeat_text = \":\\r\\n\\r\\n\"\n"),
        2,
        18,
        "stream.heartbeat_text",
        "\\r",
    );
    assert_error(
        &doc("[stream]\nheartbeat_text = \":\\n\"\n"),
        2,
        18,
        "stream.heartbeat_text",
        "blank line",
    );
}

#[test]
fn cache_control_must_be_a_header_value() {
    assert_error(
        &doc("[stream]\ncache_control = \"\"\n"),
        2,
        17,
        "stream.cache_control",
        "must not be empty",
    );
    assert_error(
        &doc("[stream]\ncache_control = \"no-cache\\r\\nX: y\"\n"),
        2,
        17,
        "stream.cache_control",
        "control characters (found U+000D)",
    );
}

// ---- all together ----------------------------------------------------------

#[test]
fn several_errors_are_all_reported_in_file_order() {
    let text = "\
[server]
threads = 0
[[listener]]
address = \"nowhere\"
[stream]
heartbeat = 15
[[upstream]]
name = \"app\"
servers = []
protocol = \"h3\"
[[route]]
path = \"x\"
upstream = \"nope\"
";
    let errors = parse_errors(text, Path::new("."));
    let got: Vec<(Option<usize>, &str)> = errors.iter().map(|e| (e.line, e.key.as_str())).collect();
    assert_eq!(
        got,
        [
            (Some(2), "server.threads"),
            (Some(4), "listener[0].address"),
            (Some(6), "stream.heartbeat"),
            (Some(9), "upstream[0].servers"),
            (Some(10), "upstream[0].protocol"),
            (Some(12), "route[0].path"),
            (Some(13), "route[0].upstream"),
        ]
    );
    let shown = ConfigErrors(errors).to_string();
    assert_eq!(shown.lines().count(), 7, "{shown}");
    assert!(
        shown.starts_with("test.toml:2:11: `server.threads`: must be at least 1"),
        "{shown}"
    );
}

/// Unknown keys are mistakes like any other: a typo no longer hides the
/// rest of the file (this one, with 9 mistakes, once showed 1, then 8).
#[test]
fn unknown_keys_are_reported_among_all_other_errors() {
    let text = "\
[server]
thred = 2
[[listener]]
address = \"nowhere\"
[stream]
heartbeat = 15
idle_timout = \"1h\"
[[upstream]]
name = \"app\"
servers = []
protocol = \"h3\"
[[route]]
path = \"x\"
upstream = \"nope\"
stip_prefix = true
";
    let errors = parse_errors(text, Path::new("."));
    let got: Vec<(Option<usize>, Option<usize>, &str)> = errors
        .iter()
        .map(|e| (e.line, e.column, e.key.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (Some(2), Some(1), "server.thred"),
            (Some(4), Some(11), "listener[0].address"),
            (Some(6), Some(13), "stream.heartbeat"),
            (Some(7), Some(1), "stream.idle_timout"),
            (Some(10), Some(11), "upstream[0].servers"),
            (Some(11), Some(12), "upstream[0].protocol"),
            (Some(13), Some(8), "route[0].path"),
            (Some(14), Some(12), "route[0].upstream"),
            (Some(15), Some(1), "route[0].stip_prefix"),
        ]
    );
    let shown = ConfigErrors(errors).to_string();
    assert_eq!(shown.lines().count(), 9, "{shown}");
    assert!(
        shown.starts_with(
            "test.toml:2:1: `server.thred`: unknown field `thred`, expected one of `threads`, "
        ),
        "{shown}"
    );
}

#[test]
fn unknown_key_suggests_the_nearest_known_one() {
    assert_error(
        &doc("[stream]\nheartbeat = \"5s\"\nidle_timout = \"1h\"\n"),
        3,
        1,
        "stream.idle_timout",
        "unknown field `idle_timout`, expected one of `heartbeat`, ",
    );
    let errors = parse_errors(&doc("[stream]\nidle_timout = \"1h\"\n"), Path::new("."));
    assert!(
        errors[0]
            .message
            .ends_with("; did you mean `idle_timeout`?"),
        "{}",
        errors[0]
    );
    // Nothing close: no guess.
    let errors = parse_errors(
        &doc("[admin]\naddress = \"127.0.0.1:9090\"\nport = 9090\n"),
        Path::new("."),
    );
    assert_eq!(
        errors[0].message,
        "unknown field `port`, expected `address`"
    );
}

// ---- shipped files ---------------------------------------------------------

#[test]
fn every_shipped_config_loads() {
    let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf");
    let mut checked = 0;
    for entry in std::fs::read_dir(&conf).expect("conf/ exists") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            if let Err(e) = config::load(&path) {
                panic!("{} does not load:\n{e}", path.display());
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 3,
        "expected conf/ssegate.toml, conf/minimal.toml and conf/shared.toml"
    );
}

#[test]
fn reference_config_summary() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/ssegate.toml");
    let config = config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.listeners.len(), 2);
    assert!(config.listeners[1]
        .tls
        .as_ref()
        .is_some_and(|t| t.cert.is_absolute()));
    let summary = config::summary(&config);
    for fragment in [
        "127.0.0.1:8080  plain, HTTP/1.1 + h2c, h2 max streams 1000",
        "127.0.0.1:8443  TLS, ALPN h2 + http/1.1",
        "app  http1  127.0.0.1:3000, 127.0.0.1:3001",
        "notify.example.com / -> notifications, heartbeat 5s, idle timeout 1h",
        "* /events/ -> app (strip prefix), heartbeat 15s, idle timeout off, max streams 5000",
        "* / -> app, heartbeat 15s, idle timeout 1h, max streams unlimited",
        "limits: max streams 10000, per client 100, max connections 20000, shed retry 5s + up to 5s jitter",
        "max streams 5000, resume on-error (3 attempts, backoff 1s without retry:)",
        "drain window 5s, client write timeout 1m, client buffer 262144 bytes, compressed streams at most 1000",
        "backoff 1s without retry:), compression zstd br gzip, websocket on",
        "stream defaults: heartbeat 15s (\":\\n\\n\"), idle timeout 1h",
        "timeouts: connect 5s, read 1m, write 1m, upstream keepalive 1m",
        "admin: 127.0.0.1:9090  GET /metrics",
    ] {
        assert!(
            summary.contains(fragment),
            "summary lacks {fragment:?}:\n{summary}"
        );
    }
    assert!(summary.lines().count() <= 24, "{summary}");
}

#[test]
fn shared_config_summary() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/shared.toml");
    let config = config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let share = config.routes[0].share.as_ref().expect("route[0] shares");
    assert_eq!(share.key_headers, ["accept-language"]);
    assert_eq!(share.auth.as_deref(), Some("/auth/check"));
    assert!(config.routes[1].share.is_none());
    let summary = config::summary(&config);
    let route = "  * /feeds/ -> app, heartbeat 15s, idle timeout 1h, max streams unlimited, resume off, \
                 websocket on (idle timeout 10m, over HTTP/2 yes)\n    \
                 shared: key host+path+query+accept-language, public no, linger 30s, \
                 replay 1000 events / 1048576 bytes, overflow disconnect, auth /auth/check (cache 10s)\n  \
                 * / -> app,";
    assert!(
        summary.contains(route),
        "summary lacks {route:?}:\n{summary}"
    );
}

// ---- shared streams ---------------------------------------------------------

/// An upstream, then a sharing route on /feeds/ with `keys` after its
/// `share = true`, so the first of `keys` is on line 8.
fn feeds(keys: &str) -> String {
    doc(&format!(
        "{UPSTREAM}[[route]]\npath = \"/feeds/\"\nupstream = \"app\"\nshare = true\n{keys}{ROUTE}"
    ))
}

#[test]
fn sharing_key_without_share() {
    let text = doc(&format!(
        "{UPSTREAM}[[route]]\npath = \"/feeds/\"\nupstream = \"app\"\nreplay_events = 10\n"
    ));
    assert_error(
        &text,
        7,
        17,
        "route[0].replay_events",
        "`replay_events` has no effect without `share = true`",
    );
    let text =
        feeds("share_key = [\"accept-language\"]\n").replace("share = true", "share = false");
    assert_error(
        &text,
        8,
        13,
        "route[0].share_key",
        "`share_key` has no effect without `share = true`; this route has `share = false`",
    );
}

#[test]
fn bad_share_key_names() {
    assert_error(
        &feeds("share_key = [\"accept-language\", \"Last-Event-ID\"]\n"),
        8,
        33,
        "route[0].share_key[1]",
        "\"Last-Event-ID\" selects where a subscriber resumes in a stream's replay, not which stream it joins",
    );
    assert_error(
        &feeds("share_key = [\"host\"]\n"),
        8,
        14,
        "route[0].share_key[0]",
        "\"host\" is redundant",
    );
    assert_error(
        &feeds("share_key = [\"Upgrade\"]\n"),
        8,
        14,
        "route[0].share_key[0]",
        "hop-by-hop",
    );
    assert_error(
        &feeds("share_key = [\"x-a\", \"X-A\"]\n"),
        8,
        21,
        "route[0].share_key[1]",
        "duplicate header \"x-a\" (already share_key[0])",
    );
    assert_error(
        &feeds("share_key = [\"x a\"]\n"),
        8,
        14,
        "route[0].share_key[0]",
        "\"x a\" is not a header name",
    );
}

#[test]
fn bad_sharing_values() {
    assert_error(
        &feeds("overflow = \"block\"\n"),
        8,
        12,
        "route[0].overflow",
        "unknown value \"block\"; expected \"disconnect\" or \"skip\"",
    );
    assert_error(
        &feeds("replay_events = 2000000\n"),
        8,
        17,
        "route[0].replay_events",
        "from 0 to 1000000, got 2000000",
    );
    assert_error(
        &feeds("replay_bytes = \"2GiB\"\n"),
        8,
        16,
        "route[0].replay_bytes",
        "out of range: from 0 to 1073741824 bytes",
    );
    assert_error(
        &feeds("share_linger = 30\n"),
        8,
        16,
        "route[0].share_linger",
        "write \"30s\"",
    );
    assert_error(
        &feeds("share_auth = \"auth/check\"\n"),
        8,
        14,
        "route[0].share_auth",
        "must be a path on the route's upstream starting with \"/\"",
    );
    assert_error(
        &feeds("share_auth = \"/auth#check\"\n"),
        8,
        14,
        "route[0].share_auth",
        "must not contain \"#\"",
    );
    assert_error(
        &feeds("share_auth_cache = \"1m\"\n"),
        8,
        20,
        "route[0].share_auth_cache",
        "has no effect without `share_auth`",
    );
}

#[test]
fn share_true_alone_takes_the_defaults() {
    let config =
        config::parse(&feeds(""), "test.toml", Path::new(".")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        config.routes[0].share,
        Some(config::Share::default()),
        "share = true alone"
    );
}

// ---- [limits] and route max_streams ---------------------------------------

#[test]
fn zero_max_streams() {
    assert_error(
        &doc("[limits]\nmax_streams = 0\n"),
        2,
        15,
        "limits.max_streams",
        "must be a positive whole number of streams, got 0",
    );
}

#[test]
fn negative_max_streams_per_client() {
    assert_error(
        &doc("[limits]\nmax_streams = 5\nmax_streams_per_client = -1\n"),
        3,
        26,
        "limits.max_streams_per_client",
        "got -1; leave the key out for no limit",
    );
}

#[test]
fn max_streams_as_a_string() {
    assert_error(
        &doc("[limits]\nmax_streams = \"10\"\n"),
        2,
        15,
        "limits.max_streams",
        "invalid type: string \"10\", expected an integer",
    );
}

#[test]
fn zero_route_max_streams() {
    let text = doc(&format!(
        "{UPSTREAM}[[route]]\npath = \"/\"\nupstream = \"app\"\n[[route]]\npath = \"/e/\"\nupstream = \"app\"\nmax_streams = 0\n"
    ));
    assert_error(
        &text,
        10,
        15,
        "route[1].max_streams",
        "positive whole number of streams, got 0",
    );
}

#[test]
fn shed_retry_durations() {
    assert_error(
        &doc("[limits]\nshed_retry = \"0s\"\n"),
        2,
        14,
        "limits.shed_retry",
        "greater than zero",
    );
    assert_error(
        &doc("[limits]\nshed_retry_jitter = 5\n"),
        2,
        21,
        "limits.shed_retry_jitter",
        "write \"5s\"",
    );
}

#[test]
fn unknown_key_in_limits() {
    assert_error(
        &doc("[limits]\nmax_stream = 3\n"),
        2,
        1,
        "limits.max_stream",
        "expected one of `max_streams`, `max_streams_per_client`, `max_connections`, `shed_retry`, `shed_retry_jitter`",
    );
}

#[test]
fn load_resolves_paths_against_the_config_folder() {
    let dir = cert_dir("load");
    let path = dir.write("s.toml", &tls_head("good/cert.pem", "good/key.pem"));
    let config = config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.source, path.display().to_string());
    let tls = config.listeners[0].tls.as_ref().expect("tls");
    assert_eq!(tls.key, dir.0.join("good/key.pem"));
}

proptest::proptest! {
    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        let _ = config::parse(&text, "fuzz.toml", Path::new("/nonexistent"));
    }

    #[test]
    fn toml_like_text_never_panics(text in "(\\[{1,2}[a-z]{1,8}\\]{1,2}\n|[a-z_]{1,12} = (\"[^\"\n]{0,12}\"|[0-9]{1,4}|\\[\\]|\\{\\})\n){0,12}") {
        let _ = config::parse(&text, "fuzz.toml", Path::new("/nonexistent"));
    }
}

#[test]
fn stream_robustness_keys_name_line_and_key() {
    assert_error(
        &doc("[stream]\nclient_buffer = -5\n"),
        2,
        17,
        "stream.client_buffer",
        "-5 is negative",
    );
    assert_error(
        &doc("[server]\ngrace_period = \"3s\"\n[stream]\ndrain_window = \"3s\"\n"),
        4,
        16,
        "stream.drain_window",
        "shorter than server.grace_period, 3s",
    );
    assert_error(
        &doc("[[route]]\npath = \"/\"\nupstream = \"app\"\nresume = \"on_error\"\n"),
        4,
        10,
        "route[0].resume",
        "unknown value \"on_error\"",
    );
}
