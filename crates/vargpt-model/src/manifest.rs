//! The published VARGPT-LLaVA-v1 state-dict layout, derived from a config.
//!
//! Every tensor the authors' model class declares, with its shape and whether
//! inference reads it. The loader checks a checkpoint against this list, so a
//! wrong, missing or unknown tensor is reported by name before anything runs.

use crate::config::{VargptConfig, VAE_CH_MULT, VAE_NUM_RES_BLOCKS};

/// One expected tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    /// False for tensors that exist in the checkpoint but inference never reads
    /// (VQVAE encoder, training buffers, `ln_q`, the unused last CLIP layers…):
    /// they are accepted when present and not required.
    pub needed: bool,
    /// Integer buffers (`lvl_1L`) rather than float parameters.
    pub integer: bool,
}

struct Builder {
    out: Vec<TensorSpec>,
}

impl Builder {
    fn add(&mut self, name: String, shape: &[usize], needed: bool) {
        self.out.push(TensorSpec {
            name,
            shape: shape.to_vec(),
            needed,
            integer: false,
        });
    }
    fn linear(&mut self, p: &str, out_f: usize, in_f: usize, bias: bool, needed: bool) {
        self.add(format!("{p}.weight"), &[out_f, in_f], needed);
        if bias {
            self.add(format!("{p}.bias"), &[out_f], needed);
        }
    }
    fn norm(&mut self, p: &str, n: usize, bias: bool, needed: bool) {
        self.add(format!("{p}.weight"), &[n], needed);
        if bias {
            self.add(format!("{p}.bias"), &[n], needed);
        }
    }
    fn conv(&mut self, p: &str, out_c: usize, in_c: usize, k: usize, needed: bool) {
        self.add(format!("{p}.weight"), &[out_c, in_c, k, k], needed);
        self.add(format!("{p}.bias"), &[out_c], needed);
    }
    fn resnet(&mut self, p: &str, in_c: usize, out_c: usize, needed: bool) {
        self.norm(&format!("{p}.norm1"), in_c, true, needed);
        self.conv(&format!("{p}.conv1"), out_c, in_c, 3, needed);
        self.norm(&format!("{p}.norm2"), out_c, true, needed);
        self.conv(&format!("{p}.conv2"), out_c, out_c, 3, needed);
        if in_c != out_c {
            self.conv(&format!("{p}.nin_shortcut"), out_c, in_c, 1, needed);
        }
    }
    fn attn_block(&mut self, p: &str, c: usize, needed: bool) {
        self.norm(&format!("{p}.norm"), c, true, needed);
        self.conv(&format!("{p}.qkv"), 3 * c, c, 1, needed);
        self.conv(&format!("{p}.proj_out"), c, c, 1, needed);
    }
}

