//! Route stage: the configured rules, tried in order, turn a complete series into a plan
//! (harmonize with a chain of models, pass the original through, or drop). The last rule has no
//! conditions, so every series gets a plan; the matching rule is logged for every series.

use crate::config::Rule;
use crate::dicom::SliceHeader;

/// What rules can match on: the series' first instance's routing attributes (read with its header
/// by the scan, [`crate::dicom::header::RouteTags`]) and the association.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SeriesInfo {
    pub modality: String,
    pub convolution_kernel: String,
    pub manufacturer: String,
    pub station_name: String,
    pub series_description: String,
    pub slice_thickness: Option<f64>,
    pub calling_ae: String,
    pub called_ae: String,
}

impl SeriesInfo {
    /// The routing attributes of one instance of the series (no file is opened: the scan read them).
    pub fn from_header(h: &SliceHeader, calling_ae: &str, called_ae: &str) -> Self {
        let r = &h.route;
        Self {
            modality: r.modality.clone(),
            convolution_kernel: r.convolution_kernel.clone(),
            manufacturer: r.manufacturer.clone(),
            station_name: r.station_name.clone(),
            series_description: r.series_description.clone(),
            slice_thickness: r.slice_thickness,
            calling_ae: calling_ae.trim().to_string(),
            called_ae: called_ae.trim().to_string(),
        }
    }
}

/// Case-insensitive match with `*` wildcards.
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.to_lowercase().chars().collect();
    let t: Vec<char> = text.to_lowercase().chars().collect();
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] != '*' && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            pi += 1;
            mark = ti;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

fn any_eq(list: &[String], value: &str) -> bool {
    list.is_empty()
        || list
            .iter()
            .any(|v| v.trim().eq_ignore_ascii_case(value.trim()))
}

/// True when every condition the rule states holds for the series.
pub fn matches(rule: &Rule, s: &SeriesInfo) -> bool {
    // A multi-valued ConvolutionKernel matches when any of its values does.
    let kernel_ok = rule.convolution_kernel.is_empty()
        || s.convolution_kernel
            .split('\\')
            .any(|k| any_eq(&rule.convolution_kernel, k));
    let thickness_ok = match (rule.slice_thickness_mm, s.slice_thickness) {
        (None, _) => true,
        (Some([lo, hi]), Some(t)) => t >= lo && t <= hi,
        (Some(_), None) => false,
    };
    any_eq(&rule.modality, &s.modality)
        && kernel_ok
        && any_eq(&rule.manufacturer, &s.manufacturer)
        && any_eq(&rule.station_name, &s.station_name)
        && (rule.series_description.is_empty()
            || rule
                .series_description
                .iter()
                .any(|p| glob(p, &s.series_description)))
        && thickness_ok
        && any_eq(&rule.calling_ae, &s.calling_ae)
        && any_eq(&rule.called_ae, &s.called_ae)
}

/// The first matching rule (the configuration guarantees a catch-all last rule).
pub fn route<'a>(rules: &'a [Rule], s: &SeriesInfo) -> Option<&'a Rule> {
    rules.iter().find(|r| matches(r, s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PlanKind;

    fn rule(name: &str) -> Rule {
        Rule {
            name: name.into(),
            modality: vec![],
            convolution_kernel: vec![],
            manufacturer: vec![],
            station_name: vec![],
            series_description: vec![],
            slice_thickness_mm: None,
            calling_ae: vec![],
            called_ae: vec![],
            plan: PlanKind::Pass,
            models: vec![],
            forward_original: false,
            destinations: vec![],
        }
    }

    #[test]
    fn glob_matches() {
        assert!(glob("*lung*", "CHEST LUNG 1mm"));
        assert!(glob("chest*", "Chest 5mm"));
        assert!(!glob("chest", "chest 5mm"));
        assert!(glob("*", ""));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxbyy"));
    }

    #[test]
    fn first_matching_rule_wins() {
        let mut sharp = rule("sharp");
        sharp.convolution_kernel = vec!["B50f".into(), "B60f".into()];
        sharp.slice_thickness_mm = Some([0.5, 2.0]);
        let mut scanner = rule("from-ct1");
        scanner.calling_ae = vec!["CT1".into()];
        scanner.series_description = vec!["*lung*".into()];
        let rules = vec![sharp, scanner, rule("default")];
        let mut s = SeriesInfo {
            modality: "CT".into(),
            convolution_kernel: "b50f".into(),
            slice_thickness: Some(1.0),
            calling_ae: "CT1".into(),
            series_description: "Lung 1mm".into(),
            ..Default::default()
        };
        assert_eq!(route(&rules, &s).unwrap().name, "sharp");
        s.slice_thickness = Some(5.0);
        assert_eq!(route(&rules, &s).unwrap().name, "from-ct1");
        s.calling_ae = "CT2".into();
        assert_eq!(route(&rules, &s).unwrap().name, "default");
        s.convolution_kernel = "FC51\\B60f".into();
        s.slice_thickness = Some(1.0);
        assert_eq!(route(&rules, &s).unwrap().name, "sharp");
    }
}
