//! The shipped systemd unit is hardened ("OK" or better: exposure at most 2.0) and the example site
//! configuration is valid for the real start-up path.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn unit_exposure_is_ok_or_better() {
    let unit = repo().join("systemd/ct-harmonizer.service");
    let o = Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze (Debian package systemd) is installed by scripts/setup.sh");
    let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no rating in:\n{text}"));
    let level: f64 = line
        .split(':')
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("cannot read {line}"));
    assert!(level <= 2.0, "{line}");
    let unit_text = std::fs::read_to_string(&unit).unwrap();
    for key in [
        "Type=notify",
        "WatchdogSec=",
        "ExecStartPre=/usr/bin/ct-harmonizer",
        "ExecReload=",
        "User=ct-harmonizer",
        "StateDirectory=",
    ] {
        assert!(unit_text.contains(key), "unit lacks {key}");
    }
}

#[test]
fn example_site_config_loads() {
    let s = ct_harmonizer::config::Settings::load_with_env(
        Some(&repo().join("systemd/ct-harmonizer.toml")),
        Vec::new(),
    )
    .unwrap();
    assert_eq!(s.rules.len(), 3);
    assert_eq!(s.rules[0].name, "thick-sharp-chest");
    assert_eq!(s.rules[0].models, ["revgan-kernel", "revgan-superres"]);
    assert_eq!(s.destinations.len(), 2);
}
