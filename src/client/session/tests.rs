//! Unit tests of the session: the size of what an idle client keeps, the cancel-error
//! replacement.

use super::attached::replace_cancel_error;

/// Every idle client keeps its session and the future of its loop: paths with servers,
/// errors and settings are boxed so that this stays small (it was 3.6 kB before).
#[tokio::test]
async fn an_idle_session_stays_small() {
    use std::collections::BTreeMap;
    let mut env = BTreeMap::new();
    env.insert("DATABASE_URL".to_owned(), "postgres://app:pw@127.0.0.1:1/appdb?sslmode=disable".to_owned());
    let config = crate::config::Config::load(&BTreeMap::new(), &env).unwrap();
    let shared = std::sync::Arc::new(crate::shared::Shared::new(config).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let login = super::Login {
        stream: crate::stream::Stream::Plain(stream),
        rbuf: bytes::BytesMut::new(),
        greeting: bytes::BytesMut::new(),
        startup: crate::wire::startup::Startup { major: 3, minor: 0, params: vec![] },
        user: "app".into(),
        database: "appdb".into(),
        upstream: shared.upstream("appdb").unwrap(),
        settings: Default::default(),
        sequence: Vec::new(),
        peer: addr.into(),
    };
    let mut session = super::Session::new(shared.clone(), login);
    let session_size = std::mem::size_of_val(&session);
    // Every transaction allocates this future: up to 1,032 B glibc serves it from its
    // per-thread cache (≈30 instructions); past it, from the arena (≈300).
    let per_transaction = std::mem::size_of_val(&*session.with_server());
    assert!(per_transaction <= TRANSACTION_LIMIT, "a transaction's future is {per_transaction} B");
    const TRANSACTION_LIMIT: usize = 1032;
    let run = session.run();
    let total = session_size + std::mem::size_of_val(&run);
    assert!(total <= LIMIT, "session {session_size} B + run future = {total} B");
    // Release: 368 B measured. The client's task adds 24 B to this and tokio pads its cell
    // to a multiple of 128 B with 104 B of its own: up to 384 B here the cell is 512 B, one
    // byte more makes it 640 B for every idle client.
    const LIMIT: usize = if cfg!(debug_assertions) { 400 } else { 384 };
}
use crate::wire::messages::{self, PgError};
use bytes::BytesMut;

#[test]
fn the_servers_cancel_error_is_replaced_whole_and_only_it() {
    let mut ours = BytesMut::new();
    PgError::error("57014", "pgsidecar: PGSIDECAR_QUERY_TIMEOUT").encode(&mut ours);
    let mut theirs = BytesMut::new();
    PgError::error("57014", "canceling statement due to user request").encode(&mut theirs);
    let mut other = BytesMut::new();
    PgError::error("22012", "division by zero").encode(&mut other);
    let mut rfq = BytesMut::new();
    messages::ready_for_query(&mut rfq, b'I');

    // The tail of a streamed message first, then another error, then the cancel's.
    let mut buf = BytesMut::from(&b"xyz"[..]);
    buf.extend_from_slice(&other);
    buf.extend_from_slice(&theirs);
    buf.extend_from_slice(&rfq);
    assert!(replace_cancel_error(&mut buf, 3, &ours));
    let mut want = BytesMut::from(&b"xyz"[..]);
    want.extend_from_slice(&other);
    want.extend_from_slice(&ours);
    want.extend_from_slice(&rfq);
    assert_eq!(buf, want);

    // Incomplete: left alone until it is whole.
    let mut buf = BytesMut::from(&theirs[..theirs.len() - 1]);
    assert!(!replace_cancel_error(&mut buf, 0, &ours));
    assert_eq!(&buf[..], &theirs[..theirs.len() - 1]);
    // A bogus length or an offset past the end changes nothing and does not panic.
    let mut buf = BytesMut::from(&b"E\xff\xff\xff\xff"[..]);
    assert!(!replace_cancel_error(&mut buf, 0, &ours));
    assert!(!replace_cancel_error(&mut buf, 100, &ours));
}
