//! Writer of the compressed sparse form; the layout is documented (and read) in
//! [`model::load::sparse`].

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Tensor};
use model::load::sparse::{
    BITMASK_SUFFIX, SHAPE_SUFFIX, SPARSE_FILE, SPARSE_FORMAT, SPARSE_VERSION, VALUES_SUFFIX,
};

use crate::hf::{safetensors_err, Raw};
use crate::{tensor_bytes, ExportDtype, ExportError, Result};

/// Packed non-zero bitmask (`[rows, ceil(cols/8)]`, LSB first) and the non-zero values
/// in row-major order of a `[rows, cols]` matrix.
pub(crate) fn compress(values: &[f32], rows: usize, cols: usize) -> (Vec<u8>, Vec<f32>) {
    let row_bytes = cols.div_ceil(8);
    let mut bits = vec![0u8; rows * row_bytes];
    let mut nonzero = Vec::new();
    for r in 0..rows {
        for c in 0..cols {
            let v = values[r * cols + c];
            if v != 0.0 {
                bits[r * row_bytes + c / 8] |= 1 << (c % 8);
                nonzero.push(v);
            }
        }
    }
    (bits, nonzero)
}

/// Write [`SPARSE_FILE`] into `dir`: the 2-D tensors named in `compressed` as
/// bitmask + values + shape, every other tensor dense. Returns the file's name.
pub(crate) fn write_sparse(
    tensors: &HashMap<String, Tensor>,
    compressed: &[String],
    dtype: ExportDtype,
    dir: &Path,
) -> Result<Vec<String>> {
    let mut out: BTreeMap<String, Raw> = BTreeMap::new();
    for (name, t) in tensors {
        if !compressed.contains(name) {
            out.insert(
                name.clone(),
                Raw {
                    dtype: dtype.safetensors(),
                    shape: t.dims().to_vec(),
                    data: tensor_bytes(name, t, dtype)?,
                },
            );
            continue;
        }
        let err = |e: candle_core::Error| ExportError::Tensor {
            name: name.clone(),
            reason: e.to_string(),
        };
        let (rows, cols) = t.dims2().map_err(err)?;
        // Round to the export dtype first: a value that underflows to zero in f16 or
        // bf16 must be counted as a zero, or the bitmask and the values would disagree.
        let rounded = match dtype {
            ExportDtype::F32 => t.clone(),
            ExportDtype::F16 => t
                .to_dtype(DType::F16)
                .and_then(|t| t.to_dtype(DType::F32))
                .map_err(err)?,
            ExportDtype::Bf16 => t
                .to_dtype(DType::BF16)
                .and_then(|t| t.to_dtype(DType::F32))
                .map_err(err)?,
        };
        let flat = rounded
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(err)?;
        let (bits, nonzero) = compress(&flat, rows, cols);
        let nnz = nonzero.len();
        let values = Tensor::from_vec(nonzero, nnz, &candle_core::Device::Cpu).map_err(err)?;
        out.insert(
            format!("{name}{VALUES_SUFFIX}"),
            Raw {
                dtype: dtype.safetensors(),
                shape: vec![nnz],
                data: tensor_bytes(name, &values, dtype)?,
            },
        );
        out.insert(
            format!("{name}{BITMASK_SUFFIX}"),
            Raw {
                dtype: safetensors::Dtype::U8,
                shape: vec![rows, cols.div_ceil(8)],
                data: bits,
            },
        );
        out.insert(
            format!("{name}{SHAPE_SUFFIX}"),
            Raw {
                dtype: safetensors::Dtype::I64,
                shape: vec![2],
                data: [rows as i64, cols as i64]
                    .iter()
                    .flat_map(|d| d.to_le_bytes())
                    .collect(),
            },
        );
    }
    let meta: HashMap<String, String> = [
        ("format".to_string(), SPARSE_FORMAT.to_string()),
        ("version".to_string(), SPARSE_VERSION.to_string()),
        ("dtype".to_string(), dtype.torch_name().to_string()),
    ]
    .into();
    let path = dir.join(SPARSE_FILE);
    safetensors::serialize_to_file(out.iter().map(|(k, v)| (k.as_str(), v)), Some(meta), &path)
        .map_err(|e| safetensors_err(&path, e))?;
    Ok(vec![SPARSE_FILE.to_string()])
}

#[cfg(test)]
mod tests {
    use super::compress;

    #[test]
    fn bits_are_row_major_lsb_first_with_zero_padding() {
        // 2 x 10: row 0 keeps columns 0, 3, 9; row 1 keeps column 8.
        let mut v = vec![0f32; 20];
        v[0] = 1.0;
        v[3] = -2.0;
        v[9] = 3.0;
        v[18] = 4.0;
        let (bits, nz) = compress(&v, 2, 10);
        assert_eq!(bits, vec![0b0000_1001, 0b0000_0010, 0, 0b0000_0001]);
        assert_eq!(nz, vec![1.0, -2.0, 3.0, 4.0]);
    }
}
