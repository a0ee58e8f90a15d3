//! Tests of the trainer: the reversible step against plain autodiff, frozen skips, training without
//! the adversarial term, older run configs, checkpoint round trips.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::config::{CycleLoss, TaskArg};
use crate::data::rng::Rng;
use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::tensor::backend::Backend;

type A = Autodiff<Flex>;

fn tiny(mode: ModeArg, naive: bool) -> Trainer<A> {
    let m = RevGanConfig::new()
        .with_ngf(2)
        .with_ndf(2)
        .with_blocks(1)
        .with_conditional(mode == ModeArg::Paired);
    let t = TrainConfig::new(TaskArg::Kernel, mode)
        .with_patch(16)
        .with_steps(4)
        .with_naive(naive)
        .with_pool_size(2);
    Trainer::new(m, t, Default::default()).unwrap()
}

/// Runs `f` on a one-thread rayon pool: burn-flex's threaded reductions split work as threads
/// steal it, so their float sums can differ in the last bits from run to run, and Adam's first
/// step (about ±lr on every weight whatever the gradient's size) turns that into visible
/// differences on these tiny networks. Tests comparing two computations pin the order.
fn one_thread<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(f)
}

/// A tensor's values (for comparing weights before and after a step).
fn vals<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().to_vec().unwrap()
}

fn patch(seed: u64) -> Vec<f32> {
    let mut r = Rng::new(seed);
    (0..16 * 16 * 16)
        .map(|_| r.uniform() as f32 * 2.0 - 1.0)
        .collect()
}

/// The reversible and the naive training steps give the same losses and the same weights.
#[test]
fn reversible_step_equals_naive_step() {
    let _serial = crate::autodiff_serial();
    one_thread(reversible_equals_naive)
}

fn reversible_equals_naive() {
    for mode in [ModeArg::Paired, ModeArg::Unpaired] {
        let mut r = tiny(mode, false);
        let mut n = tiny(mode, true);
        for s in 0..2 {
            let lr = r.step(patch(s), patch(s + 10)).unwrap();
            let ln = n.step(patch(s), patch(s + 10)).unwrap();
            assert!(
                (lr.generator() - ln.generator()).abs() < 1e-4,
                "{lr:?} {ln:?}"
            );
        }
        // Compare the core's weights after two optimizer steps.
        let wr: Vec<f32> = vals(r.gen.core[0].f.conv2.weight.val());
        let wn: Vec<f32> = vals(n.gen.core[0].f.conv2.weight.val());
        let d = wr
            .iter()
            .zip(&wn)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(d < 1e-5, "{mode:?}: weights differ by {d}");
    }
}

/// `freeze_skip`: the skip filters keep their taps through steps, a checkpoint and a resume,
/// while the rest of the generator learns.
#[test]
fn frozen_skip_filters_do_not_move() {
    let _serial = crate::autodiff_serial();
    let m = RevGanConfig::new()
        .with_ngf(2)
        .with_ndf(2)
        .with_blocks(1)
        .with_residual(true)
        .with_skip_kernel(3)
        .with_skip_depth(3);
    let t = TrainConfig::new(TaskArg::Kernel, ModeArg::Paired)
        .with_patch(16)
        .with_steps(4)
        .with_freeze_skip(true);
    let mut tr = Trainer::<A>::new(m.clone(), t.clone(), Default::default()).unwrap();
    tr.freeze_skips();
    let taps = |tr: &Trainer<A>| -> Vec<f32> {
        let c = tr.gen.dec_b.skip.as_ref().unwrap();
        vals(c.weight.val())
    };
    // The decoder's last conv: zero at the start, so the first gradients reach only it.
    let branch = |tr: &Trainer<A>| -> Vec<f32> { vals(tr.gen.dec_b.conv_out.weight.val()) };
    let (s0, b0) = (taps(&tr), branch(&tr));
    tr.step(patch(1), patch(2)).unwrap();
    assert_eq!(taps(&tr), s0);
    assert_ne!(branch(&tr), b0);
    let dir = tempfile::tempdir().unwrap();
    let state = TrainState {
        step: tr.step,
        seconds: 0.0,
        device: "cpu".into(),
    };
    tr.save(dir.path(), &state).unwrap();
    let mut back = Trainer::<A>::new(m, t, Default::default()).unwrap();
    back.load(dir.path()).unwrap();
    back.freeze_skips();
    back.step(patch(3), patch(4)).unwrap();
    assert_eq!(taps(&back), s0);
}

