//! Everything in a model directory besides the weights: configs, tokenizer, template.

use crate::config::{GenerationConfig, VargptConfig};
use crate::error::{ModelError, Result};
use crate::text::{ChatTemplate, TextTokenizer};
use std::path::{Path, PathBuf};
use vargpt_imageproc::PreprocessorConfig;

pub struct ModelFiles {
    pub dir: PathBuf,
    pub config: VargptConfig,
    pub generation: GenerationConfig,
    pub preprocessor: PreprocessorConfig,
    pub tokenizer: TextTokenizer,
    pub template: ChatTemplate,
}

impl ModelFiles {
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(ModelError::Io {
                path: dir.into(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "model directory not found",
                ),
            });
        }
        let config = VargptConfig::from_file(&dir.join("config.json"))?;
        let gen_path = dir.join("generation_config.json");
        let generation = if gen_path.exists() {
            GenerationConfig::from_file(&gen_path)?
        } else {
            GenerationConfig::default()
        };
        let preprocessor = PreprocessorConfig::from_file(&dir.join("preprocessor_config.json"))?;
        let tokenizer = TextTokenizer::from_file(&dir.join("tokenizer.json"))?;
        let template = ChatTemplate::from_tokenizer_config(&dir.join("tokenizer_config.json"))?;
        Ok(Self {
            dir: dir.into(),
            config,
            generation,
            preprocessor,
            tokenizer,
            template,
        })
    }

    /// EOS ids from generation_config.json, else the LLaMA default (2).
    pub fn eos_ids(&self) -> Vec<u32> {
        let ids = self.generation.eos_ids();
        if ids.is_empty() {
            vec![2]
        } else {
            ids
        }
    }
}