/// All tensors of the published layout for `cfg`, in a stable order.
pub fn expected_tensors(cfg: &VargptConfig) -> Vec<TensorSpec> {
    let mut b = Builder { out: Vec::new() };
    let v = &cfg.vision_config;
    let t = &cfg.text_config;
    let var = cfg.var();

    // CLIP vision tower: only the layers before the selected hidden state are read.
    let vp = "vision_tower.vision_model";
    let vh = v.hidden_size;
    b.add(format!("{vp}.embeddings.class_embedding"), &[vh], true);
    b.add(
        format!("{vp}.embeddings.patch_embedding.weight"),
        &[vh, v.num_channels, v.patch_size, v.patch_size],
        true,
    );
    b.add(
        format!("{vp}.embeddings.position_embedding.weight"),
        &[v.num_patches() + 1, vh],
        true,
    );
    b.norm(&format!("{vp}.pre_layrnorm"), vh, true, true);
    let used_layers = cfg.feature_layer_index();
    for i in 0..v.num_hidden_layers {
        let p = format!("{vp}.encoder.layers.{i}");
        let needed = i < used_layers;
        for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            b.linear(&format!("{p}.self_attn.{proj}"), vh, vh, true, needed);
        }
        b.norm(&format!("{p}.layer_norm1"), vh, true, needed);
        b.linear(
            &format!("{p}.mlp.fc1"),
            v.intermediate_size,
            vh,
            true,
            needed,
        );
        b.linear(
            &format!("{p}.mlp.fc2"),
            vh,
            v.intermediate_size,
            true,
            needed,
        );
        b.norm(&format!("{p}.layer_norm2"), vh, true, needed);
    }
    b.norm(&format!("{vp}.post_layernorm"), vh, true, false);

    let hd = t.hidden_size;
    b.linear("multi_modal_projector.linear_1", hd, vh, true, true);
    b.linear("multi_modal_projector.linear_2", hd, hd, true, true);

    // LLaMA.
    let lp = "language_model";
    b.add(
        format!("{lp}.model.embed_tokens.weight"),
        &[t.vocab_size, hd],
        true,
    );
    let (nh, kvh, dh) = (t.num_attention_heads, t.kv_heads(), t.head_dim());
    for i in 0..t.num_hidden_layers {
        let p = format!("{lp}.model.layers.{i}");
        b.linear(
            &format!("{p}.self_attn.q_proj"),
            nh * dh,
            hd,
            t.attention_bias,
            true,
        );
        b.linear(
            &format!("{p}.self_attn.k_proj"),
            kvh * dh,
            hd,
            t.attention_bias,
            true,
        );
        b.linear(
            &format!("{p}.self_attn.v_proj"),
            kvh * dh,
            hd,
            t.attention_bias,
            true,
        );
        b.linear(
            &format!("{p}.self_attn.o_proj"),
            hd,
            nh * dh,
            t.attention_bias,
            true,
        );
        b.linear(
            &format!("{p}.mlp.gate_proj"),
            t.intermediate_size,
            hd,
            t.mlp_bias,
            true,
        );
        b.linear(
            &format!("{p}.mlp.up_proj"),
            t.intermediate_size,
            hd,
            t.mlp_bias,
            true,
        );
        b.linear(
            &format!("{p}.mlp.down_proj"),
            hd,
            t.intermediate_size,
            t.mlp_bias,
            true,
        );
        b.norm(&format!("{p}.input_layernorm"), hd, false, true);
        b.norm(&format!("{p}.post_attention_layernorm"), hd, false, true);
    }
    b.norm(&format!("{lp}.model.norm"), hd, false, true);
    if !t.tie_word_embeddings {
        b.add(format!("{lp}.lm_head.weight"), &[t.vocab_size, hd], true);
    }

    // VAR head.
    let c = var.width();
    let (cv, s, l) = (var.z_channels, var.stages(), var.total_tokens());
    let gp = "vargpt_gen";
    b.linear(&format!("{gp}.word_embed"), c, cv, true, true);
    b.add(
        format!("{gp}.class_emb.weight"),
        &[cfg.class_emb_rows(), c],
        true,
    );
    let pn0 = var.patch_nums[0];
    b.add(format!("{gp}.pos_start"), &[1, pn0 * pn0, c], true);
    b.add(format!("{gp}.pos_1LC"), &[1, l, c], true);
    b.add(format!("{gp}.lvl_embed.weight"), &[s, c], true);
    b.out.push(TensorSpec {
        name: format!("{gp}.lvl_1L"),
        shape: vec![1, l],
        needed: false,
        integer: true,
    });
    b.add(format!("{gp}.attn_bias_for_masking"), &[1, 1, l, l], false);
    for i in 0..var.depth {
        let p = format!("{gp}.blocks.{i}");
        b.add(format!("{p}.attn.mat_qkv.weight"), &[3 * c, c], true);
        b.add(format!("{p}.attn.q_bias"), &[c], true);
        b.add(format!("{p}.attn.v_bias"), &[c], true);
        b.add(format!("{p}.attn.zero_k_bias"), &[c], false);
        b.add(
            format!("{p}.attn.scale_mul_1H11"),
            &[1, var.heads(), 1, 1],
            true,
        );
        b.linear(&format!("{p}.attn.proj"), c, c, true, true);
        b.linear(&format!("{p}.ffn.fc1"), 4 * c, c, true, true);
        b.linear(&format!("{p}.ffn.fc2"), c, 4 * c, true, true);
        b.linear(&format!("{p}.ada_lin.1"), 6 * c, c, true, true);
    }
    b.linear(&format!("{gp}.head_nm.ada_lin.1"), 2 * c, c, true, true);
    b.linear(&format!("{gp}.head"), var.vocab_size, c, true, true);

    // VQVAE.
    let vq = "vae_local";
    b.add(
        format!("{vq}.quantize.embedding.weight"),
        &[var.vocab_size, cv],
        true,
    );
    for k in 0..var.share_quant_resi {
        b.conv(
            &format!("{vq}.quantize.quant_resi.qresi_ls.{k}"),
            cv,
            cv,
            3,
            true,
        );
    }
    b.add(
        format!("{vq}.quantize.ema_vocab_hit_SV"),
        &[s, var.vocab_size],
        false,
    );
    b.conv(&format!("{vq}.quant_conv"), cv, cv, 3, false);
    b.conv(&format!("{vq}.post_quant_conv"), cv, cv, 3, true);
    decoder_specs(&mut b, &format!("{vq}.decoder"), var.ch, cv);
    encoder_specs(&mut b, &format!("{vq}.encoder"), var.ch, cv);

    // GenPatchMergers (`ln_q` is stored but never applied).
    let hd_top = cfg.llm_hidden();
    b.norm("image_gen_projector.ln_q", c, true, false);
    b.linear("image_gen_projector.mlp.0", c, c, true, true);
    b.linear("image_gen_projector.mlp.2", hd_top, c, true, true);
    b.norm("image_gen_projector_out.ln_q", hd_top, true, false);
    b.linear("image_gen_projector_out.mlp.0", hd_top, hd_top, true, true);
    b.linear("image_gen_projector_out.mlp.2", c, hd_top, true, true);
    b.out
}

