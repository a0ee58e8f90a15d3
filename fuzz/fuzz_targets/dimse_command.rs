//! DIMSE command sets as the SCP decodes them from P-DATA command fragments.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ct_harmonizer::dicom::dimse::decode(data);
});
