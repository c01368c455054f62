//! The VAR transformer head (`VAR_VAE_v1`): AdaLN blocks with L2-normalised
//! attention and their own KV cache across stages, `head_nm`, `head`, and the
//! embeddings that build each stage's input tokens.

use crate::config::VarConfig;
use crate::error::{ModelError, Result};
use crate::kv::KvBuffer;
use crate::nn::{gelu_tanh, silu, softmax_last, LayerNorm, Linear, RowParallel};
use crate::tp::{on_all_ranks, Communicator, RankMember, Shard};
use crate::weights::Vb;
use candle_core::{DType, Device, IndexOp, Tensor, D};
use std::sync::Arc;

/// `exp(min(s, ln 100))`: the per-head multiplier's cap.
const MAX_SCALE_MUL: f64 = 4.605_170_249_938_965;

/// Keys/values of every block for one sequence (one CFG branch of one image), per
/// tensor-parallel rank; the keys are stored L2-normalised.
#[derive(Debug, Default)]
pub struct VarCache {
    ranks: Vec<Vec<KvBuffer>>,
}

impl VarCache {
    pub fn len(&self) -> usize {
        self.ranks
            .first()
            .and_then(|r| r.first())
            .map(|b| b.len())
            .unwrap_or(0)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One rank's view of a sequence in a ragged step: its block caches and new length.
type RankSegment<'c> = (&'c mut Vec<KvBuffer>, usize);

/// The blocks as held by one tensor-parallel rank.
struct RankBlocks {
    blocks: Vec<Block>,
    device: Device,
    comm: Option<Arc<dyn Communicator>>,
}

impl RankMember for RankBlocks {
    fn comm(&self) -> Option<&Arc<dyn Communicator>> {
        self.comm.as_ref()
    }
}

struct Block {
    ada_lin: Linear,
    /// This rank's heads of the fused q/k/v projection (bias: q_bias, 0, v_bias).
    qkv: Linear,
    scale_mul: Tensor,
    proj: RowParallel,
    fc1: Linear,
    fc2: RowParallel,
    /// Heads held by this rank.
    heads: usize,
}

pub struct Var {
    pub word_embed: Linear,
    class_emb: Tensor,
    pos_start: Tensor,
    lvl_pos: Tensor,
    ranks: Vec<RankBlocks>,
    head_nm_ada: Linear,
    head: Linear,
    ln: LayerNorm,
    cfg: VarConfig,
}

impl Var {
    /// Loads the VAR head; blocks are sharded over `shards` (heads, FFN units) as
    /// evenly as whole heads allow — VAR-d30's 30 heads over 4 ranks are 8, 7, 8, 7
    /// ([`Shard::range`]) —, the embeddings, AdaLN projections and the head are
    /// replicated.
    pub fn load(vb: &Vb, cfg: &VarConfig, shards: &[Shard]) -> Result<Self> {
        let c = cfg.width();
        let world = shards.len();
        let mut ranks = Vec::with_capacity(world);
        for shard in shards {
            let root = Vb::root_on(vb.weights(), shard.device.clone()).pp(vb.name("blocks"));
            let (h0, hn) = shard.range(cfg.heads());
            let d = c / cfg.heads();
            let mut blocks = Vec::with_capacity(cfg.depth);
            for i in 0..cfg.depth {
                let b = root.pp(i);
                let a = b.pp("attn");
                let (q0, qn) = (h0 * d, hn * d);
                let qkv_w = Linear::load_rows(
                    &a.pp("mat_qkv"),
                    false,
                    &[(q0, qn), (c + q0, qn), (2 * c + q0, qn)],
                )?;
                let q_bias = a.get_narrow("q_bias", 0, q0, qn)?;
                let v_bias = a.get_narrow("v_bias", 0, q0, qn)?;
                let qkv_bias = Tensor::cat(&[&q_bias, &q_bias.zeros_like()?, &v_bias], 0)?;
                let scale_mul = a
                    .get_f32("scale_mul_1H11")?
                    .clamp(f64::NEG_INFINITY, MAX_SCALE_MUL)?
                    .exp()?
                    .reshape((cfg.heads(), 1, 1))?
                    .narrow(0, h0, hn)?
                    .to_dtype(vb.dtype())?;
                blocks.push(Block {
                    ada_lin: Linear::load(&b.pp("ada_lin.1"), true)?,
                    qkv: Linear::new(qkv_w.weight().clone(), Some(qkv_bias)),
                    scale_mul,
                    proj: RowParallel::load_cols(&a.pp("proj"), true, shard, q0, qn)?,
                    fc1: Linear::load_column(&b.pp("ffn.fc1"), true, shard)?,
                    fc2: RowParallel::load(&b.pp("ffn.fc2"), true, shard)?,
                    heads: hn,
                });
            }
            ranks.push(RankBlocks {
                blocks,
                device: shard.device.clone(),
                comm: shard.comm.clone(),
            });
        }
        // lvl_pos[j] = lvl_embed[stage(j)] + pos_1LC[j]; lvl_1L is recomputed from patch_nums.
        let lvl: Vec<u32> = cfg.token_stages().into_iter().map(|k| k as u32).collect();
        let lvl = Tensor::new(lvl, vb.device())?;
        let lvl_embed = vb.get("lvl_embed.weight")?;
        let lvl_pos = (lvl_embed.index_select(&lvl, 0)? + vb.get("pos_1LC")?.i(0)?)?;
        Ok(Self {
            word_embed: Linear::load(&vb.pp("word_embed"), true)?,
            class_emb: vb.get("class_emb.weight")?,
            pos_start: vb.get("pos_start")?,
            lvl_pos,
            ranks,
            head_nm_ada: Linear::load(&vb.pp("head_nm.ada_lin.1"), true)?,
            head: Linear::load(&vb.pp("head"), true)?,
            ln: LayerNorm::plain(1e-6),
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &VarConfig {
        &self.cfg
    }

    pub fn new_cache(&self) -> VarCache {
        let depth = self.ranks[0].blocks.len();
        VarCache {
            ranks: (0..self.ranks.len())
                .map(|_| (0..depth).map(|_| KvBuffer::default()).collect())
                .collect(),
        }
    }

    /// Row `idx` of `class_emb`, `[1, C]`.
    pub fn class_embedding(&self, idx: usize) -> Result<Tensor> {
        Ok(self.class_emb.narrow(0, idx, 1)?)
    }

    /// Stage-0 input `[1, PN₀², C]`: class + `pos_start` + level/position embedding.
    pub fn first_tokens(&self, cls: &Tensor) -> Result<Tensor> {
        let first_l = self.pos_start.dim(1)?;
        let lp = self.lvl_pos.narrow(0, 0, first_l)?.unsqueeze(0)?;
        Ok(cls
            .unsqueeze(1)?
            .broadcast_add(&self.pos_start)?
            .broadcast_add(&lp)?)
    }

    /// Input of stage `k` from the area-downsampled f̂ `[1, Cv, pn, pn]`: `[1, pn², C]`.
    pub fn stage_tokens(&self, k: usize, nxt: &Tensor) -> Result<Tensor> {
        let (b, cv, h, w) = nxt.dims4()?;
        let x = nxt
            .reshape((b, cv, h * w))?
            .transpose(1, 2)?
            .to_dtype(self.class_emb.dtype())?;
        let begin = self.cfg.stage_offsets()[k];
        let lp = self.lvl_pos.narrow(0, begin, h * w)?.unsqueeze(0)?;
        Ok(self.word_embed.forward(&x)?.broadcast_add(&lp)?)
    }

    /// Runs every block and the head on `x [Σlᵢ, C]` (several sequences back to back,
    /// `segments[i] = (cache, lᵢ)`) under the condition `cond [1, C]`, shared by all of
    /// them (VARGPT conditions every image on the same class row). Returns logits
    /// `[Σlᵢ, V]` in f32. Attention is per sequence, bidirectional within the new
    /// tokens, over the sequence's cached stages.
    pub fn forward_ragged(
        &self,
        x: &Tensor,
        cond: &Tensor,
        segments: &mut [(&mut VarCache, usize)],
    ) -> Result<Tensor> {
        let sc = silu(cond)?;
        let world = self.ranks.len();
        let mut per_rank: Vec<Vec<RankSegment>> = (0..world).map(|_| Vec::new()).collect();
        for (cache, l) in segments.iter_mut() {
            for (r, bufs) in cache.ranks.iter_mut().enumerate() {
                per_rank[r].push((bufs, *l));
            }
        }
        let x = on_all_ranks(&self.ranks, per_rank, |rank, mut seg| {
            rank.forward(x, &sc, &self.ln, &mut seg)
        })?;
        let x = x.to_device(self.class_emb.device())?;
        let c = x.dim(D::Minus1)?;
        let a = self.head_nm_ada.forward(&sc)?; // [1, 2C]
        let scale = a.narrow(D::Minus1, 0, c)?;
        let shift = a.narrow(D::Minus1, c, c)?;
        let h = self.ln.forward_modulated(&x, &(scale + 1.0)?, &shift)?;
        let lens: Vec<usize> = segments.iter().map(|(_, l)| *l).collect();
        Ok(self.head.forward_seqs(&h, &lens)?.to_dtype(DType::F32)?)
    }
}

impl RankBlocks {
    fn forward(
        &self,
        x: &Tensor,
        silu_cond: &Tensor,
        ln: &LayerNorm,
        segments: &mut [RankSegment],
    ) -> Result<Tensor> {
        let mut x = x.to_device(&self.device)?;
        let sc = silu_cond.to_device(&self.device)?;
        let lens: Vec<usize> = segments.iter().map(|(_, l)| *l).collect();
        for (bi, blk) in self.blocks.iter().enumerate() {
            x = blk.forward(&x, &sc, ln, bi, segments, &lens)?;
        }
        Ok(x)
    }
}

impl Block {
    fn forward(
        &self,
        x: &Tensor,
        silu_cond: &Tensor,
        ln: &LayerNorm,
        block: usize,
        segments: &mut [RankSegment],
        lens: &[usize],
    ) -> Result<Tensor> {
        let c = x.dim(D::Minus1)?;
        // Chunk order: gamma1, gamma2, scale1, scale2, shift1, shift2.
        let a = self.ada_lin.forward(silu_cond)?; // [1, 6C]
        let chunk = |i: usize| a.narrow(D::Minus1, i * c, c);
        let (g1, g2, s1, s2, b1, b2) = (
            chunk(0)?,
            chunk(1)?,
            chunk(2)?,
            chunk(3)?,
            chunk(4)?,
            chunk(5)?,
        );
        let y = ln.forward_modulated(x, &(s1 + 1.0)?, &b1)?;
        let x = gated_residual(x, &self.attention(&y, block, segments, lens)?, &g1)?;
        let y = ln.forward_modulated(&x, &(s2 + 1.0)?, &b2)?;
        let f = self.fc1.forward_seqs(&y, lens)?;
        let f = self.fc2.forward_seqs(&gelu_tanh(&f)?, lens)?;
        gated_residual(&x, &f, &g2)
    }

    fn attention(
        &self,
        y: &Tensor,
        block: usize,
        segments: &mut [RankSegment],
        lens: &[usize],
    ) -> Result<Tensor> {
        let h = self.heads;
        if h == 0 {
            // A rank without heads (fewer heads than ranks) only joins the
            // projection's all-reduce.
            let empty = Tensor::zeros((y.dim(0)?, 0), y.dtype(), y.device())?;
            return self.proj.forward_seqs(&empty, lens);
        }
        let qkv = self.qkv.forward_seqs(y, lens)?;
        let c = qkv.dim(1)? / 3; // this rank's share of the width
        let d = c / h;
        let mut outs = Vec::with_capacity(segments.len());
        let mut row = 0;
        let fused = qkv.device().is_cpu() && qkv.dtype() == DType::F32;
        for (bufs, l) in segments.iter_mut() {
            let l = *l;
            if fused {
                outs.push(self.attend_cpu(&qkv, row, l, &mut bufs[block])?);
                row += l;
                continue;
            }
            let part = qkv
                .narrow(0, row, l)?
                .reshape((l, 3, h, d))?
                .permute((1, 2, 0, 3))?; // [3, H, l, d]
            let q = l2_normalize(&part.i(0)?)?.broadcast_mul(&self.scale_mul)?;
            let k = l2_normalize(&part.i(1)?)?;
            let v = part.i(2)?.contiguous()?;
            let (k, v) = bufs[block].append(&k, &v)?;
            let p = softmax_last(&q.contiguous()?.matmul(&k.transpose(1, 2)?)?)?;
            outs.push(p.matmul(&v)?.transpose(0, 1)?.reshape((l, c))?);
            row += l;
        }
        let o = if outs.len() == 1 {
            outs.pop().expect("one")
        } else {
            Tensor::cat(&outs, 0)?
        };
        self.proj.forward_seqs(&o, lens)
    }
}

impl Block {
    /// One sequence's `l` new tokens (CPU, f32): L2-normalised q (times the per-head
    /// scale) and k, cache append, then attention over everything cached —
    /// bidirectional within the stage, as the reference (no mask).
    fn attend_cpu(&self, qkv: &Tensor, row: usize, l: usize, buf: &mut KvBuffer) -> Result<Tensor> {
        let h = self.heads;
        let c = qkv.dim(1)? / 3;
        let d = c / h;
        let part: Vec<f32> = qkv.narrow(0, row, l)?.flatten_all()?.to_vec1()?; // [l, 3, H, d]
        let scale: Vec<f32> = self
            .scale_mul
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        let normalize = |x: &[f32], mul: f32, out: &mut [f32]| {
            let n = x.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            for (o, v) in out.iter_mut().zip(x) {
                *o = v / n * mul;
            }
        };
        let mut q = vec![0f32; l * c];
        let mut kt = vec![0f32; l * c]; // [H, l, d]
        let mut vt = vec![0f32; l * c];
        for i in 0..l {
            let r = &part[i * 3 * c..(i + 1) * 3 * c];
            for hh in 0..h {
                let span = hh * d..(hh + 1) * d;
                let dst = (hh * l + i) * d;
                normalize(
                    &r[span.clone()],
                    scale[hh],
                    &mut q[i * c + hh * d..i * c + (hh + 1) * d],
                );
                normalize(&r[c + hh * d..c + (hh + 1) * d], 1.0, &mut kt[dst..dst + d]);
                vt[dst..dst + d].copy_from_slice(&r[2 * c + hh * d..2 * c + (hh + 1) * d]);
            }
        }
        let dev = qkv.device();
        buf.append(
            &Tensor::from_vec(kt, (h, l, d), dev)?,
            &Tensor::from_vec(vt, (h, l, d), dev)?,
        )?;
        let total = buf.len();
        let (kc, vc, cap) = buf
            .raw_f32()
            .ok_or_else(|| ModelError::Internal("kv buffer is not CPU f32".into()))?;
        let out = vargpt_kernels::attn::attend(&q, l, h, h, d, kc, vc, cap, |_| total, 1.0);
        Ok(Tensor::from_vec(out, (l, c), dev)?)
    }
}

/// `x + a · g` (`g` broadcast over the rows): one pass on CPU f32, the tensor ops
/// elsewhere; the same two roundings either way.
fn gated_residual(x: &Tensor, a: &Tensor, g: &Tensor) -> Result<Tensor> {
    if let Some(y) = crate::cpu_ops::add_gated(x, a, g)? {
        return Ok(y);
    }
    Ok((x + a.broadcast_mul(g)?)?)
}

/// `x / max(‖x‖₂, 1e-12)` over the last dimension (F.normalize).
fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let n = x
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::INFINITY)?;
    Ok(x.broadcast_div(&n)?)
}
