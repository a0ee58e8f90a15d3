//! What of a source header becomes the template of a derived instance: an Enhanced CT (multi-frame)
//! header turned into the base of classic CT Image instances ([`classic_from_enhanced`]), invalid
//! values dropped or emptied ([`sanitize`]), and the derived SeriesDescription. Used by the deriver
//! ([`super::derive`]).

use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use crate::dicom::header;
use crate::dicom::write::put_seq;

/// Attributes of the multi-frame (Enhanced CT) IOD that a classic CT Image has no place for: the
/// functional groups (their per-frame content moves to the top level, frame by frame), the
/// dimension, concatenation and multi-frame presentation attributes.
const ENHANCED_ONLY: [Tag; 17] = [
    tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE,
    tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE,
    tags::DIMENSION_ORGANIZATION_SEQUENCE,
    tags::DIMENSION_INDEX_SEQUENCE,
    tags::DIMENSION_ORGANIZATION_TYPE,
    tags::CONTENT_QUALIFICATION,
    tags::PIXEL_PRESENTATION,
    tags::VOLUMETRIC_PROPERTIES,
    tags::VOLUME_BASED_CALCULATION_TECHNIQUE,
    tags::ACQUISITION_CONTEXT_SEQUENCE,
    tags::PRESENTATION_LUT_SHAPE,
    tags::REFERENCED_IMAGE_EVIDENCE_SEQUENCE,
    tags::SOURCE_IMAGE_EVIDENCE_SEQUENCE,
    tags::CONCATENATION_UID,
    tags::CONCATENATION_FRAME_OFFSET_NUMBER,
    tags::IN_CONCATENATION_NUMBER,
    tags::REPRESENTATIVE_FRAME_NUMBER,
];

/// Per-frame attributes a classic CT Image keeps at the top level: (functional group, attribute, VR).
const FRAME_ATTRIBUTES: [(Tag, Tag, VR); 3] = [
    (tags::CTX_RAY_DETAILS_SEQUENCE, tags::KVP, VR::DS),
    (tags::FRAME_VOILUT_SEQUENCE, tags::WINDOW_CENTER, VR::DS),
    (tags::FRAME_VOILUT_SEQUENCE, tags::WINDOW_WIDTH, VR::DS),
];

/// One frame's top-level attributes for its classic instance (see [`classic_from_enhanced`]).
pub type FrameAttributes = Vec<(Tag, VR, String)>;

/// Turns a multi-frame (Enhanced CT) header into the base of classic CT Image instances: removes
/// what only the multi-frame IOD has ([`ENHANCED_ONLY`], NumberOfFrames...). Returns, per frame, the
/// attributes of its functional groups (its own, else the shared ones) that the classic CT Image
/// keeps at the top level: KVP (CTXRayDetailsSequence), WindowCenter/WindowWidth
/// (FrameVOILUTSequence). The per-frame Image Plane attributes are the frame's slice header's.
/// A value that is not valid for its VR (fuzzing found a WindowWidth "LO0" carried into every
/// derived instance: these bypass [`sanitize`], which sees the base after the functional groups are
/// gone) is left out, with one note per attribute, as `sanitize` reports its repairs.
pub fn classic_from_enhanced(obj: &mut InMemDicomObject) -> (Vec<FrameAttributes>, Vec<String>) {
    let items = |tag| {
        obj.element_opt(tag)
            .ok()
            .flatten()
            .and_then(|e| e.items())
            .map(|i| i.to_vec())
            .unwrap_or_default()
    };
    let per_frame = items(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE);
    let shared = items(tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE);
    let value_in = |groups: Option<&InMemDicomObject>, group: Tag, tag: Tag| {
        groups?
            .element_opt(group)
            .ok()
            .flatten()
            .and_then(|e| e.items())
            .and_then(|i| i.first())
            .map(|i| item_text(i, tag))
            .filter(|v| !v.is_empty())
    };
    let frames = obj
        .element_opt(tags::NUMBER_OF_FRAMES)
        .ok()
        .flatten()
        .and_then(|e| e.to_int::<usize>().ok())
        .unwrap_or(per_frame.len())
        .min(header::MAX_FRAMES as usize);
    let mut notes = Vec::new();
    let attributes = (0..frames)
        .map(|f| {
            FRAME_ATTRIBUTES
                .iter()
                .filter_map(|&(group, tag, vr)| {
                    let v = value_in(per_frame.get(f), group, tag)
                        .or_else(|| value_in(shared.first(), group, tag))?;
                    let values = PrimitiveValue::Strs(v.split('\\').map(String::from).collect());
                    match value_problem(vr, &values) {
                        None => Some((tag, vr, v)),
                        Some(reason) => {
                            let note = format!("{}: {reason}; dropped", tag_name(tag));
                            if !notes.contains(&note) {
                                notes.push(note);
                            }
                            None
                        }
                    }
                })
                .collect()
        })
        .collect();
    for t in ENHANCED_ONLY {
        obj.remove_element(t);
    }
    (attributes, notes)
}

