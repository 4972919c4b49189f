//! [`MaskDelta`]: the weights newly pruned between two masks of one layer, and its compact
//! checked byte form (what a checkpoint stores per committed iteration).
//!
//! Byte format, version 1 (all multi-byte integers little-endian, varints are LEB128):
//!
//! | field    | size          | meaning                                                   |
//! |----------|---------------|-----------------------------------------------------------|
//! | magic    | 4             | `b"SCMD"`                                                 |
//! | version  | 1             | `1`                                                       |
//! | encoding | 1             | `0` = gaps, `1` = bitset                                  |
//! | rows     | varint        | mask rows                                                 |
//! | cols     | varint        | mask columns                                              |
//! | count    | varint        | number of newly pruned weights                            |
//! | payload  | ...           | see below                                                 |
//! | crc32    | 4             | CRC-32 (IEEE) of every byte before it                     |
//!
//! Indices are row-major flat (`r * cols + c`). *Gaps*: `count` varints, the first index, then
//! `index[i] - index[i-1] - 1`. *Bitset*: `ceil(rows*cols / 8)` bytes, bit `i % 8` of byte
//! `i / 8` set for each index `i`, unused high bits 0. The writer picks whichever is smaller
//! (gaps on a tie): about 1 byte per index for ~5 % newly pruned weights (0.4 bit per weight,
//! 1.25 % of the f32 weights), never more than 1 bit per weight plus the header.

use crate::{KernelError, Mask, Result};

const MAGIC: &[u8; 4] = b"SCMD";
const VERSION: u8 = 1;
const ENC_GAPS: u8 = 0;
const ENC_BITSET: u8 = 1;

/// Weights pruned in `new` but kept in `old`, as sorted flat indices `r * cols + c`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaskDelta {
    rows: usize,
    cols: usize,
    indices: Vec<u64>,
}

impl MaskDelta {
    /// The newly pruned weights from `old` to `new`. Errors when the shapes differ or `new` keeps
    /// a weight that `old` pruned (masks only ever lose weights).
    pub fn between(old: &Mask, new: &Mask) -> Result<Self> {
        old.check_shape((new.rows(), new.cols()), "new mask")?;
        let (cols, wpr) = (old.cols(), old.words_per_row());
        let mut indices = Vec::new();
        for (i, (&o, &n)) in old.words().iter().zip(new.words()).enumerate() {
            if n & !o != 0 {
                return Err(KernelError::Mask(
                    "new mask keeps a weight the old one pruned".into(),
                ));
            }
            let mut newly = o & !n;
            while newly != 0 {
                let c = (i % wpr) * 64 + newly.trailing_zeros() as usize;
                indices.push(((i / wpr) * cols + c) as u64);
                newly &= newly - 1;
            }
        }
        Ok(Self {
            rows: old.rows(),
            cols,
            indices,
        })
    }