/// `lambda_gan = 0`: no adversarial loss, the discriminators stay as they were, the
/// generators still learn; reversible and naive steps still agree.
#[test]
fn without_the_adversarial_term_only_the_generators_learn() {
    let _serial = crate::autodiff_serial();
    one_thread(adversarial_off)
}

fn adversarial_off() {
    let weights = |t: &Trainer<A>| -> (Vec<f32>, Vec<f32>) {
        let d = vals(t.disc.a.conv1.weight.val());
        let g = vals(t.gen.enc_a.conv_in.weight.val());
        (d, g)
    };
    for mode in [ModeArg::Paired, ModeArg::Unpaired] {
        let mut runs = Vec::new();
        for naive in [false, true] {
            let mut t = tiny(mode, naive);
            t.cfg.lambda_gan = 0.0;
            let (d0, g0) = weights(&t);
            let l = t.step(patch(1), patch(2)).unwrap();
            let (d1, g1) = weights(&t);
            assert_eq!(d0, d1, "{mode:?}: a discriminator changed");
            assert_ne!(g0, g1, "{mode:?}: the generator did not learn");
            assert_eq!((l.gan_ab, l.gan_ba, l.d_a, l.d_b), (0.0, 0.0, 0.0, 0.0));
            assert!(l.rec_ab > 0.0 && l.rec_ba > 0.0, "{l:?}");
            runs.push((l, g1));
        }
        let (r, n) = (&runs[0], &runs[1]);
        assert!(
            (r.0.generator() - n.0.generator()).abs() < 1e-4,
            "{r:?} {n:?}"
        );
    }
}

/// `gan_from_step` (issue 11): before it the generators learn exactly as without the adversarial
/// term (the same losses and weights as a `lambda_gan = 0` trainer) while the discriminators
/// already train; from it on the generator loss has the adversarial term.
#[test]
fn discriminators_warm_up_before_the_adversarial_term() {
    let _serial = crate::autodiff_serial();
    one_thread(gan_warm_up)
}

fn gan_warm_up() {
    let g = |t: &Trainer<A>| vals(t.gen.enc_a.conv_in.weight.val());
    let mut w = tiny(ModeArg::Paired, false);
    w.cfg.gan_from_step = 2;
    w.cfg.steps = 1000;
    let mut off = tiny(ModeArg::Paired, false);
    off.cfg.lambda_gan = 0.0;
    off.cfg.steps = 1000;
    for s in 0..2 {
        let d0 = vals(w.disc.a.conv1.weight.val());
        let lw = w.step(patch(s), patch(s + 10)).unwrap();
        let lo = off.step(patch(s), patch(s + 10)).unwrap();
        assert_eq!((lw.gan_ab, lw.gan_ba), (0.0, 0.0), "step {s}: {lw:?}");
        assert_eq!((lw.rec_ab, lw.rec_ba), (lo.rec_ab, lo.rec_ba), "step {s}");
        assert!(lw.d_a > 0.0 && lw.d_b > 0.0, "step {s}: {lw:?}");
        assert_ne!(
            vals(w.disc.a.conv1.weight.val()),
            d0,
            "step {s}: D did not train"
        );
        assert_eq!(g(&w), g(&off), "step {s}: the generators differ");
    }
    let lw = w.step(patch(2), patch(12)).unwrap();
    assert!(lw.gan_ab > 0.0 && lw.gan_ba > 0.0, "{lw:?}");
    let lo = off.step(patch(2), patch(12)).unwrap();
    assert_eq!(lo.gan_ab, 0.0);
    assert_ne!(
        g(&w),
        g(&off),
        "the adversarial term did not reach the generators"
    );
}

