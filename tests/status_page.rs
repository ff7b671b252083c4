//! The live status page at GET / on the metrics listener (issue 24), loaded in headless
//! Chromium (Debian's `chromium`) during a saturating load: the numbers it shows must be SHOW
//! POOLS' numbers, its statements normalized, and a screenshot is kept as an artifact
//! (target/tmp/status-page.png).

mod common;

use common::pg::{TestPg, SCRAM_PASS, SCRAM_USER};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_postgres::SimpleQueryMessage;

struct Sidecar(Child);

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_addr() -> String {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string()
}

/// Headless Chromium with a fresh profile and nothing fetched on its own.
fn chromium(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    let profile = tempfile::tempdir_in(dir).unwrap();
    Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"])
        .args(["--disable-background-networking", "--disable-component-update", "--disable-sync"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .output()
        .expect("chromium: bash .ci/run --setup-only installs it (apt package chromium)")
}

/// A plain HTTP GET of `path`: the body.
fn get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nhost: x\r\n\r\n").as_bytes()).unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body.split_once("\r\n\r\n").map_or(String::new(), |(_, b)| b.to_owned())
}

/// The number an element shows: `id="ID" data-value="N"`.
fn shown(dom: &str, id: &str) -> String {
    let at = dom.find(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("no #{id} in the page:\n{dom}"));
    let rest = &dom[at..];
    let v = rest.split("data-value=\"").nth(1).unwrap();
    v[..v.find('"').unwrap()].to_owned()
}

/// The numbers of the first SHOW POOLS row the page also shows, in the page's order.
async fn show_pools(admin: &tokio_postgres::Client) -> [String; 5] {
    admin
        .simple_query("SHOW POOLS")
        .await
        .unwrap()
        .into_iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                ["sv_active", "sv_idle", "pool_size", "cl_active", "cl_waiting"]
                    .map(|c| r.get(c).unwrap().to_owned()),
            ),
            _ => None,
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_show_pools_numbers_in_chromium() {
    let pg = TestPg::shared();
    let db = pg.create_db("statuspage");
    let (listen, metrics) = (free_addr(), free_addr());
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgsidecar"))
        .arg("serve")
        .env_remove("DYNO")
        .env("DATABASE_URL", pg.url(SCRAM_USER, &db, "require"))
        .env("PGSIDECAR_LISTEN", &listen)
        .env("PGSIDECAR_METRICS_LISTEN", &metrics)
        .env("PGSIDECAR_POOL_SIZE", "2")
        .env("PGSIDECAR_QUERY_WAIT_TIMEOUT", "60s")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let sidecar = Sidecar(child);
    let mut line = String::new();
    while !line.contains("event=listening") {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "the sidecar exited");
    }
    std::thread::spawn(move || for _ in stderr.lines() {});
    let (host, port) = listen.split_once(':').unwrap();
    let conn_str =
        |db: &str| format!("host={host} port={port} user={SCRAM_USER} password='{SCRAM_PASS}' dbname={db}");
    let connect = |db: String| {
        let s = conn_str(&db);
        async move {
            let (c, conn) = tokio_postgres::connect(&s, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            c
        }
    };
    let app = connect(db.clone()).await;
    for _ in 0..5 {
        app.simple_query("SELECT 'hunter2-literal' AS s, 7 AS n").await.unwrap();
    }
    // Saturate: two clients hold both servers, three wait, for the rest of the test.
    let held = common::watch::saturate_pool_of_two(&conn_str(&db)).await;
    let admin = connect("pgbouncer".into()).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let before = loop {
        let p = show_pools(&admin).await;
        if p[0] == "2" && p[4] == "3" {
            break p;
        }
        assert!(Instant::now() < deadline, "the pool did not saturate: {p:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Clients have waited for 5 s: the saturation event is on the page (and the sampler,
    // one point a second, has drawn a few).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = metrics.clone();
        if tokio::task::spawn_blocking(move || get(&m, "/"))
            .await
            .unwrap()
            .contains("pool saturated: 3 clients")
        {
            break;
        }
        assert!(Instant::now() < deadline, "no saturation event on the page");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let out_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let url = format!("http://{metrics}/");
    let dom = {
        let (dir, url) = (out_dir.to_owned(), url.clone());
        tokio::task::spawn_blocking(move || chromium(&dir, &["--dump-dom", &url])).await.unwrap()
    };
    let after = show_pools(&admin).await;
    let dom_text = String::from_utf8_lossy(&dom.stdout).into_owned();
    assert!(
        dom.status.success() && dom_text.contains("<h1>pgsidecar</h1>"),
        "{dom_text}\n{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    std::fs::write(out_dir.join("status-page.html"), &dom_text).unwrap();
    assert_eq!(before, after, "the load was steady while the page loaded");
    let id = |k: &str| format!("{}-{k}", db.replace(|c: char| !c.is_ascii_alphanumeric(), "_"));
    for (i, k) in ["sv_active", "sv_idle", "pool_size", "cl_active", "cl_waiting"].iter().enumerate() {
        assert_eq!(shown(&dom_text, &id(k)), after[i], "{k}: the page against SHOW POOLS");
    }
    // Charts drawn from the last seconds; statements by their normalized text only.
    for chart in ["wait-chart", "query-chart", "busy-chart", "waiting-chart"] {
        let at = dom_text.find(&format!("id=\"{}\"", id(chart))).unwrap_or_else(|| panic!("no {chart}"));
        let points = dom_text[at..].split("points=\"").nth(1).unwrap();
        assert!(points[..points.find('"').unwrap()].split_whitespace().count() >= 2, "{chart} has no line");
    }
    assert!(dom_text.contains("SELECT $1 AS s, $2 AS n"), "{dom_text}");
    assert!(dom_text.contains("pool saturated: 3 clients waiting"), "{dom_text}");
    assert!(!dom_text.contains("hunter2"), "a literal reached the page");
    assert!(!dom_text.contains(SCRAM_PASS), "a password reached the page");
    assert!(!dom_text.contains("http://") || !dom_text.contains("src=\"http"), "no external request");

    let shot = out_dir.join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    let out = {
        let (dir, url, arg) = (out_dir.to_owned(), url.clone(), format!("--screenshot={}", shot.display()));
        tokio::task::spawn_blocking(move || chromium(&dir, &[&arg, "--window-size=1200,900", &url]))
            .await
            .unwrap()
    };
    let png = std::fs::read(&shot)
        .unwrap_or_else(|e| panic!("no screenshot ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let (w, h) = (
        u32::from_be_bytes(png[16..20].try_into().unwrap()),
        u32::from_be_bytes(png[20..24].try_into().unwrap()),
    );
    assert_eq!((w, h), (1200, 900));
    for h in held {
        h.abort();
    }
    drop(sidecar);
}
