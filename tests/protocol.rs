//! Raw wire-level behaviour: SSL/GSS negotiation, protocol version negotiation, malformed
//! input before and after authentication, and errors from the server side.

mod common;

use bytes::Buf;
use common::pg::{TestPg, SCRAM_USER};
use common::proxy::{self, env_for, start, start_with_env};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::raw::startup_version as startup;

/// Reads one typed message.
async fn read_msg(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    s.read_exact(&mut head).await.ok()?;
    let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let mut body = vec![0u8; len - 4];
    s.read_exact(&mut body).await.ok()?;
    Some((head[0], body))
}

fn sqlstate(body: &[u8]) -> String {
    let mut b = body;
    while !b.is_empty() && b[0] != 0 {
        let field = b[0];
        b.advance(1);
        let end = b.iter().position(|&c| c == 0).unwrap();
        if field == b'C' {
            return String::from_utf8_lossy(&b[..end]).into_owned();
        }
        b.advance(end + 1);
    }
    String::new()
}

/// Reads until an ErrorResponse or the end of the stream; returns the SQLSTATE if any.
async fn error_or_close(s: &mut TcpStream) -> Option<String> {
    while let Some((t, body)) = read_msg(s).await {
        if t == b'E' {
            return Some(sqlstate(&body));
        }
    }
    None
}

/// Logs in with client auth `trust` and waits for ReadyForQuery.
async fn trusted_login(p: &proxy::TestProxy, db: &str) -> TcpStream {
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(&startup(196_608, &[("user", SCRAM_USER), ("database", db)])).await.unwrap();
    loop {
        let (t, _) = read_msg(&mut s).await.expect("login messages");
        if t == b'Z' {
            return s;
        }
        assert_ne!(t, b'E');
    }
}

async fn still_serves(p: &proxy::TestProxy, db: &str) {
    let c = p.connect(db).await;
    assert_eq!(c.simple_query("select 1").await.unwrap().len(), 3);
}

#[tokio::test]
async fn ssl_and_gss_requests_are_refused_then_login_proceeds() {
    let pg = TestPg::shared();
    let db = pg.create_db("sslreq");
    let p = start(pg, &db, &[]).await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30]).await.unwrap(); // GSSENCRequest
    assert_eq!(s.read_u8().await.unwrap(), b'N');
    s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await.unwrap(); // SSLRequest
    assert_eq!(s.read_u8().await.unwrap(), b'N');
    s.write_all(&startup(196_608, &[("user", SCRAM_USER), ("database", &db)])).await.unwrap();
    let (t, body) = read_msg(&mut s).await.unwrap();
    assert_eq!((t, &body[..4]), (b'R', &10i32.to_be_bytes()[..]), "SCRAM requested");
}