// ---------------------------------------------------------------------------------------------
// Source attributes carried into a derived instance: only what is valid. Real archives are full of
// small defects (a ReferencedStudySequence item without ReferencedSOPClassUID, a DS of 17
// characters, a lower-case CS); copied as they are, every derived instance would fail validation.

/// Type 1 attributes a derived instance cannot do without: kept even when their value looks wrong.
const KEEP_AS_IS: [Tag; 5] = [
    tags::STUDY_INSTANCE_UID,
    tags::FRAME_OF_REFERENCE_UID,
    tags::MODALITY,
    tags::IMAGE_ORIENTATION_PATIENT,
    tags::IMAGE_POSITION_PATIENT,
];

/// Type 2 attributes of the CT Image IOD's modules: an invalid value is emptied, not dropped.
const TYPE_2: [Tag; 17] = [
    tags::PATIENT_NAME,
    tags::PATIENT_ID,
    tags::PATIENT_BIRTH_DATE,
    tags::PATIENT_SEX,
    tags::STUDY_DATE,
    tags::STUDY_TIME,
    tags::REFERRING_PHYSICIAN_NAME,
    tags::STUDY_ID,
    tags::ACCESSION_NUMBER,
    tags::SERIES_NUMBER,
    tags::LATERALITY,
    tags::MANUFACTURER,
    tags::INSTANCE_NUMBER,
    tags::PATIENT_ORIENTATION,
    tags::KVP,
    tags::ACQUISITION_NUMBER,
    tags::POSITION_REFERENCE_INDICATOR,
];

/// Sequences whose items are SOP Instance references (ReferencedSOPClassUID and
/// ReferencedSOPInstanceUID both Type 1).
const SOP_REFERENCES: [Tag; 6] = [
    tags::REFERENCED_STUDY_SEQUENCE,
    tags::REFERENCED_PATIENT_SEQUENCE,
    tags::REFERENCED_IMAGE_SEQUENCE,
    tags::REFERENCED_PERFORMED_PROCEDURE_STEP_SEQUENCE,
    tags::REFERENCED_INSTANCE_SEQUENCE,
    tags::SOURCE_IMAGE_SEQUENCE,
];

fn tag_name(t: Tag) -> String {
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
    dicom_dictionary_std::StandardDataDictionary
        .by_tag(t)
        .map(|e| e.alias().to_string())
        .unwrap_or_else(|| format!("({:04X},{:04X})", t.group(), t.element()))
}

fn is_known(t: Tag) -> bool {
    use dicom_core::dictionary::DataDictionary;
    dicom_dictionary_std::StandardDataDictionary
        .by_tag(t)
        .is_some()
}

fn is_uid(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && v.split('.').all(|c| {
            !c.is_empty()
                && c.bytes().all(|b| b.is_ascii_digit())
                && (c == "0" || !c.starts_with('0'))
        })
}

fn item_text(item: &InMemDicomObject, tag: Tag) -> String {
    item.element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).trim().to_string())
        .unwrap_or_default()
}

