//! DIMSE command sets (PS3.7) shared by the SCP and the SCU: encode and decode commands in Implicit VR
//! Little Endian, with the command group length.

use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN;

pub const C_STORE_RQ: u16 = 0x0001;
pub const C_STORE_RSP: u16 = 0x8001;
pub const C_ECHO_RQ: u16 = 0x0030;
pub const C_ECHO_RSP: u16 = 0x8030;
/// CommandDataSetType: no data set follows.
pub const NO_DATASET: u16 = 0x0101;
/// CommandDataSetType: a data set follows (any value other than 0x0101).
pub const WITH_DATASET: u16 = 0x0000;

pub const SUCCESS: u16 = 0x0000;
/// Refused: out of resources.
pub const OUT_OF_RESOURCES: u16 = 0xA700;
/// Error: data set does not match SOP class.
pub const DATASET_MISMATCH: u16 = 0xA900;
/// Error: cannot understand.
pub const CANNOT_UNDERSTAND: u16 = 0xC000;
/// Largest command set a peer may send us, summed over its fragments (a real one is under 200
/// bytes); a peer that sends more is not speaking DIMSE.
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;
/// Refused: SOP class not supported.
pub const SOP_CLASS_NOT_SUPPORTED: u16 = 0x0122;

/// Errors reading a command set.
#[derive(Debug, thiserror::Error)]
pub enum DimseError {
    #[error("cannot decode command set: {0}")]
    Decode(String),
    #[error("cannot encode command set: {0}")]
    Encode(String),
    #[error("command set lacks {0}")]
    Missing(&'static str),
}

/// A decoded command: the fields the services here use.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Command {
    pub field: u16,
    pub message_id: u16,
    pub responded_id: u16,
    pub sop_class: String,
    pub sop_instance: String,
    pub has_dataset: bool,
    pub status: u16,
    pub error_comment: String,
}

fn put_us(o: &mut InMemDicomObject, tag: Tag, v: u16) {
    o.put(DataElement::new(tag, VR::US, PrimitiveValue::from(v)));
}

fn put_ui(o: &mut InMemDicomObject, tag: Tag, v: &str) {
    o.put(DataElement::new(tag, VR::UI, PrimitiveValue::from(v)));
}

