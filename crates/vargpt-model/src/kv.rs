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
