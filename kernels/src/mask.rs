//! [`Mask`]: the pruning state of one linear layer as a compact bitset.
//!
//! Convention: bit **1 = kept (active)**, bit **0 = pruned**. The same holds for the tensor
//! forms: [`Mask::to_tensor`] writes 1 for kept and 0 for pruned, [`Mask::from_tensor`] reads any
//! non-zero value (NaN included) as kept and exactly zero as pruned.
//!
//! Layout: row-major, each row padded to whole `u64` words (`words_per_row = ceil(cols / 64)`);
//! column `c` of row `r` is bit `c % 64` of word `r * words_per_row + c / 64`. Padding bits are
//! always 0, so word popcounts count kept weights.

use candle_core::{DType, Device, Storage, Tensor};

use crate::{KernelError, Result};

/// Keep/prune bit per weight of a `[rows, cols]` matrix (1 = kept, 0 = pruned).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Mask {
    rows: usize,
    cols: usize,
    bits: Vec<u64>,
}

impl Mask {
    /// A mask with every weight kept (sparsity 0).
    pub fn ones(rows: usize, cols: usize) -> Self {
        let wpr = cols.div_ceil(64);
        let mut row = vec![u64::MAX; wpr];
        if cols % 64 != 0 {
            row[wpr - 1] = (1u64 << (cols % 64)) - 1;
        }
        Self {
            rows,
            cols,
            bits: row.repeat(rows),
        }
    }