/// Encodes a command set with its group length.
pub fn encode(o: &InMemDicomObject) -> Result<Vec<u8>, DimseError> {
    let mut body = Vec::new();
    o.write_dataset_with_ts(&mut body, &IMPLICIT_VR_LITTLE_ENDIAN.erased())
        .map_err(|e| DimseError::Encode(e.to_string()))?;
    let mut out = Vec::with_capacity(body.len() + 12);
    // (0000,0000) UL, implicit VR: tag, 4-byte length, value.
    out.extend_from_slice(&[0, 0, 0, 0, 4, 0, 0, 0]);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes a command set. The bytes are untrusted (a peer's P-DATA): the guard refuses anything
/// but a flat command set of at most 64 KiB before the full parser sees it.
pub fn decode(bytes: &[u8]) -> Result<Command, DimseError> {
    crate::dicom::guard::check_dataset(
        bytes,
        IMPLICIT_VR_LITTLE_ENDIAN.uid(),
        &crate::dicom::guard::Limits::command(),
    )
    .map_err(|e| DimseError::Decode(e.to_string()))?;
    let o = InMemDicomObject::read_dataset_with_ts(bytes, &IMPLICIT_VR_LITTLE_ENDIAN.erased())
        .map_err(|e| DimseError::Decode(e.to_string()))?;
    let int = |tag| {
        o.element_opt(tag)
            .ok()
            .flatten()
            .and_then(|e| e.to_int::<u16>().ok())
    };
    let text = |tag| {
        o.element_opt(tag)
            .ok()
            .flatten()
            .and_then(|e| e.to_str().ok())
            .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
            .unwrap_or_default()
    };
    Ok(Command {
        field: int(tags::COMMAND_FIELD).ok_or(DimseError::Missing("CommandField"))?,
        message_id: int(tags::MESSAGE_ID).unwrap_or(0),
        responded_id: int(tags::MESSAGE_ID_BEING_RESPONDED_TO).unwrap_or(0),
        sop_class: text(tags::AFFECTED_SOP_CLASS_UID),
        sop_instance: text(tags::AFFECTED_SOP_INSTANCE_UID),
        has_dataset: int(tags::COMMAND_DATA_SET_TYPE).unwrap_or(NO_DATASET) != NO_DATASET,
        status: int(tags::STATUS).unwrap_or(0),
        error_comment: text(tags::ERROR_COMMENT),
    })
}

/// A C-STORE-RQ.
pub fn store_rq(
    message_id: u16,
    sop_class: &str,
    sop_instance: &str,
) -> Result<Vec<u8>, DimseError> {
    let mut o = InMemDicomObject::new_empty();
    put_ui(&mut o, tags::AFFECTED_SOP_CLASS_UID, sop_class);
    put_us(&mut o, tags::COMMAND_FIELD, C_STORE_RQ);
    put_us(&mut o, tags::MESSAGE_ID, message_id);
    put_us(&mut o, tags::PRIORITY, 0);
    put_us(&mut o, tags::COMMAND_DATA_SET_TYPE, WITH_DATASET);
    put_ui(&mut o, tags::AFFECTED_SOP_INSTANCE_UID, sop_instance);
    encode(&o)
}

/// A response (C-STORE-RSP or C-ECHO-RSP) with `status` and an optional error comment.
pub fn response(
    field: u16,
    responded_id: u16,
    sop_class: &str,
    sop_instance: &str,
    status: u16,
    comment: &str,
) -> Result<Vec<u8>, DimseError> {
    let mut o = InMemDicomObject::new_empty();
    put_ui(&mut o, tags::AFFECTED_SOP_CLASS_UID, sop_class);
    put_us(&mut o, tags::COMMAND_FIELD, field);
    put_us(&mut o, tags::MESSAGE_ID_BEING_RESPONDED_TO, responded_id);
    put_us(&mut o, tags::COMMAND_DATA_SET_TYPE, NO_DATASET);
    put_us(&mut o, tags::STATUS, status);
    if !sop_instance.is_empty() {
        put_ui(&mut o, tags::AFFECTED_SOP_INSTANCE_UID, sop_instance);
    }
    if !comment.is_empty() {
        let c: String = comment
            .chars()
            .filter(|c| c.is_ascii() && *c != '\\')
            .take(64)
            .collect();
        o.put(DataElement::new(
            tags::ERROR_COMMENT,
            VR::LO,
            PrimitiveValue::from(c),
        ));
    }
    encode(&o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let b = store_rq(7, "1.2.840.10008.5.1.4.1.1.2", "1.2.3").unwrap();
        let c = decode(&b).unwrap();
        assert_eq!(c.field, C_STORE_RQ);
        assert_eq!(c.message_id, 7);
        assert!(c.has_dataset);
        assert_eq!(c.sop_instance, "1.2.3");
        let r = response(
            C_STORE_RSP,
            7,
            "1.2",
            "1.2.3",
            OUT_OF_RESOURCES,
            "disk full",
        )
        .unwrap();
        let c = decode(&r).unwrap();
        assert_eq!(
            (c.field, c.responded_id, c.status),
            (C_STORE_RSP, 7, OUT_OF_RESOURCES)
        );
        assert!(!c.has_dataset);
        assert_eq!(c.error_comment, "disk full");
        // The group length covers exactly the rest.
        let len = u32::from_le_bytes([r[8], r[9], r[10], r[11]]) as usize;
        assert_eq!(len, r.len() - 12);
    }

    #[test]
    fn hostile_command_sets_are_refused() {
        // 4000 nested undefined-length elements (implicit VR: sequences), 32 KiB.
        let mut b = Vec::new();
        for _ in 0..2000 {
            b.extend_from_slice(&[0x00, 0x00, 0x00, 0x09, 0xFF, 0xFF, 0xFF, 0xFF]);
            b.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
        }
        assert!(decode(&b).is_err());
        // An element declaring 4 GB.
        let mut b = store_rq(1, "1.2", "1.2.3").unwrap();
        b.extend_from_slice(&[0x00, 0x00, 0x00, 0x09, 0xF0, 0xFF, 0xFF, 0xFF]);
        assert!(decode(&b).is_err());
    }
}
