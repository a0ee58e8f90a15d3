//! Writes the seed corpus of every fuzz target into `fuzz/corpus/<target>/`, made with the project's own
//! writers and files: an association request, a C-STORE command and its P-DATA, the documented
//! configuration, the shipped model manifests, and phantom CT datasets in both little-endian syntaxes.
//! Run from the repository root: `cargo run -p ct-harmonizer --example make_fuzz_corpus` (an example
//! of the main crate, built with its tests; scripts/fuzz.sh runs it).

use ct_harmonizer::dicom::dimse;
use ct_harmonizer::samples::{phantom_slice, SeriesSpec};
use dicom_encoding::TransferSyntaxIndex;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_ul::pdu::{
    write_pdu, AssociationRQ, PDataValue, PDataValueType, Pdu, PresentationContextProposed,
    UserVariableItem,
};
use std::path::Path;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn put(target: &str, name: &str, bytes: &[u8]) -> Res<()> {
    let dir = Path::new("fuzz/corpus").join(target);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(name), bytes)?;
    Ok(())
}

fn pdu(p: &Pdu) -> Res<Vec<u8>> {
    let mut out = Vec::new();
    write_pdu(&mut out, p)?;
    Ok(out)
}

fn main() -> Res<()> {
    const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
    const EXPLICIT: &str = "1.2.840.10008.1.2.1";
    const IMPLICIT: &str = "1.2.840.10008.1.2";
    let rq = Pdu::AssociationRQ(AssociationRQ {
        protocol_version: 1,
        calling_ae_title: "FUZZ".into(),
        called_ae_title: "CTHARMONIZER".into(),
        application_context_name: "1.2.840.10008.3.1.1.1".into(),
        presentation_contexts: vec![PresentationContextProposed {
            id: 1,
            abstract_syntax: CT.into(),
            transfer_syntaxes: vec![EXPLICIT.into(), IMPLICIT.into()],
        }],
        user_variables: vec![
            UserVariableItem::MaxLength(16_384),
            UserVariableItem::ImplementationClassUID("1.2.3.4".into()),
            UserVariableItem::ImplementationVersionName("FUZZ".into()),
        ],
    });
    put("pdu_read", "associate_rq", &pdu(&rq)?)?;
    let cmd = dimse::store_rq(1, CT, "1.2.3.4.5")?;
    put("dimse_command", "c_store_rq", &cmd)?;
    let rsp = dimse::response(dimse::C_STORE_RSP, 1, CT, "1.2.3.4.5", 0xA700, "no room")?;
    put("dimse_command", "c_store_rsp", &rsp)?;
    let pdata = Pdu::PData {
        data: vec![PDataValue {
            presentation_context_id: 1,
            value_type: PDataValueType::Command,
            is_last: true,
            data: cmd,
        }],
    };
    put("pdu_read", "p_data_command", &pdu(&pdata)?)?;
    put("pdu_read", "release_rq", &pdu(&Pdu::ReleaseRQ)?)?;
    // An association's stream after the negotiation: a C-STORE command, its data set in three
    // fragments over two PDUs (one empty), the release. pdu_stream's first 4 bytes: maximum PDU
    // length 16 384, 10 bytes read ahead, the read sizes' seed.
    let data = |is_last, data: Vec<u8>| PDataValue {
        presentation_context_id: 1,
        value_type: PDataValueType::Data,
        is_last,
        data,
    };
    let mut stream = vec![0, 10, 0x17, 0x2B];
    stream.extend(pdu(&pdata)?);
    stream.extend(pdu(&Pdu::PData {
        data: vec![data(false, vec![0x08; 600]), data(false, Vec::new())],
    })?);
    stream.extend(pdu(&Pdu::PData {
        data: vec![data(true, vec![0x10; 300])],
    })?);
    stream.extend(pdu(&Pdu::ReleaseRQ)?);
    put("pdu_stream", "c_store_and_release", &stream)?;

    put(
        "config_toml",
        "documented_defaults",
        &std::fs::read("config/ct-harmonizer.toml")?,
    )?;
    for e in std::fs::read_dir("models")? {
        let e = e?;
        let m = e.path().join("model.toml");
        if m.is_file() {
            put(
                "manifest_toml",
                &e.file_name().to_string_lossy(),
                &std::fs::read(m)?,
            )?;
        }
    }

    // C-STORE data sets: the first byte picks the transfer syntax (its index in the SCP's list).
    let accepted = ct_harmonizer::dicom::decode::ACCEPTED_TRANSFER_SYNTAXES;
    let spec = SeriesSpec::axial("fuzz-corpus", 8, 8, 2, [2.0, 0.8, 0.8]);
    let obj = spec.dataset(0, &phantom_slice(0, 8, 8, 20.0, 5));
    for (name, uid) in [("explicit_le", EXPLICIT), ("implicit_le", IMPLICIT)] {
        let ts = TransferSyntaxRegistry
            .get(uid)
            .ok_or("transfer syntax missing")?;
        let pick = accepted
            .iter()
            .position(|u| *u == uid)
            .ok_or("transfer syntax not accepted")?;
        let mut bytes = vec![u8::try_from(pick)?];
        obj.write_dataset_with_ts(&mut bytes, ts)?;
        put("guard_dataset", name, &bytes)?;
    }
    // Part 10 files as the watched folder and the spool hold them.
    let tmp = tempfile::tempdir()?;
    let file = tmp.path().join("slice.dcm");
    ct_harmonizer::dicom::write::write_part10(obj, &file)?;
    put("guard_file", "phantom_slice", &std::fs::read(&file)?)?;
    // The processor's path (series_file): the slice as stored, an Enhanced CT object of three
    // frames, and the slice in every encapsulated syntax DCMTK's encoders of this machine write
    // (skipped where a tool is missing: the committed seeds stay).
    put("series_file", "phantom_slice", &std::fs::read(&file)?)?;
    let hu: Vec<Vec<f32>> = (0..3).map(|z| phantom_slice(z, 8, 8, 20.0, 5)).collect();
    let enhanced = tmp.path().join("enhanced.dcm");
    let spec3 = SeriesSpec::axial("fuzz-corpus-mf", 8, 8, 3, [2.0, 0.8, 0.8]);
    ct_harmonizer::dicom::write::write_part10(
        ct_harmonizer::samples::enhanced_dataset(&spec3, &[2, 0, 1], &hu),
        &enhanced,
    )?;
    put(
        "series_file",
        "enhanced_3_frames",
        &std::fs::read(&enhanced)?,
    )?;
    for (name, tool, args) in [
        ("rle", "/usr/bin/dcmcrle", &[][..]),
        ("jpeg_lossless_sv1", "/usr/bin/dcmcjpeg", &["+e1"][..]),
        ("jpeg_ls_lossless", "/usr/bin/dcmcjpls", &[][..]),
        ("enhanced_rle", "/usr/bin/dcmcrle", &[][..]),
        // The Enhanced CT fixture stores unsigned pixels, which near-lossless JPEG-LS needs.
        (
            "enhanced_jpeg_ls_near",
            "/usr/bin/dcmcjpls",
            &["+en", "+md", "1", "+un"][..],
        ),
        ("enhanced_jpeg_lossless", "/usr/bin/dcmcjpeg", &["+e1"][..]),
    ] {
        if !Path::new(tool).exists() {
            continue;
        }
        let source = if name.starts_with("enhanced") {
            &enhanced
        } else {
            &file
        };
        let to = tmp.path().join(name);
        let status = std::process::Command::new(tool)
            .args(args)
            .arg(source)
            .arg(&to)
            .status()?;
        if status.success() {
            put("series_file", name, &std::fs::read(&to)?)?;
        }
    }
    Ok(())
}
