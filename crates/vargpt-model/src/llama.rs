//! The LLaMA language model (HF `LlamaForCausalLM`, unmodified) with per-sequence KV
//! caches, ragged (continuous) batching and optional tensor parallelism.

use crate::config::TextConfig;
use crate::error::{ModelError, Result};
use crate::kv::KvBuffer;
use crate::nn::{silu_mul, softmax_last, Linear, RmsNorm, RowParallel};
use crate::tp::{check_at_least_one_each, on_all_ranks, Communicator, RankMember, Shard};
use crate::weights::Vb;
use candle_core::{DType, Device, Tensor};
use std::sync::Arc;

/// The key/value cache of one sequence: per tensor-parallel rank, one [`KvBuffer`]
/// per layer (each rank caches its own heads).
#[derive(Debug, Default)]
pub struct KvCache {
    ranks: Vec<Vec<KvBuffer>>,
    len: usize,
}

impl KvCache {
    pub fn new(layers: usize, ranks: usize) -> Self {
        Self {
            ranks: (0..ranks)
                .map(|_| (0..layers).map(|_| KvBuffer::default()).collect())
                .collect(),
            len: 0,
        }
    }
    /// Number of positions already cached.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: RowParallel,
    /// Heads held by this rank.
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

struct Mlp {
    gate: Linear,
    up: Linear,
    down: RowParallel,
}

struct Layer {
    ln1: RmsNorm,
    attn: Attention,
    ln2: RmsNorm,
    mlp: Mlp,
}

/// The decoder layers as held by one tensor-parallel rank.
struct RankLayers {
    layers: Vec<Layer>,
    cos: Tensor,
    sin: Tensor,
    device: Device,
    comm: Option<Arc<dyn Communicator>>,
}

impl RankMember for RankLayers {
    fn comm(&self) -> Option<&Arc<dyn Communicator>> {
        self.comm.as_ref()
    }
}

/// One rank's view of a sequence in a ragged step: its caches, offset and new length.
type RankSegment<'c> = (&'c mut Vec<KvBuffer>, usize, usize);

pub struct Llama {
    embed: Tensor,
    ranks: Vec<RankLayers>,
    norm: RmsNorm,
    lm_head: Linear,
    max_positions: usize,
}

/// RoPE tables `[max_pos, head_dim/2]` computed in f32 as transformers does.
fn rope_tables(cfg: &TextConfig, dtype: DType, dev: &Device) -> Result<(Tensor, Tensor)> {
    let d = cfg.head_dim();
    let inv: Vec<f32> = (0..d / 2)
        .map(|i| 1.0f32 / (cfg.rope_theta as f32).powf((2 * i) as f32 / d as f32))
        .collect();
    let n = cfg.max_position_embeddings;
    let inv = Tensor::from_vec(inv, (1, d / 2), dev)?;
    let pos = Tensor::arange(0u32, n as u32, dev)?
        .to_dtype(DType::F32)?
        .reshape((n, 1))?;
    let freqs = pos.broadcast_mul(&inv)?;
    Ok((freqs.cos()?.to_dtype(dtype)?, freqs.sin()?.to_dtype(dtype)?))
}

