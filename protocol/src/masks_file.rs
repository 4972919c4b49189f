//! `masks.bin`, a run's final masks in one file, and its only codec: `secateur prune`
//! and the daemon write it, export and compare read it.
//!
//! Layout: `b"SCMK"`, u32 LE layer count, then per layer u16 LE name length, the name
//! (UTF-8), u32 LE byte length and the layer's `MaskDelta` bytes from all-kept.

use crate::LayerDelta;

/// Why bytes are not a `masks.bin`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("masks file: {0}")]
pub struct MasksFileError(pub String);

/// The file's bytes for `masks` (one entry per layer, in the given order).
pub fn encode(masks: &[LayerDelta]) -> Vec<u8> {
    let mut out = b"SCMK".to_vec();
    out.extend((masks.len() as u32).to_le_bytes());
    for m in masks {
        out.extend((m.layer.len() as u16).to_le_bytes());
        out.extend(m.layer.as_bytes());
        out.extend((m.bytes.len() as u32).to_le_bytes());
        out.extend(&m.bytes);
    }
    out
}

/// The layers of a `masks.bin`, in file order. Refuses a wrong magic, truncation, a
/// layer named twice, and trailing bytes.
pub fn decode(bytes: &[u8]) -> Result<Vec<LayerDelta>, MasksFileError> {
    let bad = |r: &str| MasksFileError(r.to_string());
    let mut rest = bytes
        .strip_prefix(b"SCMK")
        .ok_or_else(|| bad("missing the SCMK magic"))?;
    let mut take = |n: usize| -> Result<&[u8], MasksFileError> {
        if rest.len() < n {
            return Err(bad("truncated"));
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Ok(head)
    };
    let count = u32::from_le_bytes(take(4)?.try_into().map_err(|_| bad("count"))?);
    let mut layers: Vec<LayerDelta> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..count {
        let n = u16::from_le_bytes(take(2)?.try_into().map_err(|_| bad("name length"))?);
        let layer = String::from_utf8(take(n as usize)?.to_vec())
            .map_err(|_| bad("layer name is not UTF-8"))?;
        let len = u32::from_le_bytes(take(4)?.try_into().map_err(|_| bad("delta length"))?);
        let bytes = take(len as usize)?.to_vec();
        if !seen.insert(layer.clone()) {
            return Err(bad(&format!("layer `{layer}` appears twice")));
        }
        layers.push(LayerDelta { layer, bytes });
    }
    if !rest.is_empty() {
        return Err(bad("trailing bytes after the last layer"));
    }
    Ok(layers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bad_input() {
        let masks = vec![
            LayerDelta {
                layer: "a.q_proj".into(),
                bytes: vec![1, 2, 3],
            },
            LayerDelta {
                layer: "b".into(),
                bytes: vec![],
            },
        ];
        let bytes = encode(&masks);
        assert_eq!(&bytes[..4], b"SCMK");
        assert_eq!(bytes.len(), 4 + 4 + (2 + 8 + 4 + 3) + (2 + 1 + 4));
        assert_eq!(decode(&bytes).unwrap(), masks);
        assert_eq!(
            decode(&bytes[..bytes.len() - 1]).unwrap_err().to_string(),
            "masks file: truncated"
        );
        assert!(decode(b"XXXX").is_err());
        let mut twice = encode(&[masks[1].clone(), masks[1].clone()]);
        assert!(decode(&twice).unwrap_err().0.contains("appears twice"));
        twice.push(0);
        assert!(decode(&twice).is_err());
    }
}