/// SCRAM's final message waits for AuthenticationOk and the greeting: the client gets the end
/// of its login in one read (one write of the proxy's, one wake-up of the client's).
#[tokio::test]
async fn the_scram_final_message_comes_with_authentication_ok() {
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
    let pg = TestPg::shared();
    let db = pg.create_db("saslfinal");
    let p = start(pg, &db, &[]).await;
    let mut s = TcpStream::connect(p.direct).await.unwrap();
    s.write_all(&startup(196_608, &[("user", SCRAM_USER), ("database", &db)])).await.unwrap();
    let (t, body) = read_msg(&mut s).await.unwrap();
    assert_eq!((t, &body[..4]), (b'R', &10i32.to_be_bytes()[..]), "SCRAM requested");
    let mut scram = ScramSha256::new(common::pg::SCRAM_PASS.as_bytes(), ChannelBinding::unsupported());
    let mut initial = b"SCRAM-SHA-256\0".to_vec();
    initial.extend_from_slice(&(scram.message().len() as i32).to_be_bytes());
    initial.extend_from_slice(scram.message());
    s.write_all(&common::raw::message(b'p', &initial)).await.unwrap();
    let (t, body) = read_msg(&mut s).await.unwrap();
    assert_eq!((t, &body[..4]), (b'R', &11i32.to_be_bytes()[..]), "SASLContinue");
    scram.update(&body[4..]).unwrap();
    s.write_all(&common::raw::message(b'p', scram.message())).await.unwrap();
    // One read: a loopback write arrives whole (the proxy's own listener, not the chopper
    // of PGSIDECAR_TEST_CHOP, which would cut it).
    let mut buf = vec![0u8; 64 * 1024];
    let n = s.read(&mut buf).await.unwrap();
    let mut tags = Vec::new();
    let mut b = &buf[..n];
    while b.len() >= 5 {
        let len = i32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
        let code = if b[0] == b'R' { i32::from_be_bytes([b[5], b[6], b[7], b[8]]) } else { -1 };
        if b[0] == b'R' && code == 12 {
            scram.finish(&b[9..1 + len]).expect("the server signature verifies");
        }
        tags.push((b[0] as char, code));
        b = &b[(1 + len).min(b.len())..];
    }
    assert_eq!(
        tags.get(..2),
        Some(&[('R', 12), ('R', 0)][..]),
        "SASLFinal then AuthenticationOk, in one read: {tags:?}"
    );
    assert_eq!(tags.last(), Some(&('Z', -1)), "the greeting ends with ReadyForQuery: {tags:?}");
}

#[tokio::test]
async fn newer_protocol_minor_is_negotiated_down() {
    let pg = TestPg::shared();
    let db = pg.create_db("negotiate");
    let p = start(pg, &db, &[]).await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(&startup(196_610, &[("user", SCRAM_USER), ("database", &db), ("_pq_.future", "1")]))
        .await
        .unwrap();
    let (t, body) = read_msg(&mut s).await.unwrap();
    assert_eq!(t, b'v');
    let mut b = &body[..];
    // The whole version number, as Postgres sends it (libpq 18 reads 0 as a downgrade
    // below 3.0 and hangs up).
    assert_eq!(b.get_i32(), 196_608, "newest version served: 3.0");
    assert_eq!(b.get_i32(), 1);
    assert_eq!(b, b"_pq_.future\0");
    let (t, _) = read_msg(&mut s).await.unwrap();
    assert_eq!(t, b'R');
}

#[tokio::test]
async fn malformed_startup_packets_get_a_clean_error() {
    let pg = TestPg::shared();
    let db = pg.create_db("badstartup");
    let p = start(pg, &db, &[]).await;
    let cases: Vec<Vec<u8>> = vec![
        0x7fff_ffffi32.to_be_bytes().to_vec(), // huge length
        (-8i32).to_be_bytes().to_vec(),        // negative length
        vec![0, 0, 0, 4],                      // too short
        startup(131_072, &[("user", "x")]),    // protocol 2
        {
            let mut v = startup(196_608, &[("user", "x")]);
            let n = v.len();
            v[n - 3] = 0xff;
            v
        }, // invalid UTF-8
        {
            let mut v = startup(196_608, &[("user", "x")]);
            v.truncate(v.len() - 1);
            let n = v.len() as i32;
            v[..4].copy_from_slice(&n.to_be_bytes());
            v
        }, // no terminator
    ];
    for case in cases {
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        s.write_all(&case).await.unwrap();
        let code = error_or_close(&mut s).await;
        assert!(matches!(code.as_deref(), Some("08P01") | Some("0A000") | None), "{case:?}: {code:?}");
    }
    // A password message where SASLInitialResponse is expected, with garbage.
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(&startup(196_608, &[("user", SCRAM_USER), ("database", &db)])).await.unwrap();
    s.write_all(b"p\0\0\0\x08abcd").await.unwrap();
    assert_eq!(error_or_close(&mut s).await.as_deref(), Some("08P01"));
    // A non-password message during authentication.
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(&startup(196_608, &[("user", SCRAM_USER), ("database", &db)])).await.unwrap();
    s.write_all(b"Q\0\0\0\x0dselect 1\0").await.unwrap();
    assert_eq!(error_or_close(&mut s).await.as_deref(), Some("08P01"));
    // An oversized password message is refused before it is read.
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(&startup(196_608, &[("user", SCRAM_USER), ("database", &db)])).await.unwrap();
    s.write_all(b"p\x10\0\0\0").await.unwrap();
    assert_eq!(error_or_close(&mut s).await.as_deref(), Some("08P01"));
    still_serves(&p, &db).await;
}