impl Llama {
    /// Loads the decoder; `shards` lists the tensor-parallel ranks (one for TP = 1).
    /// Embeddings, norms and `lm_head` are replicated on rank 0's device. Heads
    /// (whole key/value groups) and MLP units split as evenly as whole units allow,
    /// whether or not they divide by the degree ([`Shard::heads`]).
    pub fn load(vb: &Vb, cfg: &TextConfig, shards: &[Shard]) -> Result<Self> {
        let world = shards.len();
        check_at_least_one_each(
            "text_config.intermediate_size",
            cfg.intermediate_size,
            world,
        )
        .map_err(ModelError::Checkpoint)?;
        let mut ranks = Vec::with_capacity(world);
        for shard in shards {
            let m = Vb::root_on(vb.weights(), shard.device.clone()).pp(vb.name("model"));
            let dh = cfg.head_dim();
            let (b, mb) = (cfg.attention_bias, cfg.mlp_bias);
            let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
            for i in 0..cfg.num_hidden_layers {
                let l = m.pp("layers").pp(i);
                let a = l.pp("self_attn");
                let hr = shard
                    .heads(cfg.num_attention_heads, cfg.kv_heads())
                    .map_err(ModelError::Checkpoint)?;
                let (q0, qn, k0, kn) = (hr.start, hr.len, hr.kv_start, hr.kv_len);
                layers.push(Layer {
                    ln1: RmsNorm::load(&l.pp("input_layernorm"), cfg.rms_norm_eps)?,
                    attn: Attention {
                        q: Linear::load_rows(&a.pp("q_proj"), b, &[(q0 * dh, qn * dh)])?,
                        k: Linear::load_rows(&a.pp("k_proj"), b, &[(k0 * dh, kn * dh)])?,
                        v: Linear::load_rows(&a.pp("v_proj"), b, &[(k0 * dh, kn * dh)])?,
                        o: RowParallel::load_cols(&a.pp("o_proj"), b, shard, q0 * dh, qn * dh)?,
                        heads: qn,
                        kv_heads: kn,
                        head_dim: dh,
                    },
                    ln2: RmsNorm::load(&l.pp("post_attention_layernorm"), cfg.rms_norm_eps)?,
                    mlp: Mlp {
                        gate: Linear::load_column(&l.pp("mlp.gate_proj"), mb, shard)?,
                        up: Linear::load_column(&l.pp("mlp.up_proj"), mb, shard)?,
                        down: RowParallel::load(&l.pp("mlp.down_proj"), mb, shard)?,
                    },
                });
            }
            let (cos, sin) = rope_tables(cfg, vb.dtype(), &shard.device)?;
            ranks.push(RankLayers {
                layers,
                cos,
                sin,
                device: shard.device.clone(),
                comm: shard.comm.clone(),
            });
        }
        let m = vb.pp("model");
        let embed = m.get("embed_tokens.weight")?;
        let lm_head = if cfg.tie_word_embeddings {
            Linear::new(embed.clone(), None)
        } else {
            Linear::load(&vb.pp("lm_head"), false)?
        };
        Ok(Self {
            embed,
            ranks,
            norm: RmsNorm::load(&m.pp("norm"), cfg.rms_norm_eps)?,
            lm_head,
            max_positions: cfg.max_position_embeddings,
        })
    }

    pub fn num_layers(&self) -> usize {
        self.ranks[0].layers.len()
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.num_layers(), self.ranks.len())
    }

    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// Token ids `[b, l]` → embeddings `[b, l, hidden]`.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, l) = ids.dims2()?;
        let flat = ids.flatten_all()?;
        Ok(self.embed.index_select(&flat, 0)?.reshape((b, l, ()))?)
    }

    /// Runs the decoder on `x [1, l, hidden]` at positions `cache.len() ..`, appending to
    /// the cache; returns the hidden states after the final RMSNorm (`hidden_states[-1]`),
    /// `[1, l, hidden]`. Within the chunk the mask is the ordinary causal one.
    pub fn forward(&self, x: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let l = x.dim(1)?;
        let h = self.forward_ragged(&x.squeeze(0)?, &mut [(cache, l)])?;
        Ok(h.unsqueeze(0)?)
    }

    /// Continuous-batching forward: `x [Σlᵢ, hidden]` holds the new tokens of several
    /// sequences back to back, `segments[i] = (cache of sequence i, lᵢ)`. Projections
    /// and MLPs run once over all rows (the weights are streamed once per step);
    /// attention runs per sequence on its own cache and positions, so each sequence
    /// sees exactly what it would see alone — no padding, no cross-talk. With tensor
    /// parallelism every rank runs its shard on its own thread in lockstep.
    pub fn forward_ragged(
        &self,
        x: &Tensor,
        segments: &mut [(&mut KvCache, usize)],
    ) -> Result<Tensor> {
        let rows: usize = segments.iter().map(|(_, l)| *l).sum();
        if rows != x.dim(0)? {
            return Err(ModelError::Internal(format!(
                "ragged batch: {} rows for segments totalling {rows}",
                x.dim(0)?
            )));
        }
        for (cache, l) in segments.iter() {
            if cache.len + l > self.max_positions {
                return Err(ModelError::Internal(format!(
                    "sequence of {} positions exceeds max_position_embeddings {}",
                    cache.len + l,
                    self.max_positions
                )));
            }
        }
        let world = self.ranks.len();
        let mut per_rank: Vec<Vec<RankSegment>> = (0..world).map(|_| Vec::new()).collect();
        for (cache, l) in segments.iter_mut() {
            let offset = cache.len;
            for (r, bufs) in cache.ranks.iter_mut().enumerate() {
                per_rank[r].push((bufs, offset, *l));
            }
        }
        let h = on_all_ranks(&self.ranks, per_rank, |rank, mut seg| {
            rank.forward(x, &mut seg)
        })?;
        for (cache, l) in segments.iter_mut() {
            cache.len += *l;
        }
        self.norm.forward(&h.to_device(self.embed.device())?)
    }

    /// Hidden states → vocabulary logits (f32). Every row is taken as its own
    /// sequence (the engine asks for one last row per sequence), so a row's
    /// logits do not depend on how many others share the call.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let rows = hidden.elem_count() / hidden.dim(candle_core::D::Minus1)?.max(1);
        let singles = vec![1; rows];
        Ok(self
            .lm_head
            .forward_seqs(hidden, &singles)?
            .to_dtype(DType::F32)?)
    }
}

