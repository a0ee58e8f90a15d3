//! The upper-layer PDU reader the SCP runs on every byte a peer sends (dicom-ul's `read_pdu`, with the
//! PDU length limit our default configuration sets). Any panic, overflow or runaway allocation is a bug.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for strict in [true, false] {
        let _ = dicom_ul::pdu::read_pdu(data, 16_384, strict);
    }
});
