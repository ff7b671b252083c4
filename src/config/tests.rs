use super::*;
use std::collections::BTreeMap;

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

const URL: &str = "postgres://app:s3cret@db.example.com:5433/appdb?sslmode=require";

#[test]
fn defaults() {
    let c = Config::load(&BTreeMap::new(), &env(&[("DATABASE_URL", URL)])).unwrap();
    assert_eq!(c.listen, vec![Listen::Tcp("127.0.0.1:6432".into())]);
    assert_eq!(c.url_style, UrlStyle::Tcp);
    assert_eq!(c.pool.mode, PoolMode::Transaction);
    assert_eq!(c.pool.size, 10);
    assert!(c.pool.sizing.auto);
    assert_eq!(c.upstreams[0].url.sslmode, SslMode::Require);
    assert_eq!(c.shutdown_timeout, Duration::from_secs(25));
    assert!(c.enabled);
    assert_eq!(c.client.auth, ClientAuth::ScramSha256);
    assert_eq!(c.client.max_clients, 10_000);
    assert_eq!(c.pool.query_wait_timeout, Some(Duration::from_secs(20)));
    assert_eq!(c.upstreams.len(), 1);
    assert_eq!(c.upstreams[0].url.port, 5433);
    assert!(c.aliases_used.is_empty());
}

#[test]
fn flag_beats_env_beats_alias() {
    let e = env(&[
        ("DATABASE_URL", URL),
        ("PGSIDECAR_POOL_SIZE", "7"),
        ("PGBOUNCER_DEFAULT_POOL_SIZE", "3"),
        ("PGBOUNCER_POOL_MODE", "session"),
    ]);
    let c = Config::load(&BTreeMap::new(), &e).unwrap();
    assert_eq!(c.pool.size, 7);
    assert_eq!(c.pool.mode, PoolMode::Session);
    assert_eq!(c.aliases_used, vec![("PGBOUNCER_POOL_MODE", "PGSIDECAR_POOL_MODE")]);
    let flags: BTreeMap<String, String> = [("pool-size".to_string(), "4".to_string())].into();
    assert_eq!(Config::load(&flags, &e).unwrap().pool.size, 4);
}

#[test]
fn errors_name_the_variable() {
    let e = env(&[("DATABASE_URL", URL), ("PGSIDECAR_POOL_SIZE", "lots")]);
    let err = Config::load(&BTreeMap::new(), &e).unwrap_err().to_string();
    assert!(err.contains("PGSIDECAR_POOL_SIZE"), "{err}");
    let e = env(&[("DATABASE_URL", URL), ("PGBOUNCER_QUERY_WAIT_TIMEOUT", "soon")]);
    let err = Config::load(&BTreeMap::new(), &e).unwrap_err().to_string();
    assert!(
        err.contains("PGSIDECAR_QUERY_WAIT_TIMEOUT") && err.contains("PGBOUNCER_QUERY_WAIT_TIMEOUT"),
        "{err}"
    );
    let err = Config::load(&BTreeMap::new(), &env(&[])).unwrap_err().to_string();
    assert!(err.contains("DATABASE_URL"), "{err}");
}