fn decoder_specs(b: &mut Builder, p: &str, ch: usize, cv: usize) {
    let levels = VAE_CH_MULT.len();
    let mut block_in = ch * VAE_CH_MULT[levels - 1];
    b.conv(&format!("{p}.conv_in"), block_in, cv, 3, true);
    b.resnet(&format!("{p}.mid.block_1"), block_in, block_in, true);
    b.attn_block(&format!("{p}.mid.attn_1"), block_in, true);
    b.resnet(&format!("{p}.mid.block_2"), block_in, block_in, true);
    for lvl in (0..levels).rev() {
        let block_out = ch * VAE_CH_MULT[lvl];
        for j in 0..=VAE_NUM_RES_BLOCKS {
            b.resnet(
                &format!("{p}.up.{lvl}.block.{j}"),
                block_in,
                block_out,
                true,
            );
            block_in = block_out;
            if lvl == levels - 1 {
                b.attn_block(&format!("{p}.up.{lvl}.attn.{j}"), block_in, true);
            }
        }
        if lvl != 0 {
            b.conv(
                &format!("{p}.up.{lvl}.upsample.conv"),
                block_in,
                block_in,
                3,
                true,
            );
        }
    }
    b.norm(&format!("{p}.norm_out"), block_in, true, true);
    b.conv(&format!("{p}.conv_out"), 3, block_in, 3, true);
}

fn encoder_specs(b: &mut Builder, p: &str, ch: usize, cv: usize) {
    let levels = VAE_CH_MULT.len();
    b.conv(&format!("{p}.conv_in"), ch, 3, 3, false);
    let mut block_in = ch;
    for (lvl, mult) in VAE_CH_MULT.iter().enumerate() {
        let block_out = ch * mult;
        for j in 0..VAE_NUM_RES_BLOCKS {
            b.resnet(
                &format!("{p}.down.{lvl}.block.{j}"),
                block_in,
                block_out,
                false,
            );
            block_in = block_out;
            if lvl == levels - 1 {
                b.attn_block(&format!("{p}.down.{lvl}.attn.{j}"), block_in, false);
            }
        }
        if lvl != levels - 1 {
            b.conv(
                &format!("{p}.down.{lvl}.downsample.conv"),
                block_in,
                block_in,
                3,
                false,
            );
        }
    }
    b.resnet(&format!("{p}.mid.block_1"), block_in, block_in, false);
    b.attn_block(&format!("{p}.mid.attn_1"), block_in, false);
    b.resnet(&format!("{p}.mid.block_2"), block_in, block_in, false);
    b.norm(&format!("{p}.norm_out"), block_in, true, false);
    b.conv(&format!("{p}.conv_out"), cv, block_in, 3, false);
}
