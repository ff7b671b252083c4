//! `pgsidecar demo` end to end: it runs to its summary and removes what it created, also
//! when interrupted.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};

fn demo_dir(first_line: &str) -> std::path::PathBuf {
    let dir = first_line.rsplit("data in ").next().unwrap().trim();
    std::path::PathBuf::from(dir)
}

#[test]
fn demo_runs_to_its_summary_and_cleans_up() {
    let out =
        Command::new(env!("CARGO_BIN_EXE_pgsidecar")).args(["demo", "--duration", "6"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("summary") && stdout.contains("checkout wait") && stdout.contains("errors 0"),
        "{stdout}"
    );
    // The rush saturates the pool: clients had to wait.
    let saturation = stdout.lines().find(|l| l.contains("saturation")).unwrap();
    assert!(!saturation.contains("up to 0 at once"), "{saturation}");
    let dir = demo_dir(stdout.lines().next().unwrap());
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn demo_cleans_up_on_ctrl_c() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgsidecar"))
        .args(["demo", "--duration", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    let dir = demo_dir(&first);
    // Wait for the first live line: the database, proxy and workers are all up.
    let mut line = String::new();
    while !line.contains("servers [") {
        line.clear();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "demo ended early");
    }
    assert!(dir.exists());
    assert!(Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(!status.success());
    assert!(stderr.contains("interrupted") && stderr.contains("removed"), "{stderr}");
    assert!(!dir.exists(), "{} left behind", dir.display());
}