/// Why an item of sequence `seq` is invalid, if it is.
fn item_problem(seq: Tag, item: &InMemDicomObject) -> Option<String> {
    let name = tag_name(seq);
    if SOP_REFERENCES.contains(&seq)
        || item
            .element_opt(tags::REFERENCED_SOP_INSTANCE_UID)
            .ok()
            .flatten()
            .is_some()
    {
        for t in [
            tags::REFERENCED_SOP_CLASS_UID,
            tags::REFERENCED_SOP_INSTANCE_UID,
        ] {
            let v = item_text(item, t);
            if v.is_empty() {
                return Some(format!("no {}", tag_name(t)));
            }
            if !is_uid(&v) {
                return Some(format!("invalid {} {v:?}", tag_name(t)));
            }
        }
    }
    let code_attribute = [
        tags::CODE_VALUE,
        tags::LONG_CODE_VALUE,
        tags::URN_CODE_VALUE,
        tags::CODING_SCHEME_DESIGNATOR,
        tags::CODE_MEANING,
    ]
    .iter()
    .any(|&t| item.element_opt(t).ok().flatten().is_some());
    if name.ends_with("CodeSequence") || code_attribute {
        let urn = !item_text(item, tags::URN_CODE_VALUE).is_empty();
        let value = !item_text(item, tags::CODE_VALUE).is_empty()
            || !item_text(item, tags::LONG_CODE_VALUE).is_empty()
            || urn;
        if !value {
            return Some("no CodeValue".into());
        }
        if !urn && item_text(item, tags::CODING_SCHEME_DESIGNATOR).is_empty() {
            return Some("no CodingSchemeDesignator".into());
        }
        if item_text(item, tags::CODE_MEANING).is_empty() {
            return Some("no CodeMeaning".into());
        }
    }
    None
}

/// Why a primitive value of representation `vr` is invalid, if it is.
fn value_problem(vr: VR, value: &PrimitiveValue) -> Option<String> {
    let max = match vr {
        VR::AE | VR::CS | VR::SH => 16,
        VR::AS => 4,
        VR::DA => 8,
        VR::DS => 16,
        VR::IS => 12,
        VR::LO => 64,
        VR::UI => 64,
        VR::TM => 14,
        VR::ST => 1024,
        VR::LT => 10240,
        _ => return None,
    };
    let values = value.to_multi_str();
    for raw in values.iter() {
        let v = raw.trim_end_matches(['\0', ' ']);
        let t = v.trim();
        if v.len() > max {
            return Some(format!(
                "value {:?} longer than {max} characters",
                truncate(v, 80)
            ));
        }
        if t.is_empty() {
            continue;
        }
        let ok = match vr {
            VR::UI => is_uid(t),
            VR::DS => {
                t.parse::<f64>().is_ok_and(f64::is_finite) && !t.contains(['i', 'n', 'I', 'N'])
            }
            VR::IS => t
                .parse::<i64>()
                .is_ok_and(|n| (-(1i64 << 31)..(1i64 << 31)).contains(&n)),
            VR::DA => t.len() == 8 && t.bytes().all(|b| b.is_ascii_digit()),
            VR::TM => {
                let (hms, frac) = t.split_once('.').unwrap_or((t, ""));
                matches!(hms.len(), 2 | 4 | 6)
                    && hms.bytes().all(|b| b.is_ascii_digit())
                    && frac.len() <= 6
                    && frac.bytes().all(|b| b.is_ascii_digit())
                    && (frac.is_empty() || hms.len() == 6)
            }
            VR::CS => v
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b' ' || b == b'_'),
            VR::AS => {
                t.len() == 4
                    && t[..3].bytes().all(|b| b.is_ascii_digit())
                    && matches!(t.as_bytes()[3], b'D' | b'W' | b'M' | b'Y')
            }
            _ => true,
        };
        if !ok {
            return Some(format!("invalid {vr:?} value {:?}", truncate(v, 80)));
        }
    }
    None
}

/// Drops (or, for Type 2 attributes, empties) what is not valid in a source header before it becomes
/// a derived instance's template: unknown public attributes, invalid values, sequence items missing
/// their Type 1 attributes (a sequence left without items is dropped). Returns one note per repair,
/// naming the attribute.
pub fn sanitize(obj: &mut InMemDicomObject) -> Vec<String> {
    let mut notes = Vec::new();
    sanitize_level(obj, "", true, &mut notes);
    notes
}

