//! A growable key/value buffer for one sequence: `[heads, capacity, head_dim]`,
//! appended in place (no re-copy of the whole cache per token), doubling when full.

use crate::error::Result;
use candle_core::Tensor;

#[derive(Debug, Default)]
pub struct KvBuffer {
    k: Option<Tensor>,
    v: Option<Tensor>,
    len: usize,
}

impl KvBuffer {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The cached keys and values as `[heads, capacity, d]` f32 slices plus the capacity
    /// (CPU f32 buffers only), for attention kernels that read them in place.
    pub fn raw_f32(&self) -> Option<(&[f32], &[f32], usize)> {
        use candle_core::{CpuStorage, Storage};
        let (k, v) = (self.k.as_ref()?, self.v.as_ref()?);
        let cap = k.dim(1).ok()?;
        let (ks, kl) = k.storage_and_layout();
        let (vs, vl) = v.storage_and_layout();
        if kl.start_offset() != 0 || vl.start_offset() != 0 {
            return None;
        }
        let kp = match &*ks {
            Storage::Cpu(CpuStorage::F32(x)) => x.as_ptr(),
            _ => return None,
        };
        let vp = match &*vs {
            Storage::Cpu(CpuStorage::F32(x)) => x.as_ptr(),
            _ => return None,
        };
        let n = k.elem_count();
        drop((ks, vs));
        // SAFETY: the buffers are owned by `self.k` / `self.v` and never reallocated
        // in place; they are only written by `append(&mut self)`, which cannot run
        // while the returned slices (borrowing `&self`) are alive.
        Some(unsafe {
            (
                std::slice::from_raw_parts(kp, n),
                std::slice::from_raw_parts(vp, n),
                cap,
            )
        })
    }

    /// Appends `k, v [heads, n, d]` and returns views of everything cached so far.
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let n = k.dim(1)?;
        let need = self.len + n;
        let cap = self.k.as_ref().map(|t| t.dim(1)).transpose()?.unwrap_or(0);
        if need > cap {
            let new_cap = need.max(cap * 2).max(16);
            let grow = |old: &Option<Tensor>, like: &Tensor| -> Result<Tensor> {
                let (h, _, d) = like.dims3()?;
                let buf = Tensor::zeros((h, new_cap, d), like.dtype(), like.device())?;
                if let Some(o) = old {
                    buf.slice_set(&o.narrow(1, 0, self.len)?.contiguous()?, 1, 0)?;
                }
                Ok(buf)
            };
            self.k = Some(grow(&self.k, k)?);
            self.v = Some(grow(&self.v, v)?);
        }
        let (kb, vb) = (self.k.as_ref().expect("k"), self.v.as_ref().expect("v"));
        kb.slice_set(&k.contiguous()?, 1, self.len)?;
        vb.slice_set(&v.contiguous()?, 1, self.len)?;
        self.len = need;
        Ok((kb.narrow(1, 0, need)?, vb.narrow(1, 0, need)?))
    }
}
