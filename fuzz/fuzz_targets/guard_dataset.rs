//! The bounded pre-parser on arbitrary data sets, in each transfer syntax the SCP accepts, and its
//! promise to dicom-rs: whatever the guard passes, the full parser reads without a crash, a stack
//! overflow or an allocation beyond the input (libFuzzer's -rss_limit_mb catches the latter). The
//! first byte picks the transfer syntax.
#![no_main]
use ct_harmonizer::dicom::guard::{check_dataset, Limits};
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, bytes)) = data.split_first() else {
        return;
    };
    let ts_uid = ct_harmonizer::dicom::decode::ACCEPTED_TRANSFER_SYNTAXES
        [usize::from(pick) % ct_harmonizer::dicom::decode::ACCEPTED_TRANSFER_SYNTAXES.len()];
    if check_dataset(bytes, ts_uid, &Limits::default()).is_ok() {
        if let Some(ts) = TransferSyntaxRegistry.get(ts_uid) {
            let _ = InMemDicomObject::read_dataset_with_ts(bytes, ts);
        }
    }
});