    /// Prunes the delta's weights in `mask` (already pruned ones stay pruned).
    pub fn apply_to(&self, mask: &mut Mask) -> Result<()> {
        mask.check_shape((self.rows, self.cols), "delta")?;
        for &i in &self.indices {
            let i = i as usize;
            mask.prune(i / self.cols, i % self.cols);
        }
        Ok(())
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Sorted flat indices `r * cols + c` of the newly pruned weights.
    pub fn indices(&self) -> &[u64] {
        &self.indices
    }

    pub fn len(&self) -> usize {
        self.indices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// The versioned, checksummed byte form (format in the module docs).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut gaps = Vec::new();
        let mut next = 0u64;
        for &i in &self.indices {
            put_varint(&mut gaps, i - next);
            next = i + 1;
        }
        let n = self.rows as u64 * self.cols as u64;
        let (encoding, payload) = if gaps.len() as u64 <= n.div_ceil(8) {
            (ENC_GAPS, gaps)
        } else {
            let mut bytes = vec![0u8; n.div_ceil(8) as usize];
            for &i in &self.indices {
                bytes[(i / 8) as usize] |= 1 << (i % 8);
            }
            (ENC_BITSET, bytes)
        };
        let mut out = MAGIC.to_vec();
        out.extend([VERSION, encoding]);
        for v in [
            self.rows as u64,
            self.cols as u64,
            self.indices.len() as u64,
        ] {
            put_varint(&mut out, v);
        }
        out.extend(payload);
        out.extend(crc32(&out).to_le_bytes());
        out
    }

    /// Reads [`MaskDelta::to_bytes`]' output; any corruption or truncation is an error.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let corrupt = |why: &str| KernelError::CorruptDelta(why.to_string());
        if bytes.len() < MAGIC.len() + 2 + 4 || &bytes[..4] != MAGIC {
            return Err(corrupt("bad magic or too short"));
        }
        if bytes[4] != VERSION {
            return Err(corrupt(&format!("unsupported version {}", bytes[4])));
        }
        let (body, sum) = bytes.split_at(bytes.len() - 4);
        if crc32(body).to_le_bytes() != sum {
            return Err(corrupt("checksum mismatch"));
        }
        let encoding = body[5];
        let mut r = Reader { bytes: &body[6..] };
        let (rows, cols, count) = (r.varint()?, r.varint()?, r.varint()?);
        let n = rows
            .checked_mul(cols)
            .filter(|&n| usize::try_from(n).is_ok());
        let n = n.ok_or_else(|| corrupt("shape too large"))?;
        if count > n {
            return Err(corrupt("more indices than weights"));
        }
        // Every index takes at least one gap byte or bitset bit: bounds the allocation.
        let mut indices = Vec::with_capacity(count.min(8 * r.bytes.len() as u64) as usize);
        match encoding {
            ENC_GAPS => {
                let mut next = 0u64;
                for _ in 0..count {
                    let i = next.checked_add(r.varint()?).filter(|&i| i < n);
                    let i = i.ok_or_else(|| corrupt("index out of range"))?;
                    indices.push(i);
                    next = i + 1;
                }
                if !r.bytes.is_empty() {
                    return Err(corrupt("trailing bytes"));
                }
            }
            ENC_BITSET => {
                if r.bytes.len() as u64 != n.div_ceil(8) {
                    return Err(corrupt("bitset length"));
                }
                for (b, &byte) in r.bytes.iter().enumerate() {
                    let mut byte = byte;
                    while byte != 0 {
                        indices.push(b as u64 * 8 + u64::from(byte.trailing_zeros()));
                        byte &= byte - 1;
                    }
                }
                if indices.len() as u64 != count || indices.last().is_some_and(|&i| i >= n) {
                    return Err(corrupt("bitset count or padding"));
                }
            }
            e => return Err(corrupt(&format!("unknown encoding {e}"))),
        }
        Ok(Self {
            rows: rows as usize,
            cols: cols as usize,
            indices,
        })
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl Reader<'_> {
    fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for (i, &b) in self.bytes.iter().enumerate().take(10) {
            let bits = u64::from(b & 0x7f);
            if i == 9 && b > 1 {
                break; // would overflow u64
            }
            v |= bits << (7 * i);
            if b & 0x80 == 0 {
                self.bytes = &self.bytes[i + 1..];
                return Ok(v);
            }
        }
        Err(KernelError::CorruptDelta(
            "truncated or overlong varint".into(),
        ))
    }
}

/// CRC-32 (IEEE 802.3, reflected, as zlib's `crc32`).
fn crc32(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 == 1 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    !bytes.iter().fold(!0u32, |c, &b| {
        TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_zlib() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn varint_round_trip_and_limits() {
        for v in [0, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            let mut r = Reader { bytes: &b };
            assert_eq!(r.varint().unwrap(), v);
            assert!(r.bytes.is_empty());
            let mut r = Reader {
                bytes: &b[..b.len() - 1],
            };
            assert!(r.varint().is_err(), "truncated {v}");
        }
        let overflow = [0xff; 9].into_iter().chain([0x02]).collect::<Vec<u8>>();
        assert!(Reader { bytes: &overflow }.varint().is_err());
    }
}