/// `d_residual` (issue 11): the paired discriminators see `(src − s, x − s)`, `s` the skip filter's
/// output of the source, so an image equal to `s` reads as zero; such a trainer steps both
/// discriminators; unpaired training refuses the option, naming it.
#[test]
fn residual_discriminators_judge_the_image_minus_the_skip() {
    let _serial = crate::autodiff_serial();
    let m = RevGanConfig::new()
        .with_ngf(2)
        .with_ndf(2)
        .with_blocks(1)
        .with_conditional(true)
        .with_residual(true)
        .with_skip_kernel(3);
    let t = TrainConfig::new(TaskArg::Kernel, ModeArg::Paired)
        .with_patch(16)
        .with_steps(4)
        .with_d_residual(true);
    let mut tr = Trainer::<A>::new(m.clone(), t, Default::default()).unwrap();
    let src = tr.tensor(patch(1));
    let s = tr.gen.dec_b.skip_forward(src.clone());
    let input = tr.gen.disc_input(Direction::AtoB, src.clone(), s, true);
    let second: Vec<f32> = vals(input.clone().slice([0..1, 1..2, 0..16, 0..16, 0..16]));
    assert!(second.iter().all(|v| *v == 0.0));
    let first: Vec<f32> = vals(input.slice([0..1, 0..1, 0..16, 0..16, 0..16]));
    assert!(first.iter().any(|v| *v != 0.0));
    let l = tr.step(patch(1), patch(2)).unwrap();
    assert!(l.d_a > 0.0 && l.d_b > 0.0 && l.gan_ab > 0.0, "{l:?}");
    let u = TrainConfig::new(TaskArg::Kernel, ModeArg::Unpaired)
        .with_patch(16)
        .with_d_residual(true);
    let e = Trainer::<A>::new(m.with_conditional(false), u, Default::default())
        .err()
        .expect("--d-residual accepted for unpaired training");
    assert!(e.to_string().contains("--d-residual"), "{e}");
}

#[test]
fn configs_of_older_runs_load_with_neutral_defaults() {
    let _serial = crate::autodiff_serial();
    let dir = tempfile::tempdir().unwrap();
    // model.json / train.json as ct-train wrote them before the residual options existed.
    std::fs::write(
        dir.path().join(MODEL_CONFIG),
        r#"{"ngf": 16, "ndf": 32, "blocks": 2, "conditional": true}"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join(TRAIN_CONFIG),
        r#"{"task": "superres", "mode": "unpaired", "steps": 250, "patch": 32}"#,
    )
    .unwrap();
    let (m, t) = read_configs(dir.path()).unwrap();
    assert_eq!(
        (m.ngf, m.blocks, m.residual, m.skip_kernel),
        (16, 2, false, 0)
    );
    assert_eq!(
        (t.task, t.mode, t.steps),
        (TaskArg::Superres, ModeArg::Unpaired, 250)
    );
    assert_eq!(t.scale, [1, 1, 1]);
    std::fs::write(dir.path().join(MODEL_CONFIG), "[1, 2]").unwrap();
    let e = read_configs(dir.path()).unwrap_err().to_string();
    assert!(e.contains("model.json") && e.contains("JSON object"), "{e}");
}

#[test]
fn checkpoint_round_trip() {
    let _serial = crate::autodiff_serial();
    // Unpaired runs also need their image pool back to continue exactly.
    for mode in [ModeArg::Paired, ModeArg::Unpaired] {
        let dir = tempfile::tempdir().unwrap();
        let mut t = tiny(mode, false);
        t.step(patch(1), patch(2)).unwrap();
        t.step(patch(5), patch(6)).unwrap();
        let st = TrainState {
            step: 2,
            seconds: 0.5,
            device: "cpu".into(),
        };
        t.save(dir.path(), &st).unwrap();
        let mut u = tiny(mode, false);
        assert_eq!(u.load(dir.path()).unwrap(), st);
        assert_eq!(u.pool_a.len(), t.pool_a.len());
        if mode == ModeArg::Unpaired {
            assert_eq!(u.pool_a.len(), 2);
        }
        let w = |m: &Trainer<A>| -> Vec<f32> { vals(m.gen.enc_a.conv_in.weight.val()) };
        assert_eq!(w(&t), w(&u));
        // Same next steps from both (the pool answers the same from the second on).
        for k in [3, 7] {
            let l1 = t.step(patch(k), patch(k + 1)).unwrap();
            let l2 = u.step(patch(k), patch(k + 1)).unwrap();
            assert!(
                (l1.generator() - l2.generator()).abs() < 1e-6
                    && (l1.d_a + l1.d_b - l2.d_a - l2.d_b).abs() < 1e-6,
                "{mode:?}: {l1:?} vs {l2:?}"
            );
        }
    }
}

