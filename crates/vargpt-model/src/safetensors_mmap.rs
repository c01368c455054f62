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
        let t = Tensor::from_raw_buffer(&all[lo..hi], dtype, &shape, &Device::Cpu)?;
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