#[tokio::test]
async fn bad_lengths_after_login_close_only_that_client() {
    let pg = TestPg::shared();
    let db = pg.create_db("badafter");
    let p =
        start(pg, &db, &[("PGSIDECAR_CLIENT_AUTH", "trust"), ("PGSIDECAR_MAX_MESSAGE_SIZE", "1MiB")]).await;
    for bad in [&b"Q\x7f\xff\xff\xff"[..], b"Q\xff\xff\xff\xf0", b"Q\0\0\0\x02"] {
        let mut s = trusted_login(&p, &db).await;
        s.write_all(bad).await.unwrap();
        assert_eq!(error_or_close(&mut s).await.as_deref(), Some("08P01"), "{bad:?}");
    }
    // An unknown message type ends the session, as Postgres would, without reaching a server.
    let mut s = trusted_login(&p, &db).await;
    s.write_all(b"y\0\0\0\x04").await.unwrap();
    assert_eq!(error_or_close(&mut s).await.as_deref(), Some("08P01"));
    still_serves(&p, &db).await;
    // Every server is back (session mode resets it after its client left, meanwhile).
    common::watch::until(std::time::Duration::from_secs(10), "no server out on a lease", || async {
        p.proxy.upstreams()[0].pool.stats().active == 0
    })
    .await;
}

#[tokio::test]
async fn server_login_failure_reaches_the_client_with_the_servers_message() {
    let pg = TestPg::shared();
    let db = pg.create_db("srvfail");
    let mut env = env_for(pg, SCRAM_USER, &db, "require", &[]);
    // The proxy accepts clients with the right password, but the URL's password is wrong.
    env.insert(
        "DATABASE_URL".into(),
        pg.url(SCRAM_USER, &db, "require").replace("scram-pass%2F1", "scram-pass%2F9"),
    );
    let p = start_with_env(env).await;
    let conn =
        format!("host=127.0.0.1 port={} user={SCRAM_USER} password=scram-pass/9 dbname={db}", p.port());
    let err =
        common::must_fail(tokio_postgres::connect(&conn, tokio_postgres::NoTls).await, "server refuses");
    let db_err = err.as_db_error().expect("a server error");
    assert_eq!(db_err.code().code(), "28P01");
    assert!(db_err.message().contains("password authentication failed"), "{}", db_err.message());
}

#[tokio::test]
async fn database_down_gives_a_fast_clear_error() {
    let pg = TestPg::shared();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut env = env_for(pg, SCRAM_USER, "down", "require", &[]);
    env.insert("DATABASE_URL".into(), format!("postgres://{SCRAM_USER}:x@127.0.0.1:{port}/down"));
    let p = start_with_env(env).await;
    let conn = format!("host=127.0.0.1 port={} user={SCRAM_USER} password=x dbname=down", p.port());
    let err = common::must_fail(tokio_postgres::connect(&conn, tokio_postgres::NoTls).await, "no server");
    let db_err = err.as_db_error().expect("an error message, not a hang-up");
    assert_eq!(db_err.code().code(), "08001");
    assert!(db_err.message().contains("could not connect"), "{}", db_err.message());
}