/// The loss values (as `f64` bit patterns) of three steps of the tiny paired and unpaired
/// trainers, reversible backward, one thread, as the trainer computed them before the options of
/// issue 12 (SSIM cycle, identity, perceptual/style, `k`, `lr_g`/`lr_d`, amortised) existed.
/// With every new option at its default the same run gives the same bits.
#[test]
fn default_options_reproduce_the_losses_of_before() {
    let _serial = crate::autodiff_serial();
    let got: Vec<Vec<u64>> = one_thread(|| {
        let mut out = Vec::new();
        for mode in [ModeArg::Paired, ModeArg::Unpaired] {
            let mut t = tiny(mode, false);
            for s in 0..3 {
                let l = t.step(patch(s), patch(s + 10)).unwrap();
                out.push(
                    [l.gan_ab, l.gan_ba, l.rec_ab, l.rec_ba, l.d_a, l.d_b]
                        .map(f64::to_bits)
                        .to_vec(),
                );
            }
        }
        out
    });
    assert_eq!(got, golden_losses());
}

fn golden_losses() -> Vec<Vec<u64>> {
    vec![
        vec![
            4604338942144151552,
            4604650653690626048,
            4632422989189611520,
            4632443223317413888,
            4604581754899005440,
            4604452058697826304,
        ],
        vec![
            4603799291851440128,
            4605630482833473536,
            4632476719767355392,
            4632497368359501824,
            4604340998896615424,
            4604512851812417536,
        ],
        vec![
            4604111737300451328,
            4605162055446560768,
            4632333650648629248,
            4632449621208072192,
            4604323883988811776,
            4604486472123285504,
        ],
        vec![
            4607806742762356736,
            4607417208555962368,
            4617490719341281280,
            4617452306227527680,
            4603624831890489344,
            4603964693189492736,
        ],
        vec![
            4607454941454270464,
            4605926845777444864,
            4617466910190075904,
            4617487775678070784,
            4603728255776718848,
            4602722355108642816,
        ],
        vec![
            4607330099639877632,
            4607828095192268800,
            4617474474701225984,
            4617389627622293504,
            4603095172765450240,
            4603845260349538304,
        ],
    ]
}

/// `k`: over N steps the discriminators step once per k generator steps (at steps k, 2k, ...),
/// and stay untouched in between; the generators learn every step.
#[test]
fn discriminators_step_once_per_k_generator_steps() {
    let _serial = crate::autodiff_serial();
    for (k, n) in [(4u64, 9u64), (3, 7), (1, 3)] {
        let mut t = tiny(ModeArg::Unpaired, false);
        t.cfg.k = k;
        // A budget beyond n, so no step has a learning rate of 0.
        t.cfg.steps = 1000;
        let mut d_changed = Vec::new();
        for s in 0..n {
            let d0 = vals(t.disc.a.conv1.weight.val());
            let g0 = vals(t.gen.enc_a.conv_in.weight.val());
            let l = t.step(patch(s), patch(s + 10)).unwrap();
            assert_ne!(
                vals(t.gen.enc_a.conv_in.weight.val()),
                g0,
                "k {k}, step {s}"
            );
            let changed = vals(t.disc.a.conv1.weight.val()) != d0;
            assert_eq!(changed, l.d_a != 0.0, "k {k}, step {s}: {l:?}");
            d_changed.push(changed);
        }
        let expected: Vec<bool> = (1..=n).map(|s| s % k == 0).collect();
        assert_eq!(d_changed, expected, "k {k}");
        assert_eq!(t.d_steps, n / k, "k {k}");
    }
}

#[test]
fn zero_update_ratio_is_refused() {
    let _serial = crate::autodiff_serial();
    let m = RevGanConfig::new().with_ngf(2).with_ndf(2).with_blocks(1);
    let t = TrainConfig::new(TaskArg::Kernel, ModeArg::Unpaired)
        .with_patch(16)
        .with_k(0);
    let e = Trainer::<A>::new(m, t, Default::default())
        .err()
        .expect("k = 0 accepted");
    assert!(e.to_string().contains("--k 0"), "{e}");
}

