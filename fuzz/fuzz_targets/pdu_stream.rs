//! The SCP's own reader of an established association (`ingest::wire::PduReader`: every byte a
//! peer sends after the negotiation goes through it), on arbitrary streams cut into arbitrary
//! reads, checked against dicom-ul's strict decoder of the same bytes. The first 4 bytes choose the
//! maximum PDU length, how many bytes the negotiation had read ahead, and the read sizes; the rest
//! is the stream. Any panic, any call that neither consumes nor fails, more value bytes handed over
//! than were sent, or a PDU dicom-ul decodes that our reader reads otherwise (items, their order,
//! their bytes) is a bug.
#![no_main]
use ct_harmonizer::ingest::wire::{PduReader, Received};
use dicom_ul::pdu::{PDataValueType, Pdu};
use libfuzzer_sys::fuzz_target;
use std::future::Future;
use std::pin::{pin, Pin};
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, ReadBuf};

/// The stream, handed over in reads of pseudo-random sizes (1 to 4096 bytes); never pending.
struct Chunked<'a> {
    data: &'a [u8],
    state: u32,
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        // xorshift32 (never 0: seeded with an odd value).
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.state = x;
        let n = (1 + (x % 4096) as usize)
            .min(self.data.len())
            .min(buf.remaining());
        let (head, rest) = self.data.split_at(n);
        buf.put_slice(head);
        self.data = rest;
        Poll::Ready(Ok(()))
    }
}

/// One thing the peer sent, as both decoders see it.
#[derive(Debug, PartialEq)]
enum Event {
    Item {
        pc: u8,
        command: bool,
        is_last: bool,
        data: Vec<u8>,
    },
    Pdu(Pdu),
}

/// Polls a future that cannot be pending (its reader never is).
fn now<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the reader waited on a stream that never pends"),
    }
}

fuzz_target!(|data: &[u8]| {
    let [a, b, c, d, stream @ ..] = data else {
        return;
    };
    let max = [16_384u32, 65_536, 1 << 20][usize::from(*a) % 3];
    let split = (usize::from(*b) % 13).min(stream.len());
    let mut sock = Chunked {
        data: &stream[split..],
        state: u32::from_le_bytes([*c, *d, 0x5A, 0x3C]) | 1,
    };
    let mut reader = PduReader::new(max, &stream[..split]);

    // Ours, until the stream ends or is refused.
    let mut ours = Vec::new();
    let mut open: Option<Event> = None;
    let mut handed = 0usize;
    for _ in 0..=2 * stream.len() + 8 {
        match now(reader.next(&mut sock)) {
            Ok(Received::Fragment {
                pc,
                command,
                is_last,
                start,
                end,
                bytes,
            }) => {
                assert_eq!(start, open.is_none(), "a fragment out of its item");
                handed += bytes.len();
                assert!(handed <= stream.len(), "more value bytes than were sent");
                let item = open.get_or_insert(Event::Item {
                    pc,
                    command,
                    is_last,
                    data: Vec::new(),
                });
                if let Event::Item { data, .. } = item {
                    data.extend_from_slice(bytes);
                }
                if end {
                    ours.extend(open.take());
                }
            }
            Ok(Received::Pdu(p)) => {
                assert!(open.is_none(), "a PDU inside an item");
                ours.push(Event::Pdu(p));
            }
            Err(_) => {
                // dicom-ul's strict decoding of the same bytes: every PDU it reads before its
                // first refusal (or the end) is what ours handed over first, in order.
                let mut buf = stream;
                let mut theirs = Vec::new();
                while let Ok(Some(pdu)) = dicom_ul::pdu::read_pdu(&mut buf, max, true) {
                    match pdu {
                        Pdu::PData { data } => {
                            theirs.extend(data.into_iter().map(|v| Event::Item {
                                pc: v.presentation_context_id,
                                command: v.value_type == PDataValueType::Command,
                                is_last: v.is_last,
                                data: v.data,
                            }))
                        }
                        other => theirs.push(Event::Pdu(other)),
                    }
                }
                assert!(
                    ours.len() >= theirs.len() && ours[..theirs.len()] == theirs[..],
                    "our reader and dicom-ul disagree: {} events against {}",
                    ours.len(),
                    theirs.len()
                );
                return;
            }
        }
    }
    panic!("the reader went on without consuming the stream");
});