fn sanitize_level(obj: &mut InMemDicomObject, path: &str, top: bool, notes: &mut Vec<String>) {
    use dicom_core::DicomValue;
    let all: Vec<Tag> = obj.iter().map(|e| e.header().tag).collect();
    for t in all {
        // Private attributes are dropped elsewhere (top level) or kept inside items untouched.
        if t.group() % 2 == 1 || t.group() == 0x0002 || t == tags::PIXEL_DATA {
            continue;
        }
        let name = format!("{path}{}", tag_name(t));
        if !is_known(t) {
            obj.remove_element(t);
            notes.push(format!("{name}: not a standard attribute; dropped"));
            continue;
        }
        let Ok(elem) = obj.take_element(t) else {
            continue;
        };
        let vr = elem.header().vr;
        match elem.value() {
            DicomValue::Sequence(seq) => {
                let items = seq.items();
                let had = items.len();
                let mut kept = Vec::with_capacity(had);
                let mut bad = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    if let Some(reason) = item_problem(t, item) {
                        bad.push(format!("item {}: {reason}", i + 1));
                        continue;
                    }
                    let mut item = item.clone();
                    sanitize_level(&mut item, &format!("{name}[{}].", i + 1), false, notes);
                    kept.push(item);
                }
                let gone = had > 0 && kept.is_empty() && !(top && TYPE_2.contains(&t));
                if !bad.is_empty() {
                    notes.push(format!(
                        "{name}: {}; {}",
                        bad.join(", "),
                        if gone {
                            "sequence dropped".to_string()
                        } else {
                            format!("{} of {had} item(s) dropped", bad.len())
                        }
                    ));
                }
                if gone {
                    continue;
                }
                put_seq(obj, t, kept);
            }
            DicomValue::Primitive(v) => match value_problem(vr, v) {
                Some(reason) if !(top && KEEP_AS_IS.contains(&t)) => {
                    if top && TYPE_2.contains(&t) {
                        notes.push(format!("{name}: {reason}; emptied"));
                        obj.put(DataElement::new(t, vr, PrimitiveValue::Empty));
                    } else {
                        notes.push(format!("{name}: {reason}; dropped"));
                    }
                }
                _ => {
                    obj.put(elem);
                }
            },
            DicomValue::PixelSequence(_) => {
                obj.put(elem);
            }
        }
    }
}

/// `s` cut to `max` bytes at a character boundary.
pub fn truncate(s: &str, max: usize) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