/// Separate learning rates: with lr_d = 0+ (tiny) the discriminators barely move while the
/// generators move as with the common rate.
#[test]
fn separate_learning_rates_reach_their_optimizers() {
    let _serial = crate::autodiff_serial();
    let run = |lr_g: Option<f64>, lr_d: Option<f64>| {
        let mut t = tiny(ModeArg::Paired, false);
        t.cfg.lr_g = lr_g;
        t.cfg.lr_d = lr_d;
        let (d0, g0) = (
            vals(t.disc.a.conv1.weight.val()),
            vals(t.gen.enc_a.conv_in.weight.val()),
        );
        t.step(patch(1), patch(2)).unwrap();
        let dist = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max)
        };
        (
            dist(&vals(t.gen.enc_a.conv_in.weight.val()), &g0),
            dist(&vals(t.disc.a.conv1.weight.val()), &d0),
        )
    };
    // Step 0 of 4 with a decay of 4 / 6 = 0 -> 1 step: the rates are the base rates scaled alike.
    let (g, d) = run(Some(1e-3), Some(1e-6));
    let (g_ref, d_ref) = run(None, None);
    // Adam moves each weight by about the learning rate on its first step.
    assert!(g > 2.0 * g_ref, "{g} vs {g_ref}");
    assert!(d < 0.1 * d_ref, "{d} vs {d_ref}");
}

/// Every new unpaired loss on at once (SSIM cycle, identity, perceptual, style): the reversible
/// step still equals plain autodiff, and the terms add to the cycle figures.
#[test]
fn new_unpaired_losses_reversible_equals_naive() {
    let _serial = crate::autodiff_serial();
    one_thread(|| {
        let with = |t: &mut Trainer<A>| {
            t.cfg.cycle_loss = CycleLoss::Ssim;
            t.cfg.lambda_identity = 0.5;
            t.cfg.lambda_perceptual = 1.0;
            t.cfg.lambda_style = 10.0;
        };
        let mut plain = tiny(ModeArg::Unpaired, false);
        let mut r = tiny(ModeArg::Unpaired, false);
        let mut n = tiny(ModeArg::Unpaired, true);
        with(&mut r);
        with(&mut n);
        for s in 0..2 {
            let lp = plain.step(patch(s), patch(s + 10)).unwrap();
            let lr = r.step(patch(s), patch(s + 10)).unwrap();
            let ln = n.step(patch(s), patch(s + 10)).unwrap();
            assert!(
                (lr.generator() - ln.generator()).abs() < 1e-4,
                "{lr:?} {ln:?}"
            );
            assert_ne!(lr.rec_ab, lp.rec_ab);
        }
        let wr = vals(r.gen.core[0].f.conv2.weight.val());
        let wn = vals(n.gen.core[0].f.conv2.weight.val());
        let d = wr
            .iter()
            .zip(&wn)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(d < 1e-5, "weights differ by {d}");
    });
}

/// A perceptual-only run differs from the plain one by exactly the perceptual term at step 0
/// (same weights, same inputs): the option reaches the loss.
#[test]
fn perceptual_term_is_added_to_the_cycle_figure() {
    let _serial = crate::autodiff_serial();
    one_thread(|| {
        let mut plain = tiny(ModeArg::Unpaired, false);
        let mut p = tiny(ModeArg::Unpaired, false);
        p.cfg.lambda_perceptual = 2.0;
        // The extra term, computed by hand from the same weights before the step, on the inner
        // backend: no autodiff graph is left behind on the trainer's parameters (Burn's graph
        // bookkeeping is shared by every test thread, and an orphaned graph there made this
        // test fail now and then when the trainer tests ran together).
        let (gen, phi) = (p.gen.valid(), p.disc.a.valid());
        let src = p.tensor(patch(0)).inner();
        let rec = gen.forward_even(
            Direction::BtoA,
            gen.forward_even(Direction::AtoB, src.clone()),
        );
        let extra = (crate::losses::perceptual(&phi.features(src), &phi.features(rec)) * 2.0)
            .into_scalar() as f64;
        let lp = plain.step(patch(0), patch(10)).unwrap();
        let l = p.step(patch(0), patch(10)).unwrap();
        assert!(extra > 0.0);
        assert!(
            (l.rec_ab - lp.rec_ab - extra).abs() < 1e-5,
            "{l:?} {lp:?} {extra}"
        );
    });
}