    /// A mask with every weight pruned (sparsity 1).
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Self {
            rows,
            cols,
            bits: vec![0; rows * cols.div_ceil(64)],
        }
    }

    /// Packs row-major booleans (`true` = kept).
    pub fn from_bools(rows: usize, cols: usize, kept: &[bool]) -> Result<Self> {
        if kept.len() != rows * cols {
            return Err(KernelError::Shape(format!(
                "{} booleans for a {rows}x{cols} mask",
                kept.len()
            )));
        }
        let mut mask = Self::zeros(rows, cols);
        let wpr = mask.words_per_row();
        if wpr > 0 {
            for (words, row) in mask.bits.chunks_mut(wpr).zip(kept.chunks(cols)) {
                for (word, chunk) in words.iter_mut().zip(row.chunks(64)) {
                    *word = chunk
                        .iter()
                        .enumerate()
                        .fold(0, |w, (i, &k)| w | (u64::from(k) << i));
                }
            }
        }
        Ok(mask)
    }

    /// Unpacks to row-major booleans (`true` = kept).
    pub fn to_bools(&self) -> Vec<bool> {
        (0..self.rows)
            .flat_map(|r| (0..self.cols).map(move |c| self.bit(r, c)))
            .collect()
    }

    /// Builds a mask from its raw words (layout in the module docs); padding bits must be 0.
    pub fn from_words(rows: usize, cols: usize, bits: Vec<u64>) -> Result<Self> {
        let ones = Self::ones(rows, cols);
        if bits.len() != ones.bits.len() {
            return Err(KernelError::Mask(format!(
                "{} words for a {rows}x{cols} mask, expected {}",
                bits.len(),
                ones.bits.len()
            )));
        }
        if bits.iter().zip(&ones.bits).any(|(b, o)| b & !o != 0) {
            return Err(KernelError::Mask("padding bits set".into()));
        }
        Ok(Self { rows, cols, bits })
    }

    /// Reads a `[rows, cols]` tensor of any dtype and device: non-zero = kept, 0 = pruned.
    pub fn from_tensor(t: &Tensor) -> Result<Self> {
        let (rows, cols) = t.dims2()?;
        let kept = t
            .ne(0f64)?
            .to_device(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<u8>()?;
        let kept: Vec<bool> = kept.into_iter().map(|k| k != 0).collect();
        Self::from_bools(rows, cols, &kept)
    }

    /// A `[rows, cols]` tensor with 1 for kept and 0 for pruned weights.
    pub fn to_tensor(&self, dtype: DType, device: &Device) -> Result<Tensor> {
        let shape = (self.rows, self.cols);
        let t = if dtype == DType::U8 {
            let v: Vec<u8> = self.to_bools().into_iter().map(u8::from).collect();
            Tensor::from_vec(v, shape, &Device::Cpu)?
        } else {
            let v: Vec<f32> = self
                .to_bools()
                .into_iter()
                .map(|k| f32::from(u8::from(k)))
                .collect();
            Tensor::from_vec(v, shape, &Device::Cpu)?.to_dtype(dtype)?
        };
        Ok(t.to_device(device)?)
    }

    /// `w` with every pruned weight set to exactly 0 (even if it was inf or NaN).
    pub fn apply(&self, w: &Tensor) -> Result<Tensor> {
        self.check_shape(w.dims2()?, "weight")?;
        let keep = self.to_tensor(DType::U8, w.device())?;
        Ok(keep.where_cond(w, &w.zeros_like()?)?)
    }

    /// `w` with every pruned weight set to exactly 0: the same values as [`Mask::apply`].
    /// For a contiguous-or-not f32 CPU weight it is one pass over the words with no
    /// intermediate u8 tensor (`apply` unpacks the bits to booleans, then to a u8 tensor,
    /// then selects): lazily masked model overlays call it once per layer per forward, so
    /// its cost is paid by every candidate evaluation. Any other dtype or device goes
    /// through [`Mask::apply`].
    pub fn apply_fast(&self, w: &Tensor) -> Result<Tensor> {
        self.check_shape(w.dims2()?, "weight")?;
        if w.dtype() != DType::F32 || !matches!(w.device(), Device::Cpu) || self.is_empty() {
            return self.apply(w);
        }
        let w = w.contiguous()?;
        let (storage, layout) = w.storage_and_layout();
        let (Storage::Cpu(cpu), Some((start, end))) = (&*storage, layout.contiguous_offsets())
        else {
            return Err(KernelError::Shape(
                "contiguous CPU weight expected after contiguous()".into(),
            ));
        };
        let data = &cpu.as_slice::<f32>()?[start..end];
        let mut out = Vec::with_capacity(data.len());
        for (row, words) in data
            .chunks(self.cols)
            .zip(self.bits.chunks(self.words_per_row()))
        {
            for (chunk, &word) in row.chunks(64).zip(words) {
                out.extend(
                    chunk
                        .iter()
                        .enumerate()
                        .map(|(i, &v)| if word >> i & 1 == 1 { v } else { 0.0 }),
                );
            }
        }
        Ok(Tensor::from_vec(out, (self.rows, self.cols), &Device::Cpu)?)
    }

    /// Weights kept here but pruned in `other`: 0 exactly when every weight this mask keeps
    /// is also kept by `other` (`self ⊆ other`), i.e. when replacing `other` by `self` is a
    /// monotone update that re-enables no pruned weight. Errors when the shapes differ.
    pub fn count_kept_outside(&self, other: &Mask) -> Result<usize> {
        other.check_shape((self.rows, self.cols), "mask")?;
        Ok(self
            .bits
            .iter()
            .zip(&other.bits)
            .map(|(a, b)| (a & !b).count_ones() as usize)
            .sum())
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Number of weights, `rows * cols`.
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `u64` words per row, `ceil(cols / 64)`.
    pub fn words_per_row(&self) -> usize {
        self.cols.div_ceil(64)
    }

    /// The raw words (layout in the module docs).
    pub fn words(&self) -> &[u64] {
        &self.bits
    }

    pub(crate) fn words_mut(&mut self) -> &mut [u64] {
        &mut self.bits
    }

    /// Whether weight `(r, c)` is kept; `None` when out of range.
    pub fn get(&self, r: usize, c: usize) -> Option<bool> {
        (r < self.rows && c < self.cols).then(|| self.bit(r, c))
    }

    fn bit(&self, r: usize, c: usize) -> bool {
        self.bits[r * self.words_per_row() + c / 64] >> (c % 64) & 1 == 1
    }

    /// Marks weight `(r, c)` pruned. Panics when out of range, like slice indexing.
    pub(crate) fn prune(&mut self, r: usize, c: usize) {
        let wpr = self.words_per_row();
        self.bits[r * wpr + c / 64] &= !(1u64 << (c % 64));
    }

    pub fn count_kept(&self) -> usize {
        self.bits.iter().map(|w| w.count_ones() as usize).sum()
    }

    pub fn count_pruned(&self) -> usize {
        self.len() - self.count_kept()
    }

    /// Pruned per row.
    pub fn pruned_per_row(&self) -> Vec<usize> {
        let wpr = self.words_per_row();
        if wpr == 0 {
            return vec![0; self.rows];
        }
        self.bits
            .chunks(wpr)
            .map(|row| self.cols - count_ones(row))
            .collect()
    }

    /// Fraction of weights pruned, in [0, 1] (0 for an empty mask).
    pub fn sparsity(&self) -> f64 {
        if self.is_empty() {
            0.0
        } else {
            self.count_pruned() as f64 / self.len() as f64
        }
    }

    /// Errors unless this mask is `[rows, cols]`; `what` names the other argument.
    pub(crate) fn check_shape(&self, (rows, cols): (usize, usize), what: &str) -> Result<()> {
        if (rows, cols) != (self.rows, self.cols) {
            return Err(KernelError::Shape(format!(
                "{what} is {rows}x{cols}, mask is {}x{}",
                self.rows, self.cols
            )));
        }
        Ok(())
    }
}

/// Kept weights in a slice of mask words.
pub(crate) fn count_ones(words: &[u64]) -> usize {
    words.iter().map(|w| w.count_ones() as usize).sum()
}
