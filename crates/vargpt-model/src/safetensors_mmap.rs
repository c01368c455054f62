//! The memory-mapped safetensors files of a checkpoint (the reader under
//! [`crate::weights::Weights`], which checks names and shapes against the manifest).
//!
//! Tensors are copied out of the mapping one at a time and the pages they came
//! from are handed back to the kernel right away (`MADV_DONTNEED` on a read-only
//! file mapping only drops clean page-cache references), so loading never holds
//! the file mapping and the materialised weights at once: peak RSS stays close to
//! the weight bytes.

use crate::error::{ModelError, Result};
use candle_core::{DType, Device, Tensor};
use memmap2::{Mmap, UncheckedAdvice};
use rayon::prelude::*;
use safetensors::tensor::{Metadata, TensorInfo};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

struct File {
    path: PathBuf,
    mmap: Mmap,
    /// Offset of the data section (after the 8-byte length and the JSON header).
    data_start: usize,
}

/// Where a tensor lives.
#[derive(Debug, Clone)]
pub struct Entry {
    file: usize,
    pub dtype: safetensors::Dtype,
    pub shape: Vec<usize>,
    start: usize,
    end: usize,
}

impl Entry {
    pub fn len_bytes(&self) -> usize {
        self.end - self.start
    }
}

/// The tensors of one or more mapped safetensors files, by name.
pub struct MappedSafetensors {
    files: Vec<File>,
    entries: HashMap<String, Entry>,
}

pub fn candle_dtype(d: safetensors::Dtype) -> Option<DType> {
    Some(match d {
        safetensors::Dtype::F32 => DType::F32,
        safetensors::Dtype::F16 => DType::F16,
        safetensors::Dtype::BF16 => DType::BF16,
        safetensors::Dtype::I64 => DType::I64,
        safetensors::Dtype::U32 => DType::U32,
        safetensors::Dtype::U8 => DType::U8,
        _ => return None,
    })
}

impl MappedSafetensors {
    /// Maps every file and reads its header. A name in several files: the last wins.
    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::new();
        let mut entries = HashMap::new();
        for (fi, path) in paths.iter().enumerate() {
            let bad = |m: String| ModelError::Checkpoint(format!("{}: {m}", path.display()));
            let f = std::fs::File::open(path).map_err(|source| ModelError::Io {
                path: path.clone(),
                source,
            })?;
            // SAFETY: read-only mapping of a checkpoint nobody truncates while we run.
            let mmap = unsafe { Mmap::map(&f) }.map_err(|e| bad(e.to_string()))?;
            let (header, meta): (usize, Metadata) =
                safetensors::SafeTensors::read_metadata(&mmap).map_err(|e| bad(e.to_string()))?;
            let data_start = 8 + header;
            for (name, info) in meta.tensors() {
                let TensorInfo {
                    dtype,
                    shape,
                    data_offsets,
                } = info.clone();
                if data_start + data_offsets.1 > mmap.len() {
                    return Err(bad(format!(
                        "tensor {name} extends past the end of the file"
                    )));
                }
                entries.insert(
                    name,
                    Entry {
                        file: fi,
                        dtype,
                        shape,
                        start: data_offsets.0,
                        end: data_offsets.1,
                    },
                );
            }
            files.push(File {
                path: path.clone(),
                mmap,
                data_start,
            });
        }
        Ok(Self { files, entries })
    }

    pub fn entries(&self) -> impl Iterator<Item = (&String, &Entry)> {
        self.entries.iter()
    }

    pub fn entry(&self, name: &str) -> Result<&Entry> {
        self.entries
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor { name: name.into() })
    }

    fn bytes(&self, e: &Entry) -> &[u8] {
        let f = &self.files[e.file];
        &f.mmap[f.data_start + e.start..f.data_start + e.end]
    }

    /// Copies `name` (optionally rows `[r0, r0+n)` of dim 0) into a CPU tensor and
    /// releases the mapped pages it was read from.
    pub fn load(&self, name: &str, rows: Option<(usize, usize)>) -> Result<Tensor> {
        let e = self.entry(name)?;
        let dtype = candle_dtype(e.dtype).ok_or_else(|| ModelError::BadDtype {
            name: name.into(),
            dtype: format!("{:?}", e.dtype),
        })?;
        let all = self.bytes(e);
        let mut shape = e.shape.clone();
        let (lo, hi) = match rows {
            Some((r0, n)) if !shape.is_empty() => {
                let row = all.len() / shape[0].max(1);
                shape[0] = n;
                (r0 * row, (r0 + n) * row)
            }
            _ => (0, all.len()),
        };
        let t = tensor_from_le_bytes(&all[lo..hi], dtype, &shape)?;
        let f = &self.files[e.file];
        // SAFETY: DONTNEED on a private read-only file mapping only drops clean pages;
        // later reads fault them back in from the file. No reference into them is kept.
        unsafe {
            let _ = f.mmap.unchecked_advise_range(
                UncheckedAdvice::DontNeed,
                f.data_start + e.start + lo,
                hi - lo,
            );
        }
        Ok(t)
    }

    pub fn path_of(&self, name: &str) -> Option<&Path> {
        self.entries
            .get(name)
            .map(|e| self.files[e.file].path.as_path())
    }
}

