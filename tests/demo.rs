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
    let out = Command::new(env!("CARGO_BIN_EXE_pgsidecar"))
        .args(["demo", "--duration", "6", "--out-dir", env!("CARGO_TARGET_TMPDIR")])
        .output()
        .unwrap();
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

/// The screen of a tmux pane: a real pseudo-terminal, as a user's.
struct Tmux {
    socket: std::path::PathBuf,
}

impl Tmux {
    fn cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(["-f", "/dev/null"])
            .args(args)
            .output()
            .unwrap()
    }

    /// The pane's text with its scrollback.
    fn screen(&self) -> String {
        let out = self.cmd(&["capture-pane", "-p", "-J", "-S", "-", "-t", "demo"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

/// The last status block on `screen` is whole: its title, four lines in order, its closing
/// rule; and no log line is anywhere on the screen.
fn assert_clean_block(screen: &str) {
    let lines: Vec<&str> = screen.lines().map(str::trim_end).collect();
    let title = lines.iter().rposition(|l| l.starts_with("=== pgsidecar demo: the pool")).expect(screen);
    let block = &lines[title..(title + 6).min(lines.len())];
    let expected =
        ["=== pgsidecar demo", "servers   [", "clients   ", "wait p99  ", "requests  ", "=========="];
    assert_eq!(block.len(), 6, "{screen}");
    for (line, prefix) in block.iter().zip(expected) {
        assert!(line.starts_with(prefix), "{line:?} should start with {prefix:?} in\n{screen}");
    }
    assert!(block[5].chars().all(|c| c == '='), "{screen}");
    for bad in ["ts=", "level=", "event="] {
        assert!(!screen.contains(bad), "log text {bad:?} on the screen:\n{screen}");
    }
}

/// Issue 24: in a terminal the demo shows one status block redrawn in place, the saturation
/// told in words above it, no log line on the screen (the log goes to a file), and a chart
/// of the run at the end.
#[test]
fn demo_in_a_terminal_keeps_its_status_block_clean_and_draws_a_chart() {
    let out_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("demo-tty");
    let _ = std::fs::remove_dir_all(&out_dir);
    std::fs::create_dir_all(&out_dir).unwrap();
    let tmux = Tmux { socket: out_dir.join("tmux.sock") };
    let script = format!(
        "{} demo --duration 18 --out-dir {}; echo DEMO-EXIT=$?; sleep 600",
        env!("CARGO_BIN_EXE_pgsidecar"),
        out_dir.display()
    );
    let started = tmux.cmd(&["new-session", "-d", "-s", "demo", "-x", "150", "-y", "60", &script]);
    assert!(started.status.success(), "tmux: {}", String::from_utf8_lossy(&started.stderr));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    let mut checked_mid_run = 0;
    let screen = loop {
        let screen = tmux.screen();
        if screen.contains("DEMO-EXIT=") {
            break screen;
        }
        if screen.contains("=== pgsidecar demo: the pool") {
            assert_clean_block(&screen);
            checked_mid_run += 1;
        }
        assert!(std::time::Instant::now() < deadline, "the demo did not end:\n{screen}");
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    std::fs::write(out_dir.join("screen.txt"), &screen).unwrap();
    assert!(screen.contains("DEMO-EXIT=0"), "{screen}");
    assert!(checked_mid_run >= 5, "the block was seen only {checked_mid_run} times");
    assert_clean_block(&screen);
    // One block on the screen, redrawn in place: its title once.
    assert_eq!(screen.matches("=== pgsidecar demo: the pool").count(), 1, "{screen}");
    // The story: the pool saturates, the diagnosis names the statement, it ends.
    assert!(screen.contains("POOL SATURATED"), "{screen}");
    assert!(screen.contains("busiest statement: BEGIN; UPDATE demo_counters"), "{screen}");
    assert!(screen.contains("diagnosis:"), "{screen}");
    assert!(screen.contains("saturation ended"), "{screen}");
    assert!(screen.contains("summary"), "{screen}");
    // The full log is in the file whose path was printed.
    let log = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "log"))
        .expect("a log file");
    assert!(screen.contains(&log.display().to_string()), "{screen}");
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(log_text.lines().all(|l| l.starts_with("ts=") && l.contains(" level=")), "{log_text}");
    assert!(log_text.contains("event=pool_saturated"), "{log_text}");
    // The chart: valid SVG with its three series, each with points.
    let chart = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "svg"))
        .expect("a chart");
    assert!(screen.contains(&chart.display().to_string()), "{screen}");
    let check = Command::new("python3")
        .args([
            "-c",
            "import sys, xml.etree.ElementTree as ET\n\
             root = ET.parse(sys.argv[1]).getroot()\n\
             ns = '{http://www.w3.org/2000/svg}'\n\
             assert root.tag == ns + 'svg', root.tag\n\
             for p in root.iter(ns + 'polyline'):\n\
             \x20   print(p.get('id'), len(p.get('points').split()))\n",
        ])
        .arg(&chart)
        .output()
        .unwrap();
    let series = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{series}{}", String::from_utf8_lossy(&check.stderr));
    for id in ["servers-busy", "clients-waiting", "wait-p99"] {
        let points: usize = series
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{id} ")))
            .unwrap_or_else(|| panic!("no {id} series in {series}"))
            .parse()
            .unwrap();
        assert!(points > 20, "{id}: {points} points");
    }
    std::fs::copy(&chart, out_dir.join("demo-chart.svg")).unwrap();
}
