//! Reading the PDUs of an established association straight from its socket (issue 13): the value
//! of each P-DATA item is handed over in place, as slices of one buffer reused for the life of the
//! association (no allocation and no copy per PDU: the bytes go from the socket's read into the
//! spool file's write); any other PDU (release, abort, an unexpected one) is read whole and decoded
//! by dicom-ul. The same checks as dicom-ul's strict reader: a PDU longer than our maximum PDU
//! length, an item shorter than its header or longer than its PDU end the association.

use dicom_ul::Pdu;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Bytes read from the socket at most per `read` (the buffer's size).
pub const READ_BUFFER: usize = 256 * 1024;

/// Why no more PDUs can be read from the association.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("cannot read: {0}")]
    Io(#[source] std::io::Error),
    #[error("connection closed")]
    Closed,
    #[error("PDU of {length} bytes exceeds the maximum PDU length {max}")]
    PduTooLarge { length: u32, max: u32 },
    #[error("malformed P-DATA-TF: {0}")]
    BadItem(&'static str),
    #[error("malformed PDU: {0}")]
    Decode(#[source] dicom_ul::pdu::ReadError),
}

/// One step of what the peer sent.
#[derive(Debug)]
pub enum Received<'a> {
    /// Part of the value of one presentation data value item. `start`: the first part of the
    /// item (its header was just read); `end`: the last part of the item (an item of an empty
    /// value is one part, both). `bytes` borrows the reader's buffer until the next call.
    Fragment {
        pc: u8,
        command: bool,
        is_last: bool,
        start: bool,
        end: bool,
        bytes: &'a [u8],
    },
    /// A PDU other than P-DATA-TF.
    Pdu(Pdu),
}

#[derive(Debug, Clone, Copy)]
struct Item {
    pc: u8,
    command: bool,
    is_last: bool,
}

/// The reading side of one association (see the module documentation).
pub struct PduReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    max_pdu: u32,
    /// Bytes of the current P-DATA-TF not consumed yet (item headers and values).
    pdu_left: usize,
    /// Bytes of the current item's value not handed over yet.
    item_left: usize,
    item: Option<Item>,
    /// The current item's first part is still to be handed over.
    item_start: bool,
}

impl PduReader {
    /// A reader of PDUs up to `max_pdu` bytes (after their 6-byte header), starting with the
    /// bytes the association had already read past its negotiation.
    pub fn new(max_pdu: u32, leftover: &[u8]) -> Self {
        let mut buf = vec![0u8; READ_BUFFER.max(leftover.len())];
        buf[..leftover.len()].copy_from_slice(leftover);
        PduReader {
            buf,
            start: 0,
            end: leftover.len(),
            max_pdu,
            pdu_left: 0,
            item_left: 0,
            item: None,
            item_start: false,
        }
    }

    /// Makes at least `need` (at most 6) contiguous bytes available.
    async fn fill<S: AsyncRead + Unpin>(
        &mut self,
        sock: &mut S,
        need: usize,
    ) -> Result<(), WireError> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.start + need > self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        while self.end - self.start < need {
            let n = sock
                .read(&mut self.buf[self.end..])
                .await
                .map_err(WireError::Io)?;
            if n == 0 {
                return Err(WireError::Closed);
            }
            self.end += n;
        }
        Ok(())
    }

    /// The next part of what the peer sent. Cancelling the future loses nothing that was read
    /// (only a PDU other than P-DATA-TF read in part, after which the caller aborts anyway).
    pub async fn next<S: AsyncRead + Unpin>(
        &mut self,
        sock: &mut S,
    ) -> Result<Received<'_>, WireError> {
        loop {
            if let Some(item) = self.item {
                if self.item_left > 0 {
                    self.fill(sock, 1).await?;
                }
                let n = self.item_left.min(self.end - self.start);
                let at = self.start;
                self.start += n;
                self.item_left -= n;
                let start = std::mem::take(&mut self.item_start);
                let end = self.item_left == 0;
                if end {
                    self.item = None;
                }
                return Ok(Received::Fragment {
                    pc: item.pc,
                    command: item.command,
                    is_last: item.is_last,
                    start,
                    end,
                    bytes: &self.buf[at..at + n],
                });
            }
            if self.pdu_left > 0 {
                if self.pdu_left < 6 {
                    return Err(WireError::BadItem("item header past the end of its PDU"));
                }
                self.fill(sock, 6).await?;
                let h = &self.buf[self.start..self.start + 6];
                let length = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
                if length < 2 {
                    return Err(WireError::BadItem("item shorter than its header"));
                }
                if length > self.pdu_left - 4 {
                    return Err(WireError::BadItem("item longer than its PDU"));
                }
                self.item = Some(Item {
                    pc: h[4],
                    command: h[5] & 0x01 != 0,
                    is_last: h[5] & 0x02 != 0,
                });
                self.start += 6;
                self.pdu_left -= 4 + length;
                self.item_left = length - 2;
                self.item_start = true;
                continue;
            }
            self.fill(sock, 6).await?;
            let h = &self.buf[self.start..self.start + 6];
            let kind = h[0];
            let length = u32::from_be_bytes([h[2], h[3], h[4], h[5]]);
            if length > self.max_pdu {
                return Err(WireError::PduTooLarge {
                    length,
                    max: self.max_pdu,
                });
            }
            if kind == 0x04 {
                self.start += 6;
                self.pdu_left = length as usize;
                continue;
            }
            // Any other PDU: read whole (under our maximum length) and decoded by dicom-ul.
            let total = 6 + length as usize;
            let mut whole = Vec::with_capacity(total);
            let have = (self.end - self.start).min(total);
            whole.extend_from_slice(&self.buf[self.start..self.start + have]);
            self.start += have;
            if whole.len() < total {
                whole.resize(total, 0);
                let at = have;
                read_exact(sock, &mut whole[at..]).await?;
            }
            return match dicom_ul::pdu::read_pdu(&whole[..], self.max_pdu, true) {
                Ok(Some(pdu)) => Ok(Received::Pdu(pdu)),
                Ok(None) => Err(WireError::BadItem("truncated PDU")),
                Err(e) => Err(WireError::Decode(e)),
            };
        }
    }
}