/// Amortised steps (paired and unpaired): they run on a low-resolution whole volume plus a patch,
/// add their low-resolution terms, and the reversible step equals plain autodiff.
#[test]
fn amortised_step_reversible_equals_naive() {
    let _serial = crate::autodiff_serial();
    use crate::data::amortised::{AmortisedSampler, DomainSets};
    use crate::volume::Volume;
    one_thread(|| {
        let vol = |name: &str, seed: u64, shape: [usize; 3]| {
            let mut r = Rng::new(seed);
            let n = shape.iter().product();
            Volume::new(
                name,
                shape,
                [1.0; 3],
                (0..n).map(|_| r.uniform() as f32 * 1.6 - 0.8).collect(),
            )
        };
        for mode in [ModeArg::Paired, ModeArg::Unpaired] {
            let sets = DomainSets {
                a: vec![vol("a", 1, [16, 32, 48])],
                b: vec![vol("b", 2, [16, 32, 48])],
                paired: mode == ModeArg::Paired,
            };
            let s = AmortisedSampler::new(sets, 16, 0, [-1150.0, 350.0]).unwrap();
            assert_eq!(s.factor(), [1, 2, 3]);
            let mut r = tiny(mode, false);
            let mut n = tiny(mode, true);
            let mut plain = tiny(mode, false);
            r.cfg.amortised = true;
            n.cfg.amortised = true;
            for step in 0..2 {
                let d = s.sample(&mut Rng::new(step));
                let lp = plain.step(d.a.patch.clone(), d.b.patch.clone()).unwrap();
                let lr = r.step_amortised(d.clone()).unwrap();
                let ln = n.step_amortised(d).unwrap();
                assert!(
                    (lr.generator() - ln.generator()).abs() < 1e-4,
                    "{mode:?}: {lr:?} {ln:?}"
                );
                // The low-resolution terms add to the reconstruction figures.
                assert!(lr.rec_ab > lp.rec_ab, "{mode:?}: {lr:?} {lp:?}");
            }
            let wr = vals(r.gen.enc_a.conv_in.weight.val());
            let wn = vals(n.gen.enc_a.conv_in.weight.val());
            let dmax = wr
                .iter()
                .zip(&wn)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(dmax < 1e-5, "{mode:?}: weights differ by {dmax}");
        }
    });
}

/// `train` on two separate unpaired sets (different cases per domain), amortised: one step runs,
/// and a run without any data is refused with a clear message.
#[test]
fn trains_on_two_separate_unpaired_sets() {
    let _serial = crate::autodiff_serial();
    use crate::data::nifti::{write, WriteType};
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    for (d, hu) in [(&a, 0.0f32), (&b, 40.0)] {
        std::fs::create_dir_all(d).unwrap();
        for case in 0..2 {
            let mut r = Rng::new(case);
            let v: Vec<f32> = (0..16 * 16 * 32)
                .map(|_| hu + r.uniform() as f32 * 100.0)
                .collect();
            let p = d.join(format!("case{case}.nii.gz"));
            write(&p, [16, 16, 32], [1.0; 3], &v, WriteType::Float32).unwrap();
        }
    }
    let model = RevGanConfig::new().with_ngf(2).with_ndf(2).with_blocks(0);
    let mut cfg = TrainConfig::new(TaskArg::Kernel, ModeArg::Unpaired)
        .with_patch(16)
        .with_steps(1)
        .with_amortised(true)
        .with_k(2);
    cfg.unpaired_a = Some(a.display().to_string());
    cfg.unpaired_b = Some(b.display().to_string());
    let args = TrainArgs {
        out: dir.path().join("run"),
        model,
        train: cfg,
        resume: false,
        force: false,
        init_from: None,
        backend: super::run::BackendArg::Flex,
        arch: super::run::Arch::Revgan,
        megan: super::megan::MeganArgs {
            megan_ngf: 8,
            megan_ndf: 8,
            megan_res_blocks: 2,
            megan_lr_factor: 4,
            megan_lambda_l1: 10.0,
            megan_d_accuracy_max: 0.8,
        },
    };
    let st = train::<A>(&args, Default::default(), "cpu").unwrap();
    assert_eq!(st.step, 1);
    let (_, saved) = read_configs(&args.out).unwrap();
    assert!(saved.amortised && saved.separate_domains());
    let mut none = args.clone();
    none.train.unpaired_a = None;
    none.train.unpaired_b = None;
    none.out = dir.path().join("none");
    let e = train::<A>(&none, Default::default(), "cpu").unwrap_err();
    assert!(e.to_string().contains("no training data"), "{e}");
}