#[test]
fn bad_url_error_hides_password() {
    let e = env(&[("DATABASE_URL", "postgres://app:s3cret@h/db?bogus=1")]);
    let err = Config::load(&BTreeMap::new(), &e).unwrap_err().to_string();
    assert!(err.contains("DATABASE_URL") && err.contains("bogus"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
    let c = Config::load(&BTreeMap::new(), &env(&[("DATABASE_URL", URL)])).unwrap();
    assert!(!format!("{c:?}").contains("s3cret"));
}

#[test]
fn several_urls() {
    let e = env(&[
        ("DATABASE_URL", URL),
        ("HEROKU_POSTGRESQL_ROSE_URL", "postgres://app:x@other/rosedb"),
        ("PGSIDECAR_URLS", "DATABASE_URL HEROKU_POSTGRESQL_ROSE_URL"),
    ]);
    let c = Config::load(&BTreeMap::new(), &e).unwrap();
    assert_eq!(c.upstream("rosedb").unwrap().var, "HEROKU_POSTGRESQL_ROSE_URL");
    assert!(c.upstream("nope").is_none());
    let e = env(&[("A", URL), ("B", URL), ("PGSIDECAR_URLS", "A B")]);
    assert!(Config::load(&BTreeMap::new(), &e).is_err());
}

#[test]
fn a_url_put_in_the_urls_list_is_refused_unquoted() {
    // The list names variables; a URL there (a likely mistake) must not reach the error
    // line on stderr, nor SHOW CONFIG, which shows that setting's value.
    for alias in ["PGSIDECAR_URLS", "PGBOUNCER_URLS"] {
        let e = env(&[("DATABASE_URL", URL), (alias, &format!("DATABASE_URL {URL}"))]);
        let err = Config::load(&BTreeMap::new(), &e).unwrap_err().to_string();
        assert!(err.contains("not a variable name"), "{err}");
        assert!(!err.contains("s3cret") && !err.contains("db.example.com"), "{err}");
    }
}

#[test]
fn durations_and_sizes() {
    assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
    assert_eq!(parse_duration("5"), Some(Duration::from_secs(5)));
    assert_eq!(parse_duration("5.5"), Some(Duration::from_millis(5500)));
    assert_eq!(parse_duration("2min"), Some(Duration::from_secs(120)));
    assert_eq!(parse_duration("-1"), None);
    assert_eq!(parse_duration("soon"), None);
    assert_eq!(parse_size("64kB"), Some(65536));
    assert_eq!(parse_size("256MiB"), Some(256 << 20));
    assert_eq!(parse_size("1x"), None);
}

#[test]
fn url_without_sslmode_takes_the_server_sslmode_default() {
    let e = env(&[("DATABASE_URL", "postgres://a:b@h/db"), ("PGBOUNCER_SERVER_TLS_SSLMODE", "require")]);
    assert_eq!(Config::load(&BTreeMap::new(), &e).unwrap().upstreams[0].url.sslmode, SslMode::Require);
    let e = env(&[
        ("DATABASE_URL", "postgres://a:b@h/db?sslmode=disable"),
        ("PGSIDECAR_SERVER_SSLMODE", "require"),
    ]);
    assert_eq!(Config::load(&BTreeMap::new(), &e).unwrap().upstreams[0].url.sslmode, SslMode::Disable);
}

#[test]
fn sizing_inputs_and_buildpack_leftovers() {
    let e = env(&[
        ("DATABASE_URL", URL),
        ("PGSIDECAR_PLAN", "standard-0"),
        ("PGSIDECAR_PROCESSES", "4"),
        ("PGBOUNCER_ENABLED", "0"),
        ("PGBOUNCER_RESERVE_POOL_SIZE", "1"),
    ]);
    let c = Config::load(&BTreeMap::new(), &e).unwrap();
    assert_eq!(c.pool.sizing.plan, Some(("standard-0".into(), 120)));
    assert_eq!(c.pool.sizing.processes, 4);
    assert!(!c.enabled);
    assert_eq!(c.ignored_vars.len(), 1);
    let e = env(&[("DATABASE_URL", URL), ("PGSIDECAR_PLAN", "gigantic")]);
    assert!(Config::load(&BTreeMap::new(), &e).unwrap_err().to_string().contains("PGSIDECAR_PLAN"));
    let e = env(&[("DATABASE_URL", URL), ("PGSIDECAR_POOL_SIZE", "7")]);
    let c = Config::load(&BTreeMap::new(), &e).unwrap();
    assert!(!c.pool.sizing.auto);
    assert_eq!(c.pool.size, 7);
}

#[test]
fn admin_users_and_raw_values() {
    let c = Config::load(&BTreeMap::new(), &env(&[("DATABASE_URL", URL)])).unwrap();
    assert!(c.admin.allows("anyone"));
    assert_eq!(c.raw.get("pool-mode").value, "transaction");
    let e = env(&[("DATABASE_URL", URL), ("PGSIDECAR_ADMIN_USERS", " ops, app  dba")]);
    let c = Config::load(&BTreeMap::new(), &e).unwrap();
    assert_eq!(c.admin.users, ["ops", "app", "dba"]);
    assert!(c.admin.allows("app") && !c.admin.allows("web"));
    assert!(!format!("{:?}", c.raw).contains("s3cret"));
}

#[test]
fn reliability_timeouts() {
    let c = Config::load(&BTreeMap::new(), &env(&[("DATABASE_URL", URL)])).unwrap();
    assert_eq!(c.pool.query_timeout, None);
    assert_eq!(c.pool.idle_transaction_timeout, Some(Duration::from_secs(60)));
    assert_eq!(c.pool.server_check_delay, Duration::from_secs(30));
    let e = env(&[
        ("DATABASE_URL", URL),
        ("PGBOUNCER_QUERY_TIMEOUT", "90"),
        ("PGBOUNCER_IDLE_TRANSACTION_TIMEOUT", "0"),
        ("PGBOUNCER_SERVER_CHECK_DELAY", "0"),
    ]);
    let c = Config::load(&BTreeMap::new(), &e).unwrap();
    assert_eq!(c.pool.query_timeout, Some(Duration::from_secs(90)));
    assert_eq!(c.pool.idle_transaction_timeout, None);
    assert_eq!(c.pool.server_check_delay, Duration::ZERO);
    let e = env(&[
        ("DATABASE_URL", URL),
        ("PGSIDECAR_QUERY_TIMEOUT", "1500ms"),
        ("PGBOUNCER_QUERY_TIMEOUT", "9"),
    ]);
    assert_eq!(
        Config::load(&BTreeMap::new(), &e).unwrap().pool.query_timeout,
        Some(Duration::from_millis(1500))
    );
    let e = env(&[("DATABASE_URL", URL), ("PGSIDECAR_IDLE_TRANSACTION_TIMEOUT", "a while")]);
    let err = Config::load(&BTreeMap::new(), &e).unwrap_err().to_string();
    assert!(err.contains("PGSIDECAR_IDLE_TRANSACTION_TIMEOUT"), "{err}");
}

#[test]
fn a_socket_only_listen_list_hands_out_the_socket_unless_tcp_was_asked_for() {
    let e = env(&[("DATABASE_URL", URL), ("PGSIDECAR_LISTEN", "/tmp/sc:6432")]);
    assert_eq!(Config::load(&BTreeMap::new(), &e).unwrap().url_style, UrlStyle::Socket);
    // Asked for by name, tcp with no TCP listener is still refused, naming the fix.
    let e = env(&[
        ("DATABASE_URL", URL),
        ("PGSIDECAR_LISTEN", "/tmp/sc:6432"),
        ("PGSIDECAR_CLIENT_URL_STYLE", "tcp"),
    ]);
    let err = Config::load(&BTreeMap::new(), &e).unwrap_err().to_string();
    assert!(err.contains("PGSIDECAR_CLIENT_URL_STYLE=socket"), "{err}");
    // A bare unix:PATH has no libpq form: the default stays tcp, and is refused.
    let e = env(&[("DATABASE_URL", URL), ("PGSIDECAR_LISTEN", "unix:/tmp/sc.sock")]);
    assert!(Config::load(&BTreeMap::new(), &e).is_err());
}