async fn read_exact<S: AsyncRead + Unpin>(
    sock: &mut S,
    mut out: &mut [u8],
) -> Result<(), WireError> {
    while !out.is_empty() {
        let n = sock.read(out).await.map_err(WireError::Io)?;
        if n == 0 {
            return Err(WireError::Closed);
        }
        out = &mut out[n..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_ul::pdu::{PDataValue, PDataValueType};

    fn pdata(values: Vec<(u8, bool, bool, Vec<u8>)>) -> Vec<u8> {
        let pdu = Pdu::PData {
            data: values
                .into_iter()
                .map(|(pc, command, is_last, data)| PDataValue {
                    presentation_context_id: pc,
                    value_type: if command {
                        PDataValueType::Command
                    } else {
                        PDataValueType::Data
                    },
                    is_last,
                    data,
                })
                .collect(),
        };
        let mut out = Vec::new();
        dicom_ul::pdu::write_pdu(&mut out, &pdu).unwrap();
        out
    }

    /// Everything the reader hands over until the stream ends: (pc, command, is_last, value).
    async fn read_all(
        max: u32,
        leftover: &[u8],
        mut wire: &[u8],
    ) -> (Vec<(u8, bool, bool, Vec<u8>)>, Vec<Pdu>, WireError) {
        let mut r = PduReader::new(max, leftover);
        let mut items = Vec::new();
        let mut pdus = Vec::new();
        let mut cur: Option<(u8, bool, bool, Vec<u8>)> = None;
        loop {
            match r.next(&mut wire).await {
                Ok(Received::Fragment {
                    pc,
                    command,
                    is_last,
                    start,
                    end,
                    bytes,
                }) => {
                    assert_eq!(start, cur.is_none());
                    let c = cur.get_or_insert((pc, command, is_last, Vec::new()));
                    c.3.extend_from_slice(bytes);
                    if end {
                        items.push(cur.take().unwrap());
                    }
                }
                Ok(Received::Pdu(p)) => pdus.push(p),
                Err(e) => return (items, pdus, e),
            }
        }
    }

    #[tokio::test]
    async fn items_are_handed_over_in_order_across_reads() {
        let big: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        let mut wire = pdata(vec![(1, true, true, vec![7; 90])]);
        wire.extend(pdata(vec![
            (1, false, false, big[..60_000].to_vec()),
            (1, false, false, vec![]),
        ]));
        wire.extend(pdata(vec![(1, false, true, big[60_000..].to_vec())]));
        let mut release = Vec::new();
        dicom_ul::pdu::write_pdu(&mut release, &Pdu::ReleaseRQ).unwrap();
        wire.extend(&release);
        // The first 10 bytes were read during the negotiation.
        let (items, pdus, end) = read_all(1 << 20, &wire[..10], &wire[10..]).await;
        assert!(matches!(end, WireError::Closed), "{end:?}");
        assert_eq!(items.len(), 4);
        assert_eq!(items[0], (1, true, true, vec![7; 90]));
        assert_eq!(items[1].3, big[..60_000]);
        assert!(items[2].3.is_empty());
        assert_eq!(items[3], (1, false, true, big[60_000..].to_vec()));
        assert!(matches!(pdus[..], [Pdu::ReleaseRQ]));
    }

    #[tokio::test]
    async fn hostile_lengths_end_the_association() {
        // A PDU declaring more than our maximum: refused before anything is buffered.
        let mut huge = vec![0x04, 0, 0xFF, 0xFF, 0xFF, 0xFF];
        huge.extend([0u8; 32]);
        let (items, _, e) = read_all(65_536, &[], &huge).await;
        assert!(items.is_empty());
        assert!(
            matches!(
                e,
                WireError::PduTooLarge {
                    length: u32::MAX,
                    max: 65_536
                }
            ),
            "{e:?}"
        );
        // An item longer than its PDU.
        let mut long = pdata(vec![(1, false, true, vec![1; 100])]);
        long[9] = 200;
        let (_, _, e) = read_all(65_536, &[], &long).await;
        assert!(matches!(e, WireError::BadItem(_)), "{e:?}");
        // An item shorter than its own header.
        let mut short = pdata(vec![(1, false, true, vec![1; 10])]);
        short[6..10].copy_from_slice(&1u32.to_be_bytes());
        let (_, _, e) = read_all(65_536, &[], &short).await;
        assert!(matches!(e, WireError::BadItem(_)), "{e:?}");
        // Trailing bytes in a PDU that cannot hold an item header.
        let mut tail = pdata(vec![(1, false, true, vec![1; 10])]);
        tail[5] += 3;
        tail.extend([0, 0, 0]);
        let (items, _, e) = read_all(65_536, &[], &tail).await;
        assert_eq!(items.len(), 1);
        assert!(matches!(e, WireError::BadItem(_)), "{e:?}");
        // Truncated inside an item: the connection closed.
        let cut = pdata(vec![(1, false, true, vec![1; 1000])]);
        let (_, _, e) = read_all(65_536, &[], &cut[..500]).await;
        assert!(matches!(e, WireError::Closed), "{e:?}");
        // A malformed other PDU is decoded by dicom-ul and refused.
        let (_, _, e) = read_all(65_536, &[], &[0x05, 0, 0, 0, 0, 1, 0]).await;
        assert!(matches!(e, WireError::Decode(_)), "{e:?}");
    }

    /// Mutated and truncated streams (deterministic: a xorshift generator): the reader never
    /// panics, always ends (every call consumes bytes or fails) and never hands over more value
    /// bytes than it was sent. The fuzz target `pdu_stream` (feature `wire`) does the same on
    /// arbitrary streams, against dicom-ul's decoder.
    #[tokio::test]
    async fn mutated_and_truncated_streams_end_cleanly() {
        let mut base = pdata(vec![(1, true, true, vec![3; 40])]);
        base.extend(pdata(vec![
            (1, false, false, vec![5; 700]),
            (3, false, true, vec![]),
        ]));
        let mut release = Vec::new();
        dicom_ul::pdu::write_pdu(&mut release, &Pdu::ReleaseRQ).unwrap();
        base.extend(&release);
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut rand = move |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        };
        for _ in 0..3000 {
            let mut wire = base.clone();
            for _ in 0..1 + rand(6) {
                let at = rand(wire.len());
                wire[at] = match rand(4) {
                    0 => 0,
                    1 => 0xFF,
                    _ => rand(256) as u8,
                };
            }
            wire.truncate(1 + rand(wire.len()));
            let split = rand(wire.len().min(12));
            let max = [16_384u32, 65_536, 1 << 20][rand(3)];
            let (items, _, _) = read_all(max, &wire[..split], &wire[split..]).await;
            let handed: usize = items.iter().map(|i| i.3.len()).sum();
            assert!(handed <= wire.len());
        }
    }
}