/// A generator term switched on by `set` in a paired step: counted in the generator's loss, the
/// same through the reversible backward as through plain autodiff, and it moves the weights where
/// the L1 term alone would not have; `check` sees each step's losses with the term and without.
fn term_trains_through_the_reversible_backward(
    set: impl Fn(&mut Trainer<A>) + Sync,
    check: impl Fn(&StepLosses, &StepLosses) + Sync,
) {
    let _serial = crate::autodiff_serial();
    one_thread(|| {
        let with_term = |naive| {
            let mut t = tiny(ModeArg::Paired, naive);
            set(&mut t);
            t
        };
        let (mut r, mut n, mut plain) = (
            with_term(false),
            with_term(true),
            tiny(ModeArg::Paired, false),
        );
        for s in 0..2 {
            let lr = r.step(patch(s), patch(s + 10)).unwrap();
            let ln = n.step(patch(s), patch(s + 10)).unwrap();
            let lp = plain.step(patch(s), patch(s + 10)).unwrap();
            check(&lr, &lp);
            assert!(
                (lr.generator() - ln.generator()).abs() < 1e-4,
                "{lr:?} {ln:?}"
            );
            let sum =
                lr.gan_ab + lr.gan_ba + lr.rec_ab + lr.rec_ba + lr.tex_ab + lr.tex_ba + lr.tv_ab;
            assert_eq!(lr.generator(), sum);
        }
        let w = |t: &Trainer<A>| vals(t.gen.core[0].f.conv2.weight.val());
        let d = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max)
        };
        assert!(d(&w(&r), &w(&n)) < 1e-5);
        assert!(d(&w(&r), &w(&plain)) > 1e-7);
    });
}

/// The noise-texture term (issue 11): reported per direction, 0 without it; at weight 0 the step
/// is that of before (`default_options_reproduce_the_losses_of_before`); `--lambda-texture-ba 0`
/// leaves the A->B direction only.
#[test]
fn texture_term_trains_through_the_reversible_backward() {
    term_trains_through_the_reversible_backward(
        |t| t.cfg.lambda_texture = 100.0,
        |lr, lp| {
            assert!(lr.tex_ab > 0.0 && lr.tex_ba > 0.0, "{lr:?}");
            assert_eq!((lp.tex_ab, lp.tex_ba), (0.0, 0.0));
        },
    );
    let _serial = crate::autodiff_serial();
    one_thread(|| {
        let mut one_way = tiny(ModeArg::Paired, false);
        one_way.cfg.lambda_texture = 100.0;
        one_way.cfg.lambda_texture_ba = Some(0.0);
        let l = one_way.step(patch(0), patch(10)).unwrap();
        assert!(l.tex_ab > 0.0 && l.tex_ba == 0.0, "{l:?}");
    });
}

/// The total-variation term (issue 11): A->B only, reported alone, 0 without it.
#[test]
fn tv_term_trains_through_the_reversible_backward() {
    term_trains_through_the_reversible_backward(
        |t| t.cfg.lambda_tv = 10.0,
        |lr, lp| {
            assert!(lr.tv_ab > 0.0 && lr.tex_ab == 0.0, "{lr:?}");
            assert_eq!(lp.tv_ab, 0.0);
        },
    );
}