/// Source description plus the configured suffix, within the 64-character LO limit (the suffix wins).
pub fn series_description(source: &str, suffix: &str) -> String {
    let suffix = truncate(suffix, 64);
    let room = 64 - suffix.len();
    format!("{}{}", truncate(source, room), suffix)
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dicom::write::{code_item, put};

    #[test]
    fn description_keeps_suffix_within_64() {
        let d = series_description(&"X".repeat(80), " HARMONIZED NOT FOR DIAGNOSTIC USE");
        assert_eq!(d.len(), 64);
        assert!(d.ends_with("NOT FOR DIAGNOSTIC USE"));
        assert_eq!(series_description("", " SUFFIX"), "SUFFIX");
    }

    #[test]
    fn sanitize_drops_invalid_and_keeps_valid() {
        let mut o = InMemDicomObject::new_empty();
        let mut bad_ref = InMemDicomObject::new_empty();
        put(
            &mut bad_ref,
            tags::REFERENCED_SOP_INSTANCE_UID,
            VR::UI,
            "1.2.3",
        );
        let mut good_ref = bad_ref.clone();
        put(
            &mut good_ref,
            tags::REFERENCED_SOP_CLASS_UID,
            VR::UI,
            "1.2.840.10008.3.1.2.3.1",
        );
        put_seq(
            &mut o,
            tags::REFERENCED_STUDY_SEQUENCE,
            vec![bad_ref.clone()],
        );
        put_seq(
            &mut o,
            tags::REFERENCED_IMAGE_SEQUENCE,
            vec![bad_ref, good_ref],
        );
        put_seq(
            &mut o,
            tags::ANATOMIC_REGION_SEQUENCE,
            vec![code_item("T-D1100", "SRT", "")],
        );
        put(&mut o, tags::PATIENT_SEX, VR::CS, "male");
        put(&mut o, tags::SLICE_THICKNESS, VR::DS, "1.25");
        put(&mut o, tags::DATA_COLLECTION_DIAMETER, VR::DS, "abc");
        put(&mut o, tags::STUDY_DATE, VR::DA, "2012-09-14");
        put(&mut o, tags::STUDY_TIME, VR::TM, "101010.123456");
        put(&mut o, tags::STUDY_INSTANCE_UID, VR::UI, "1.02.3");
        let notes = sanitize(&mut o);
        assert_eq!(notes.len(), 6, "{notes:#?}");
        let has = |t| o.element_opt(t).ok().flatten().is_some();
        assert!(!has(tags::REFERENCED_STUDY_SEQUENCE));
        assert!(!has(tags::ANATOMIC_REGION_SEQUENCE));
        assert!(!has(tags::DATA_COLLECTION_DIAMETER));
        assert_eq!(
            o.element(tags::REFERENCED_IMAGE_SEQUENCE)
                .unwrap()
                .items()
                .unwrap()
                .len(),
            1
        );
        assert!(o
            .element(tags::PATIENT_SEX)
            .unwrap()
            .to_str()
            .unwrap()
            .is_empty());
        assert!(o
            .element(tags::STUDY_DATE)
            .unwrap()
            .to_str()
            .unwrap()
            .is_empty());
        assert_eq!(
            o.element(tags::STUDY_TIME).unwrap().to_str().unwrap(),
            "101010.123456"
        );
        assert_eq!(
            o.element(tags::SLICE_THICKNESS).unwrap().to_str().unwrap(),
            "1.25"
        );
        // Type 1 and needed: kept even when it looks wrong.
        assert!(has(tags::STUDY_INSTANCE_UID));
    }

    #[test]
    fn enhanced_header_becomes_a_classic_base() {
        let kvp_item = |v: &str| {
            let mut details = InMemDicomObject::new_empty();
            put(&mut details, tags::KVP, VR::DS, v);
            let mut group = InMemDicomObject::new_empty();
            put_seq(&mut group, tags::CTX_RAY_DETAILS_SEQUENCE, vec![details]);
            group
        };
        let mut o = InMemDicomObject::new_empty();
        put(&mut o, tags::PATIENT_ID, VR::LO, "P1");
        put(&mut o, tags::NUMBER_OF_FRAMES, VR::IS, "3");
        put(&mut o, tags::DIMENSION_ORGANIZATION_TYPE, VR::CS, "3D");
        put(&mut o, tags::CONTENT_QUALIFICATION, VR::CS, "PRODUCT");
        put_seq(
            &mut o,
            tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE,
            vec![kvp_item("120")],
        );
        // Frame 2 has its own KVP; frames 1 and 3 have none of their own.
        put_seq(
            &mut o,
            tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE,
            vec![
                InMemDicomObject::new_empty(),
                kvp_item("100"),
                InMemDicomObject::new_empty(),
            ],
        );
        let (frames, notes) = classic_from_enhanced(&mut o);
        let kvp = |v: &str| vec![(tags::KVP, VR::DS, v.to_string())];
        assert_eq!(frames, vec![kvp("120"), kvp("100"), kvp("120")]);
        assert!(notes.is_empty(), "{notes:?}");

        // Values invalid for their VR (the fuzzer's WindowWidth "LO0") are left out, once noted;
        // a valid multi-valued window stays.
        let voi = |center: &str, width: &str| {
            let item = InMemDicomObject::from_element_iter([
                DataElement::new(tags::WINDOW_CENTER, VR::DS, PrimitiveValue::from(center)),
                DataElement::new(tags::WINDOW_WIDTH, VR::DS, PrimitiveValue::from(width)),
            ]);
            let mut group = InMemDicomObject::new_empty();
            put_seq(&mut group, tags::FRAME_VOILUT_SEQUENCE, vec![item]);
            group
        };
        let mut bad = InMemDicomObject::new_empty();
        put_seq(
            &mut bad,
            tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE,
            vec![
                voi("40\\-600", "400\\1500"),
                voi("40", "LO0"),
                voi("NaN", "400"),
            ],
        );
        let (bad_frames, notes) = classic_from_enhanced(&mut bad);
        let w = |c: &str, w: &str| {
            vec![
                (tags::WINDOW_CENTER, VR::DS, c.to_string()),
                (tags::WINDOW_WIDTH, VR::DS, w.to_string()),
            ]
        };
        assert_eq!(bad_frames[0], w("40\\-600", "400\\1500"));
        assert_eq!(
            bad_frames[1],
            vec![(tags::WINDOW_CENTER, VR::DS, "40".to_string())]
        );
        assert_eq!(
            bad_frames[2],
            vec![(tags::WINDOW_WIDTH, VR::DS, "400".to_string())]
        );
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(
            notes[0].contains("WindowWidth") && notes[0].contains("LO0"),
            "{notes:?}"
        );
        assert!(
            notes[1].contains("WindowCenter") && notes[1].contains("NaN"),
            "{notes:?}"
        );
        for t in ENHANCED_ONLY {
            assert!(o.element_opt(t).unwrap().is_none(), "{t:?}");
        }
        assert!(o.element_opt(tags::PATIENT_ID).unwrap().is_some());
    }
}