/// Tensors at least this large are copied by all threads at once.
const PAR_COPY_MIN_BYTES: usize = 8 << 20;
/// Bytes per parallel piece: whole 2 MiB huge pages, so two threads rarely
/// fault the same page.
const PAR_COPY_CHUNK: usize = 4 << 20;

/// A CPU tensor of `shape` holding `bytes` (little-endian elements of `dtype`,
/// as on every target we build for). Most of a load is the kernel zeroing the
/// fresh pages of the destination and the copy itself, both single-threaded in
/// candle's `from_raw_buffer`: large tensors are copied in parallel pieces, each
/// thread faulting in its own pages. The bytes are the same either way.
fn tensor_from_le_bytes(bytes: &[u8], dtype: DType, shape: &[usize]) -> Result<Tensor> {
    match dtype {
        DType::F32 => typed::<f32>(bytes, shape),
        DType::F16 => typed::<half::f16>(bytes, shape),
        DType::BF16 => typed::<half::bf16>(bytes, shape),
        _ => Ok(Tensor::from_raw_buffer(bytes, dtype, shape, &Device::Cpu)?),
    }
}

/// [`tensor_from_le_bytes`] for an element type whose every bit pattern is a
/// valid value (f32, f16, bf16).
fn typed<T: candle_core::WithDType>(bytes: &[u8], shape: &[usize]) -> Result<Tensor> {
    let size = std::mem::size_of::<T>();
    let n: usize = shape.iter().product();
    if n.checked_mul(size) != Some(bytes.len()) {
        return Err(ModelError::Checkpoint(format!(
            "{} bytes do not hold a {shape:?} tensor of {:?}",
            bytes.len(),
            T::DTYPE
        )));
    }
    if bytes.len() < PAR_COPY_MIN_BYTES {
        return Ok(Tensor::from_raw_buffer(
            bytes,
            T::DTYPE,
            shape,
            &Device::Cpu,
        )?);
    }
    let mut v: Vec<T> = Vec::with_capacity(n);
    let dst = v.as_mut_ptr() as usize;
    bytes
        .par_chunks(PAR_COPY_CHUNK)
        .enumerate()
        .for_each(|(i, src)| {
            // SAFETY: piece i goes to bytes [i·CHUNK, i·CHUNK + len) of the
            // capacity of `v` (n·size = bytes.len() bytes): in bounds, disjoint
            // between pieces, and not overlapping the mapped source.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    src.as_ptr(),
                    (dst as *mut u8).add(i * PAR_COPY_CHUNK),
                    src.len(),
                )
            }
        });
    // SAFETY: all n·size bytes were written above, and every bit pattern is a
    // valid T (f32, f16, bf16).
    unsafe { v.set_len(n) };
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_copy_has_candles_bytes() {
        // Large enough for the parallel path, and not a whole number of pieces.
        let n = (PAR_COPY_MIN_BYTES + 3 * PAR_COPY_CHUNK / 2) / 24 * 6;
        let bytes: Vec<u8> = (0..4 * n).map(|i| (i * 7 + i / 251) as u8).collect();
        for (dtype, shape) in [
            (DType::F32, vec![n / 3, 3]),
            (DType::F16, vec![2 * n]),
            (DType::BF16, vec![2, n]),
        ] {
            let want = Tensor::from_raw_buffer(&bytes, dtype, &shape, &Device::Cpu).unwrap();
            let got = tensor_from_le_bytes(&bytes[..], dtype, &shape).unwrap();
            assert_eq!(got.dims(), want.dims());
            let raw = |t: &Tensor| -> Vec<u8> {
                match dtype {
                    DType::F32 => t
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap()
                        .iter()
                        .flat_map(|v| v.to_le_bytes())
                        .collect(),
                    DType::F16 => t
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<half::f16>()
                        .unwrap()
                        .iter()
                        .flat_map(|v| v.to_le_bytes())
                        .collect(),
                    _ => t
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<half::bf16>()
                        .unwrap()
                        .iter()
                        .flat_map(|v| v.to_le_bytes())
                        .collect(),
                }
            };
            assert!(raw(&got) == raw(&want), "{dtype:?}");
        }
    }

    #[test]
    fn wrong_byte_count_is_an_error() {
        let bytes = vec![0u8; PAR_COPY_MIN_BYTES + 4];
        assert!(tensor_from_le_bytes(&bytes, DType::F32, &[10, 10]).is_err());
    }
}