impl RankLayers {
    fn forward(&self, x: &Tensor, segments: &mut [RankSegment]) -> Result<Tensor> {
        let mut h = x.to_device(&self.device)?;
        let lens: Vec<usize> = segments.iter().map(|s| s.2).collect();
        for (li, layer) in self.layers.iter().enumerate() {
            let a = layer.attn.forward(
                &layer.ln1.forward(&h)?,
                li,
                segments,
                &lens,
                &self.cos,
                &self.sin,
            )?;
            h = (h + a)?;
            let n = layer.ln2.forward(&h)?;
            let m = &layer.mlp;
            let g = silu_mul(
                &m.gate.forward_seqs(&n, &lens)?,
                &m.up.forward_seqs(&n, &lens)?,
            )?;
            h = (h + m.down.forward_seqs(&g, &lens)?)?;
        }
        Ok(h)
    }
}

/// `[l, offset + l]` additive mask: query i sees keys `0 ..= offset + i`.
fn causal_mask(l: usize, offset: usize, dtype: DType, dev: &Device) -> Result<Tensor> {
    let total = offset + l;
    let mask: Vec<f32> = (0..l)
        .flat_map(|i| {
            (0..total).map(move |j| {
                if j > offset + i {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Ok(Tensor::from_vec(mask, (l, total), dev)?.to_dtype(dtype)?)
}

impl Attention {
    fn forward(
        &self,
        x: &Tensor,
        layer: usize,
        segments: &mut [RankSegment],
        lens: &[usize],
        cos: &Tensor,
        sin: &Tensor,
    ) -> Result<Tensor> {
        let d = self.head_dim;
        if self.heads == 0 {
            // A rank without heads (fewer key/value heads than ranks) only joins
            // the output projection's all-reduce.
            let empty = Tensor::zeros((x.dim(0)?, 0), x.dtype(), x.device())?;
            return self.o.forward_seqs(&empty, lens);
        }
        let q_all = self.q.forward_seqs(x, lens)?;
        let k_all = self.k.forward_seqs(x, lens)?;
        let v_all = self.v.forward_seqs(x, lens)?;
        let mut outs = Vec::with_capacity(segments.len());
        let mut row = 0;
        if x.device().is_cpu() && x.dtype() == DType::F32 {
            // CPU f32: RoPE, cache append and causal attention in plain loops.
            // A dozen candle ops per sequence and layer (copies for the head
            // layout, a materialised mask, scaled scores, softmax) cost far more
            // than the arithmetic, for prefill chunks and decode steps alike.
            let mut qs = Vec::with_capacity(segments.len());
            for (bufs, offset, l) in segments.iter_mut() {
                qs.push(self.rope_and_append(
                    &q_all,
                    &k_all,
                    &v_all,
                    row,
                    *l,
                    &mut bufs[layer],
                    *offset,
                    cos,
                    sin,
                )?);
                row += *l;
            }
            // The sequences' attentions run in parallel: a decode step's is
            // bound by reading that sequence's cache, one core's bandwidth each.
            use rayon::prelude::*;
            let outs: Vec<Vec<f32>> = segments
                .par_iter()
                .zip(qs.par_iter())
                .map(|((bufs, offset, l), q)| self.attend_cached(q, *l, &bufs[layer], *offset))
                .collect::<Result<_>>()?;
            let width = self.heads * d;
            let rows_total: usize = lens.iter().sum();
            let o = Tensor::from_vec(outs.concat(), (rows_total, width), x.device())?;
            return self.o.forward_seqs(&o, lens);
        }
        for (bufs, offset, l) in segments.iter_mut() {
            let (l, offset) = (*l, *offset);
            let heads = |t: &Tensor, n: usize| -> Result<Tensor> {
                Ok(t.narrow(0, row, l)?
                    .reshape((l, n, d))?
                    .transpose(0, 1)?
                    .contiguous()?
                    .unsqueeze(0)?)
            };
            let (c, s) = (cos.narrow(0, offset, l)?, sin.narrow(0, offset, l)?);
            let q = candle_nn::rotary_emb::rope(&heads(&q_all, self.heads)?, &c, &s)?.squeeze(0)?;
            let k =
                candle_nn::rotary_emb::rope(&heads(&k_all, self.kv_heads)?, &c, &s)?.squeeze(0)?;
            let v = heads(&v_all, self.kv_heads)?.squeeze(0)?;
            let (k, v) = bufs[layer].append(&k, &v)?;
            let rep = self.heads / self.kv_heads;
            let (k, v) = if rep > 1 {
                (repeat_kv(&k, rep)?, repeat_kv(&v, rep)?)
            } else {
                (k, v)
            };
            let mut scores = (q.matmul(&k.transpose(1, 2)?)? / (d as f64).sqrt())?;
            if l > 1 {
                scores = scores.broadcast_add(&causal_mask(
                    l,
                    offset,
                    scores.dtype(),
                    scores.device(),
                )?)?;
            }
            let p = softmax_last(&scores)?;
            outs.push(
                p.matmul(&v)?
                    .transpose(0, 1)?
                    .reshape((l, self.heads * d))?,
            );
            row += l;
        }
        let o = if outs.len() == 1 {
            outs.pop().expect("one")
        } else {
            Tensor::cat(&outs, 0)?
        };
        self.o.forward_seqs(&o, lens)
    }
}

impl Attention {
    /// `l` new tokens of one sequence at positions `pos ..` (CPU, f32): rotary
    /// embedding of queries and keys, and the keys and values appended to the
    /// cache; returns the rotated queries for [`Self::attend_cached`]. Same
    /// arithmetic as the tensor path (f32, max-subtracted softmax); rows of one
    /// call are independent, so a prefill chunk gives the same per-token results
    /// as decoding the tokens one by one, up to summation order.
    #[allow(clippy::too_many_arguments)]
    fn rope_and_append(
        &self,
        q_all: &Tensor,
        k_all: &Tensor,
        v_all: &Tensor,
        row: usize,
        l: usize,
        buf: &mut KvBuffer,
        pos: usize,
        cos: &Tensor,
        sin: &Tensor,
    ) -> Result<Vec<f32>> {
        let d = self.head_dim;
        let half = d / 2;
        let rows =
            |t: &Tensor| -> Result<Vec<f32>> { Ok(t.narrow(0, row, l)?.flatten_all()?.to_vec1()?) };
        let (mut q, k, v) = (rows(q_all)?, rows(k_all)?, rows(v_all)?);
        let c: Vec<f32> = cos.narrow(0, pos, l)?.flatten_all()?.to_vec1()?;
        let s: Vec<f32> = sin.narrow(0, pos, l)?.flatten_all()?.to_vec1()?;
        let rope = |x: &mut [f32], i: usize| {
            let (c, s) = (&c[i * half..(i + 1) * half], &s[i * half..(i + 1) * half]);
            for head in x.chunks_mut(d) {
                for j in 0..half {
                    let (a, b) = (head[j], head[j + half]);
                    head[j] = a * c[j] - b * s[j];
                    head[j + half] = b * c[j] + a * s[j];
                }
            }
        };
        for (i, qi) in q.chunks_mut(self.heads * d).enumerate() {
            rope(qi, i);
        }
        // Keys (after RoPE) and values into the cache layout [kv_heads, l, d].
        let kvw = self.kv_heads * d;
        let mut kt = vec![0f32; l * kvw];
        let mut vt = vec![0f32; l * kvw];
        for i in 0..l {
            let mut ki = k[i * kvw..(i + 1) * kvw].to_vec();
            rope(&mut ki, i);
            for h in 0..self.kv_heads {
                let dst = (h * l + i) * d;
                kt[dst..dst + d].copy_from_slice(&ki[h * d..(h + 1) * d]);
                vt[dst..dst + d].copy_from_slice(&v[i * kvw + h * d..i * kvw + (h + 1) * d]);
            }
        }
        let dev = q_all.device();
        buf.append(
            &Tensor::from_vec(kt, (self.kv_heads, l, d), dev)?,
            &Tensor::from_vec(vt, (self.kv_heads, l, d), dev)?,
        )?;
        Ok(q)
    }

    /// Attention of `l` rotated queries `q [l, heads·d]` at positions `pos ..` over
    /// the cache `buf` (which already holds them): token `i` sees cached positions
    /// `0 ..= pos + i`. Returns `[l, heads·d]`.
    fn attend_cached(&self, q: &[f32], l: usize, buf: &KvBuffer, pos: usize) -> Result<Vec<f32>> {
        let d = self.head_dim;
        let (kc, vc, cap) = buf
            .raw_f32()
            .ok_or_else(|| ModelError::Internal("kv buffer is not CPU f32".into()))?;
        Ok(vargpt_kernels::attn::attend(
            q,
            l,
            self.heads,
            self.kv_heads,
            d,
            kc,
            vc,
            cap,
            |i| pos + i + 1,
            1.0 / (d as f32).sqrt(),
        ))
    }
}

fn repeat_kv(x: &Tensor, rep: usize) -> Result<Tensor> {
    let (h, t, d) = x.dims3()?;
    Ok(x.unsqueeze(1)?
        .expand((h, rep, t, d))?
        .reshape((h * rep, t, d))?)
}
