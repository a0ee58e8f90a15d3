//! MEGAN end to end in `ct-harmonizer serve` (issue 12): the shipped two-stage model
//! `models/megan-kernel` (trained by `ct-train train --arch megan`) harmonizes a real CT series
//! received by C-STORE (storescu, a slab of the InVesalius head CT), and the derived series reaches
//! DCMTK's storescp. Every peer runs on a free loopback port and is stopped by PID; waits are on
//! conditions with generous time-outs (the machine may be busy).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::daemon::*;
use common::*;
use ct_harmonizer::samples::{write_inv3_series, CRANIUM_INV3};
use std::path::Path;

/// The shipped MEGAN model's folder name under `models/`.
const MEGAN: &str = "megan-kernel";
/// Slices of the head CT sent (a contiguous slab: more than one LR block of 4 and one HR tile).
const SLAB: std::ops::Range<usize> = 40..64;

/// storescu sends a 24-slice slab of the real InVesalius head CT; `serve` runs both MEGAN stages
/// (the manifest's `[[stages]]`) and forwards the derived series to storescp: every instance
/// arrives, passes dciodvfy/dcentvfy with 0 errors, carries the derived-series tags naming the
/// MEGAN model, and its pixels differ from the input's while keeping the anatomy (correlation).
#[test]
fn megan_model_harmonizes_a_real_series_received_by_c_store() {
    let model = repo().join("models").join(MEGAN);
    let manifest = std::fs::read_to_string(model.join("model.toml")).unwrap();
    assert!(
        manifest.contains("[[stages]]"),
        "{MEGAN} is not multi-stage"
    );
    assert!(
        Path::new(CRANIUM_INV3).is_file(),
        "{CRANIUM_INV3} missing: run `bash scripts/setup.sh` (Debian package invesalius-examples)"
    );
    let tmp = tempfile::tempdir().unwrap();
    let all = write_inv3_series(Path::new(CRANIUM_INV3), &tmp.path().join("whole")).unwrap();
    let input = tmp.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    for f in &all[SLAB] {
        std::fs::copy(f, input.join(f.file_name().unwrap())).unwrap();
    }
    let src = read_series(&input);
    assert_eq!(src.len(), SLAB.len());

    let out = tmp.path().join("storescp");
    let dest_port = free_port();
    let _dest = start_storescp(
        "MEGANDEST",
        dest_port,
        &out,
        &tmp.path().join("storescp.log"),
    );
    let tail = scp_dest("dest", "MEGANDEST", dest_port)
        + &entry(
            "rules",
            &[
                ("name", "megan".into()),
                ("plan", "harmonize".into()),
                ("models", strings(&[MEGAN])),
                ("forward_original", false.into()),
                ("destinations", strings(&["dest"])),
            ],
        );
    let mut d = Daemon::new(tmp.path(), &[], &tail);
    d.start();
    let o = storescu("MODALITY", AE, d.port, &[&input]);
    assert!(o.status.success(), "{}", out_text(&o));

    // Both stages through ONNX Runtime in a debug daemon on a busy machine: be generous.
    let done = wait_until(secs(900), POLL, || {
        count_files(&out) == SLAB.len() && d.metric("jobs_forwarded") >= 1.0 && d.idle()
    });
    assert!(done, "derived series not delivered:\n{}", d.context());
    assert_eq!(d.metric("jobs_forwarded"), 1.0, "{}", d.context());
    let logs = d.logs();
    assert!(
        logs.contains("audit_series") && logs.contains(MEGAN) && logs.contains("harmonized"),
        "{logs}"
    );

    verify_dicom(&out);
    let dst = read_series(&out);
    assert_eq!(dst.len(), src.len());
    let s0 = &src[0].obj;
    let (mut diff, mut n) = (0.0f64, 0usize);
    let (mut sx, mut sy, mut sxx, mut syy, mut sxy) = (0.0f64, 0.0f64, 0.0f64, 0.0f64, 0.0f64);
    for (s, t) in src.iter().zip(&dst) {
        assert!((s.z - t.z).abs() < 1e-4);
        assert_derived_from(&t.obj, &s.obj, s0, MEGAN);
        assert_eq!(s.hu.len(), t.hu.len());
        for (&a, &b) in s.hu.iter().zip(&t.hu) {
            assert!(b.is_finite());
            let (a, b) = (f64::from(a), f64::from(b));
            diff += (a - b).abs();
            n += 1;
            sx += a;
            sy += b;
            sxx += a * a;
            syy += b * b;
            sxy += a * b;
        }
    }
    let nf = n as f64;
    let mean_abs = diff / nf;
    let cov = sxy / nf - (sx / nf) * (sy / nf);
    let corr = cov / ((sxx / nf - (sx / nf).powi(2)) * (syy / nf - (sy / nf).powi(2))).sqrt();
    eprintln!(
        "megan-kernel on the head CT slab: mean |output - input| {mean_abs:.2} HU, correlation {corr:.4}"
    );
    assert!(
        mean_abs > 1.0,
        "output equals the input: mean |diff| {mean_abs} HU"
    );
    assert!(
        corr > 0.8,
        "anatomy lost: correlation {corr}, mean |diff| {mean_abs} HU"
    );

    // A clean stop on SIGTERM.
    d.peer().signal("TERM");
    assert!(d.peer().wait_exit(secs(60)).is_some(), "{}", d.context());
}