#[tokio::test]
async fn server_tls_modes() {
    let pg = TestPg::shared();
    let db = pg.create_db("tlsmodes");
    let ca = pg.ca_cert_path().to_str().unwrap().to_owned();
    let url = pg.url(SCRAM_USER, &db, "");
    let with = |q: &str| format!("{url}?{q}");
    // verify-full against the CA that signed the server certificate (SAN 127.0.0.1).
    for q in [
        format!("sslmode=verify-full&sslrootcert={ca}"),
        format!("sslmode=verify-ca&sslrootcert={ca}"),
        format!("sslmode=require&sslrootcert={ca}"),
        "sslmode=require".into(),
        "sslmode=prefer".into(),
        "sslmode=disable".into(),
    ] {
        let mut env = env_for(pg, SCRAM_USER, &db, "", &[]);
        env.insert("DATABASE_URL".into(), with(&q));
        let p = start_with_env(env).await;
        let c = p.connect(&db).await;
        let rows =
            c.simple_query("select ssl::text from pg_stat_ssl where pid = pg_backend_pid()").await.unwrap();
        let ssl = match &rows[1] {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).unwrap().to_owned(),
            _ => panic!(),
        };
        assert_eq!(ssl, if q == "sslmode=disable" { "false" } else { "true" }, "{q}");
    }
    // A certificate from another CA is refused by verify-ca and verify-full, and by require
    // given a root certificate (as libpq does).
    let dir = tempfile::tempdir().unwrap();
    let other_ca = dir.path().join("other.pem");
    std::fs::write(&other_ca, common::pg::generate_tls().ca_pem).unwrap();
    for mode in ["verify-ca", "verify-full", "require"] {
        let mut env = env_for(pg, SCRAM_USER, &db, "", &[]);
        env.insert(
            "DATABASE_URL".into(),
            with(&format!("sslmode={mode}&sslrootcert={}", other_ca.display())),
        );
        let p = start_with_env(env).await;
        let err = p.connect_with(&db, "").await.expect_err("refused");
        assert_eq!(err.code().map(|c| c.code()), Some("08001"), "{mode}: {err}");
    }
    // verify-full to a host name the certificate does not carry: reach the same server as
    // 127.0.0.2 through a relay.
    let relay = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let relay_port = relay.local_addr().unwrap().port();
    let pg_port = pg.port();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = relay.accept().await {
            tokio::spawn(async move {
                let mut outbound = TcpStream::connect(("127.0.0.1", pg_port)).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    });
    for (mode, ok) in [("verify-full", false), ("verify-ca", true)] {
        let mut env = env_for(pg, SCRAM_USER, &db, "", &[]);
        let relayed = url.replace(&format!("127.0.0.1:{pg_port}"), &format!("127.0.0.2:{relay_port}"));
        env.insert("DATABASE_URL".into(), format!("{relayed}?sslmode={mode}&sslrootcert={ca}"));
        let p = start_with_env(env).await;
        let r = p.connect_with(&db, "").await;
        assert_eq!(r.is_ok(), ok, "{mode}: {:?}", r.err());
    }
}

#[tokio::test]
async fn bytes_sent_after_ssl_request_are_refused() {
    let pg = TestPg::shared();
    let db = pg.create_db("sslinject");
    let dir = tempfile::tempdir().unwrap();
    let tls = common::pg::generate_tls();
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&cert, &tls.cert_pem).unwrap();
    std::fs::write(&key, &tls.key_pem).unwrap();
    let p = start(
        pg,
        &db,
        &[
            ("PGSIDECAR_CLIENT_TLS_CERT", cert.to_str().unwrap()),
            ("PGSIDECAR_CLIENT_TLS_KEY", key.to_str().unwrap()),
        ],
    )
    .await;
    // SSLRequest with a plaintext startup packet glued on (CVE-2021-23222 style).
    let mut s = TcpStream::connect(p.tcp).await.unwrap();
    let mut bytes = vec![0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    bytes.extend(startup(196_608, &[("user", SCRAM_USER), ("database", &db)]));
    s.write_all(&bytes).await.unwrap();
    let mut buf = [0u8; 1];
    let n = s.read(&mut buf).await.unwrap_or(0);
    assert_eq!(n, 0, "the connection must close without answering 'S'");
    still_serves(&p, &db).await;
}
