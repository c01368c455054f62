//! The LLaMA language model (HF `LlamaForCausalLM`, unmodified) with a KV cache.

use crate::config::TextConfig;
use crate::error::Result;
use crate::kv::KvBuffer;
use crate::nn::{silu, softmax_last, Linear, RmsNorm};
use crate::weights::Vb;
use candle_core::{DType, Device, Tensor};

/// The key/value cache of one sequence: one [`KvBuffer`] per layer.
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<KvBuffer>,
    len: usize,
}

impl KvCache {
    pub fn new(layers: usize) -> Self {
        Self {
            layers: (0..layers).map(|_| KvBuffer::default()).collect(),
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
    o: Linear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
}

struct Layer {
    ln1: RmsNorm,
    attn: Attention,
    ln2: RmsNorm,
    mlp: Mlp,
}

pub struct Llama {
    embed: Tensor,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Linear,
    cos: Tensor,
    sin: Tensor,
    head_dim: usize,
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
    pub fn load(vb: &Vb, cfg: &TextConfig) -> Result<Self> {
        let m = vb.pp("model");
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let l = m.pp("layers").pp(i);
            let a = l.pp("self_attn");
            let b = cfg.attention_bias;
            let mb = cfg.mlp_bias;
            layers.push(Layer {
                ln1: RmsNorm::load(&l.pp("input_layernorm"), cfg.rms_norm_eps)?,
                attn: Attention {
                    q: Linear::load(&a.pp("q_proj"), b)?,
                    k: Linear::load(&a.pp("k_proj"), b)?,
                    v: Linear::load(&a.pp("v_proj"), b)?,
                    o: Linear::load(&a.pp("o_proj"), b)?,
                    heads: cfg.num_attention_heads,
                    kv_heads: cfg.kv_heads(),
                    head_dim: cfg.head_dim(),
                },
                ln2: RmsNorm::load(&l.pp("post_attention_layernorm"), cfg.rms_norm_eps)?,
                mlp: Mlp {
                    gate: Linear::load(&l.pp("mlp.gate_proj"), mb)?,
                    up: Linear::load(&l.pp("mlp.up_proj"), mb)?,
                    down: Linear::load(&l.pp("mlp.down_proj"), mb)?,
                },
            });
        }
        let embed = m.get("embed_tokens.weight")?;
        let lm_head = if cfg.tie_word_embeddings {
            Linear::new(embed.clone(), None)
        } else {
            Linear::load(&vb.pp("lm_head"), false)?
        };
        let (cos, sin) = rope_tables(cfg, vb.dtype(), vb.device())?;
        Ok(Self {
            embed,
            layers,
            norm: RmsNorm::load(&m.pp("norm"), cfg.rms_norm_eps)?,
            lm_head,
            cos,
            sin,
            head_dim: cfg.head_dim(),
        })
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.layers.len())
    }

    pub fn max_positions(&self) -> usize {
        self.cos.dim(0).unwrap_or(0)
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
    /// sees exactly what it would see alone — no padding, no cross-talk.
    pub fn forward_ragged(
        &self,
        x: &Tensor,
        segments: &mut [(&mut KvCache, usize)],
    ) -> Result<Tensor> {
        let rows: usize = segments.iter().map(|(_, l)| *l).sum();
        if rows != x.dim(0)? {
            return Err(crate::error::ModelError::Input(format!(
                "ragged batch: {} rows for segments totalling {rows}",
                x.dim(0)?
            )));
        }
        for (cache, l) in segments.iter() {
            if cache.len + l > self.max_positions() {
                return Err(crate::error::ModelError::Input(format!(
                    "sequence of {} positions exceeds max_position_embeddings {}",
                    cache.len + l,
                    self.max_positions()
                )));
            }
        }
        let mut h = x.clone();
        for (li, layer) in self.layers.iter().enumerate() {
            let a =
                layer
                    .attn
                    .forward(&layer.ln1.forward(&h)?, li, segments, &self.cos, &self.sin)?;
            h = (h + a)?;
            let n = layer.ln2.forward(&h)?;
            let m = &layer.mlp;
            let g = (silu(&m.gate.forward(&n)?)? * m.up.forward(&n)?)?;
            h = (h + m.down.forward(&g)?)?;
        }
        for (cache, l) in segments.iter_mut() {
            cache.len += *l;
        }
        self.norm.forward(&h)
    }

    /// Hidden states → vocabulary logits (f32).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(self.lm_head.forward(hidden)?.to_dtype(DType::F32)?)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
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
        segments: &mut [(&mut KvCache, usize)],
        cos: &Tensor,
        sin: &Tensor,
    ) -> Result<Tensor> {
        let d = self.head_dim;
        let q_all = self.q.forward(x)?;
        let k_all = self.k.forward(x)?;
        let v_all = self.v.forward(x)?;
        let mut outs = Vec::with_capacity(segments.len());
        let mut row = 0;
        for (cache, l) in segments.iter_mut() {
            let l = *l;
            let offset = cache.len;
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
            let (k, v) = cache.layers[layer].append(&k, &v)?;
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
        self.o.forward(&o)
    }
}

fn repeat_kv(x: &Tensor, rep: usize) -> Result<Tensor> {
    let (h, t, d) = x.dims3()?;
    Ok(x.unsqueeze(1)?
        .expand((h, rep, t, d))?
        .reshape((h * rep, t, d))?)
}