/// Growing a trained core (`--init-from`): before any step the grown trainer's generators give
/// the old outputs; its first step moves every old parameter exactly as the resumed old trainer's
/// first step does (the new blocks are the identity, with an identity Jacobian, and the copied
/// parameters keep their Adam moments); the new blocks' last convolutions get a non-zero gradient
/// at once (their input `relu(IN(conv1(·)))` is not zero), their first ones from the second step.
#[test]
fn grown_trainer_continues_the_old_one() {
    let _serial = crate::autodiff_serial();
    one_thread(grown_continues)
}

fn grown_continues() {
    let m1 = RevGanConfig::new()
        .with_ngf(2)
        .with_ndf(2)
        .with_blocks(1)
        .with_residual(true)
        .with_skip_kernel(3)
        .with_branch_scale(0.1);
    let t = TrainConfig::new(TaskArg::Kernel, ModeArg::Paired)
        .with_patch(16)
        .with_steps(6);
    let mut old = Trainer::<A>::new(m1.clone(), t.clone(), Default::default()).unwrap();
    for s in 0..3 {
        old.step(patch(s), patch(s + 10)).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let st = TrainState {
        step: old.step,
        seconds: 1.5,
        device: "cpu".into(),
    };
    old.save(dir.path(), &st).unwrap();
    let mut resumed = Trainer::<A>::new(m1.clone(), t.clone(), Default::default()).unwrap();
    resumed.load(dir.path()).unwrap();
    let m3 = m1.clone().with_blocks(3);
    let mut grown = Trainer::<A>::new(m3, t, Default::default()).unwrap();
    assert_eq!(grown.grow_from(dir.path(), &m1).unwrap(), st);
    assert_eq!((grown.step, grown.gen.core.len()), (3, 3));

    let x = Tensor::<Flex, 5>::from_data(
        TensorData::new(patch(99), [1, 1, 16, 16, 16]),
        &Default::default(),
    );
    for dir in [Direction::AtoB, Direction::BtoA] {
        let a = resumed.gen.valid().forward(dir, x.clone());
        let b = grown.gen.valid().forward(dir, x.clone());
        let err = (a - b).abs().max().into_scalar();
        assert!(
            err <= 1e-5,
            "{dir:?}: grown output differs by {err} before any step"
        );
    }

    let new_w = |t: &Trainer<A>, conv1: bool| -> Vec<f32> {
        t.gen.core[1..]
            .iter()
            .flat_map(|b| [&b.f, &b.g])
            .flat_map(|c| {
                vals(if conv1 {
                    c.conv1.weight.val()
                } else {
                    c.conv2.weight.val()
                })
            })
            .collect()
    };
    let conv1_before = new_w(&grown, true);
    assert!(new_w(&grown, false).iter().all(|v| *v == 0.0));
    let lr = resumed.step(patch(20), patch(30)).unwrap();
    let lg = grown.step(patch(20), patch(30)).unwrap();
    assert!(
        (lr.generator() - lg.generator()).abs() < 1e-6,
        "{lr:?} {lg:?}"
    );
    // The old parameters moved as in the resumed run (Adam moments continued).
    let old_w = |t: &Trainer<A>| -> Vec<f32> {
        let mut v = vals(t.gen.enc_a.conv_in.weight.val());
        v.extend(vals(t.gen.core[0].f.conv2.weight.val()));
        v.extend(vals(t.gen.core[0].g.conv1.weight.val()));
        v.extend(vals(t.gen.dec_b.conv_out.weight.val()));
        v
    };
    let d = old_w(&resumed)
        .iter()
        .zip(old_w(&grown))
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(d <= 1e-6, "old parameters differ by {d} after one step");
    // Not stuck: every new conv2 moved (Adam moves a weight only where its gradient is
    // non-zero); conv1 waits one step (its gradient passes through conv2 = 0).
    let w2 = new_w(&grown, false);
    let moved = w2.iter().filter(|v| **v != 0.0).count();
    assert_eq!(
        moved,
        w2.len(),
        "{moved} of {} new conv2 weights moved",
        w2.len()
    );
    assert_eq!(new_w(&grown, true), conv1_before);
    grown.step(patch(21), patch(31)).unwrap();
    let c1 = new_w(&grown, true);
    let moved = c1.iter().zip(&conv1_before).filter(|(a, b)| a != b).count();
    assert!(
        moved > c1.len() / 2,
        "{moved} of {} new conv1 weights moved",
        c1.len()
    );
}
