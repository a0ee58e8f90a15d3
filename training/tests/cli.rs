//! `ct-train` as a person runs it: synthesize a tiny data set, train, watch (loss plot, validation
//! pictures), resume, and the bad inputs of issue 4 that concern a training run: a run directory
//! that already holds a run, a resume with another architecture, volumes smaller than the patch.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output};

fn ct_train(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ct-train"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn csv_rows(run: &Path) -> usize {
    std::fs::read_to_string(run.join("losses.csv"))
        .unwrap()
        .lines()
        .count()
        - 1
}

#[test]
fn train_watch_resume_and_refuse() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let d = data.to_str().unwrap();
    let o = ct_train(&[
        "synth", "--out", d, "--source", "phantom", "--size", "32", "--slices", "16", "--cases",
        "1", "--seed", "5",
    ]);
    assert!(o.status.success(), "{}", text(&o));

    let run = tmp.path().join("run");
    let r = run.to_str().unwrap();
    let base = [
        "train",
        "--data",
        d,
        "--out",
        r,
        "--patch",
        "16",
        "--ndf",
        "2",
        "--blocks",
        "1",
        "--checkpoint-every",
        "2",
        "--seed",
        "3",
    ];
    let with = |extra: &[&str]| -> Vec<String> {
        base.iter().chain(extra).map(|s| (*s).to_string()).collect()
    };
    let run_with = |extra: &[&str]| {
        let a = with(extra);
        ct_train(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };

    let o = run_with(&["--steps", "2", "--ngf", "2"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(csv_rows(&run), 2);
    assert!(std::fs::read(run.join("losses.png"))
        .unwrap()
        .starts_with(b"\x89PNG"));
    assert!(run.join("val/step_000002.png").is_file());

    // The same seed gives the same run: a second run into another folder logs the same losses.
    let again = tmp.path().join("again");
    let a2: Vec<String> = with(&["--steps", "2", "--ngf", "2"])
        .into_iter()
        .map(|x| {
            if x == r {
                again.display().to_string()
            } else {
                x
            }
        })
        .collect();
    let o = ct_train(&a2.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", text(&o));
    let losses = |p: &Path| -> Vec<String> {
        std::fs::read_to_string(p.join("losses.csv"))
            .unwrap()
            .lines()
            .map(|l| l.rsplit_once(',').unwrap().0.to_string()) // drop the seconds column
            .collect()
    };
    assert_eq!(losses(&run), losses(&again));

    // The run is not replaced without --force.
    let o = run_with(&["--steps", "2", "--ngf", "2"]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains(r) && t.contains("--resume") && t.contains("--force"),
        "{t}"
    );

    // A negative adversarial weight is refused before any work, naming the option.
    let o = run_with(&["--steps", "3", "--force", "--lambda-gan=-1"]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("--lambda-gan -1"), "{t}");

    // Resuming with another architecture is refused, naming the run's model.json.
    let o = run_with(&["--steps", "3", "--resume", "--ngf", "4"]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains("model.json") && t.contains("architecture"),
        "{t}"
    );

    // A resume continues where the checkpoint stopped.
    let o = ct_train(
        &with(&["--steps", "3", "--resume", "--ngf", "2"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(csv_rows(&run), 3);

    // Volumes smaller than the patch: a clear error naming the volume.
    let big = tmp.path().join("big");
    let o = ct_train(&[
        "train",
        "--data",
        d,
        "--out",
        big.to_str().unwrap(),
        "--patch",
        "32",
        "--ngf",
        "2",
        "--ndf",
        "2",
        "--steps",
        "1",
    ]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains("smaller than the 32^3 patch") && t.contains("phantom-0005"),
        "{t}"
    );

    // Super-resolution trains on the thick source resampled onto the target grid (4, 2, 2).
    let sr = tmp.path().join("sr");
    let o = ct_train(&[
        "train",
        "--data",
        d,
        "--out",
        sr.to_str().unwrap(),
        "--task",
        "superres",
        "--patch",
        "16",
        "--ngf",
        "2",
        "--ndf",
        "2",
        "--blocks",
        "0",
        "--steps",
        "1",
        "--residual",
        "--skip-kernel",
        "3",
        "--skip-depth",
        "3",
        "--skip-init",
        "lsq",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let cfg = std::fs::read_to_string(sr.join("train.json")).unwrap();
    assert!(cfg.contains("\"scale\"") && cfg.contains('4'), "{cfg}");
}
