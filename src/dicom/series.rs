//! Groups instances by (StudyInstanceUID, SeriesInstanceUID). In the one-shot path every series is
//! complete once its folder is read; the daemon's series stage (`crate::series`) adds completion on
//! quiet time.

use std::collections::BTreeMap;

use super::SliceHeader;

/// One series' instances, in arrival order.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub study_uid: String,
    pub series_uid: String,
    pub slices: Vec<SliceHeader>,
    /// Files dropped because another file had the same SOPInstanceUID.
    pub duplicates: Vec<std::path::PathBuf>,
}

/// Groups headers into series, in (study, series) UID order; duplicate SOPInstanceUIDs keep the first.
pub fn group(headers: Vec<SliceHeader>) -> Vec<Series> {
    let mut map: BTreeMap<(String, String), Series> = BTreeMap::new();
    for h in headers {
        let key = (h.study_uid.clone(), h.series_uid.clone());
        let s = map.entry(key).or_insert_with(|| Series {
            study_uid: h.study_uid.clone(),
            series_uid: h.series_uid.clone(),
            slices: Vec::new(),
            duplicates: Vec::new(),
        });
        if s.slices
            .iter()
            .any(|o| o.sop_instance_uid == h.sop_instance_uid)
        {
            s.duplicates.push(h.path);
        } else {
            s.slices.push(h);
        }
    }
    map.into_values().collect()
}
