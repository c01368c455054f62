//! `preprocessor_config.json` (transformers `CLIPImageProcessor`).

use std::fmt;
use std::path::Path;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::resample::PilFilter;
use crate::ImageError;

/// OpenAI CLIP normalisation mean (`OPENAI_CLIP_MEAN` in transformers).
pub const OPENAI_CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
/// OpenAI CLIP normalisation std (`OPENAI_CLIP_STD` in transformers).
pub const OPENAI_CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

/// The `size` entry: how `resize` picks the output size.
///
/// Deserialised like transformers' `get_size_dict(size, default_to_square=False)`:
/// a bare integer means `{"shortest_edge": n}`; a map with `shortest_edge` wins
/// over `height`/`width` (as in `CLIPImageProcessor.resize`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum ResizeSize {
    /// `{"shortest_edge": s}`: short side -> `s`, long side -> `int(s * long / short)`.
    ShortestEdge {
        /// Target length of the shorter side.
        shortest_edge: u32,
    },
    /// `{"height": h, "width": w}`: resize to exactly `h x w` (aspect ratio not kept).
    Exact {
        /// Output height.
        height: u32,
        /// Output width.
        width: u32,
    },
}

/// The `crop_size` entry (`{"height", "width"}`, or a bare integer for a square).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct CropSize {
    /// Crop height.
    pub height: u32,
    /// Crop width.
    pub width: u32,
}

/// `CLIPImageProcessor` settings, as found in `preprocessor_config.json`.
///
/// [`Default`] gives the values of `openai/clip-vit-large-patch14-336` (the
/// VARGPT vision tower). Fields missing from a JSON file take the defaults of
/// transformers' `CLIPImageProcessor.__init__` instead (which differ only in
/// `size`/`crop_size`: 224), so a file is read the way transformers reads it.
/// Unknown keys (`image_processor_type`, `processor_class`, ...) are ignored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PreprocessorConfig {
    /// Resize before cropping.
    #[serde(default = "yes")]
    pub do_resize: bool,
    /// Resize target.
    #[serde(default = "hf_default_size", deserialize_with = "de_resize_size")]
    pub size: ResizeSize,
    /// PIL resampling code: 1 LANCZOS, 2 BILINEAR, 3 BICUBIC, 4 BOX, 5 HAMMING
    /// (0 NEAREST is rejected by [`PreprocessorConfig::validate`]).
    #[serde(default = "bicubic")]
    pub resample: u32,
    /// Center crop to `crop_size` (zero padding when the image is smaller).
    #[serde(default = "yes")]
    pub do_center_crop: bool,
    /// Crop size.
    #[serde(default = "hf_default_crop", deserialize_with = "de_crop_size")]
    pub crop_size: CropSize,
    /// Multiply by `rescale_factor` (in f64, then cast to f32).
    #[serde(default = "yes")]
    pub do_rescale: bool,
    /// Usually `1/255`.
    #[serde(default = "default_rescale")]
    pub rescale_factor: f64,
    /// Subtract `image_mean` and divide by `image_std` (in f32).
    #[serde(default = "yes")]
    pub do_normalize: bool,
    /// Per-channel mean (a bare number is replicated to the 3 channels).
    #[serde(default = "clip_mean", deserialize_with = "de_per_channel")]
    pub image_mean: Vec<f64>,
    /// Per-channel std (a bare number is replicated to the 3 channels).
    #[serde(default = "clip_std", deserialize_with = "de_per_channel")]
    pub image_std: Vec<f64>,
    /// Convert to RGB. Informational: [`crate::decode_rgb8`] always converts to
    /// RGB (PIL `convert("RGB")` semantics) because the model needs 3 channels.
    #[serde(default = "yes")]
    pub do_convert_rgb: bool,
}

fn yes() -> bool {
    true
}
fn bicubic() -> u32 {
    3
}
fn hf_default_size() -> ResizeSize {
    ResizeSize::ShortestEdge { shortest_edge: 224 }
}
fn hf_default_crop() -> CropSize {
    CropSize {
        height: 224,
        width: 224,
    }
}
fn default_rescale() -> f64 {
    1.0 / 255.0
}
fn clip_mean() -> Vec<f64> {
    OPENAI_CLIP_MEAN.to_vec()
}
fn clip_std() -> Vec<f64> {
    OPENAI_CLIP_STD.to_vec()
}

impl Default for PreprocessorConfig {
    /// `openai/clip-vit-large-patch14-336`: shortest edge 336, bicubic, center crop
    /// 336x336, rescale 1/255, OpenAI CLIP mean/std.
    fn default() -> Self {
        Self {
            do_resize: true,
            size: ResizeSize::ShortestEdge { shortest_edge: 336 },
            resample: 3,
            do_center_crop: true,
            crop_size: CropSize {
                height: 336,
                width: 336,
            },
            do_rescale: true,
            rescale_factor: 0.00392156862745098,
            do_normalize: true,
            image_mean: clip_mean(),
            image_std: clip_std(),
            do_convert_rgb: true,
        }
    }
}

impl PreprocessorConfig {
    /// Reads and validates a `preprocessor_config.json`.
    pub fn from_file(path: &Path) -> Result<Self, ImageError> {
        let bytes = std::fs::read(path).map_err(|source| ImageError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg: Self = serde_json::from_slice(&bytes)
            .map_err(|e| ImageError::BadConfig(format!("{}: {e}", path.display())))?;
        cfg.validate()
            .map_err(|e| ImageError::BadConfig(format!("{}: {e}", path.display())))?;
        Ok(cfg)
    }

    /// Parses and validates a JSON document.
    pub fn from_json_str(json: &str) -> Result<Self, ImageError> {
        let cfg: Self =
            serde_json::from_str(json).map_err(|e| ImageError::BadConfig(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the settings [`crate::preprocess`] relies on.
    pub fn validate(&self) -> Result<(), ImageError> {
        let bad = |msg: String| Err(ImageError::BadConfig(msg));
        if self.do_resize {
            if PilFilter::from_pil_code(self.resample).is_none() {
                return bad(format!(
                    "unsupported resample {} (supported PIL filters: 1 LANCZOS, 2 BILINEAR, \
                     3 BICUBIC, 4 BOX, 5 HAMMING; 0 NEAREST is not implemented)",
                    self.resample
                ));
            }
            match self.size {
                ResizeSize::ShortestEdge { shortest_edge: 0 } => {
                    return bad("size.shortest_edge must be > 0".into())
                }
                ResizeSize::Exact { height, width } if height == 0 || width == 0 => {
                    return bad(format!("size must be > 0, got {height}x{width}"))
                }
                _ => {}
            }
        }
        if self.do_center_crop && (self.crop_size.height == 0 || self.crop_size.width == 0) {
            return bad(format!(
                "crop_size must be > 0, got {}x{}",
                self.crop_size.height, self.crop_size.width
            ));
        }
        if self.do_rescale && !self.rescale_factor.is_finite() {
            return bad(format!(
                "rescale_factor must be finite, got {}",
                self.rescale_factor
            ));
        }
        if self.do_normalize {
            if self.image_mean.len() != 3 || self.image_std.len() != 3 {
                return bad(format!(
                    "image_mean and image_std need 3 values, got {} and {}",
                    self.image_mean.len(),
                    self.image_std.len()
                ));
            }
            if self.image_mean.iter().any(|m| !m.is_finite())
                || self
                    .image_std
                    .iter()
                    .any(|&s| !s.is_finite() || s as f32 == 0.0)
            {
                return bad(format!(
                    "image_mean must be finite and image_std finite and non-zero, got {:?} / {:?}",
                    self.image_mean, self.image_std
                ));
            }
        }
        Ok(())
    }

    /// The PIL filter selected by `resample` (`None` if unsupported).
    pub fn filter(&self) -> Option<PilFilter> {
        PilFilter::from_pil_code(self.resample)
    }

    /// `(height, width)` of the pixel values [`crate::preprocess`] produces.
    ///
    /// Exact whenever the output size does not depend on the input: with
    /// center crop it is `crop_size`, with an exact `{height, width}` resize it
    /// is that size. Without crop and with a shortest-edge resize (or without
    /// resize) the real size depends on the image; this then returns the size
    /// a square input would get (`(s, s)`, or `(0, 0)` without resize).
    /// [`crate::PixelValues`] always carries the actual size.
    pub fn output_size(&self) -> (usize, usize) {
        if self.do_center_crop {
            return (
                self.crop_size.height as usize,
                self.crop_size.width as usize,
            );
        }
        if !self.do_resize {
            return (0, 0);
        }
        match self.size {
            ResizeSize::ShortestEdge { shortest_edge } => {
                (shortest_edge as usize, shortest_edge as usize)
            }
            ResizeSize::Exact { height, width } => (height as usize, width as usize),
        }
    }
}

/// A JSON integer that must fit in `u32` (a float with no fraction is accepted,
/// since Python configs occasionally carry `224.0`).
fn value_to_u32<E: de::Error>(v: &serde_json::Value, what: &str) -> Result<u32, E> {
    let n = match v {
        serde_json::Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                .map(|f| f as u64)
        }),
        _ => None,
    };
    n.and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| E::custom(format!("{what}: expected a non-negative integer, got {v}")))
}

fn de_resize_size<'de, D: Deserializer<'de>>(d: D) -> Result<ResizeSize, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    match &v {
        serde_json::Value::Object(map) => {
            if let Some(s) = map.get("shortest_edge") {
                Ok(ResizeSize::ShortestEdge {
                    shortest_edge: value_to_u32(s, "size.shortest_edge")?,
                })
            } else if let (Some(h), Some(w)) = (map.get("height"), map.get("width")) {
                Ok(ResizeSize::Exact {
                    height: value_to_u32(h, "size.height")?,
                    width: value_to_u32(w, "size.width")?,
                })
            } else {
                Err(de::Error::custom(format!(
                    "size must contain either 'shortest_edge' or 'height' and 'width', got {v}"
                )))
            }
        }
        _ => Ok(ResizeSize::ShortestEdge {
            shortest_edge: value_to_u32(&v, "size")?,
        }),
    }
}

fn de_crop_size<'de, D: Deserializer<'de>>(d: D) -> Result<CropSize, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    match &v {
        serde_json::Value::Object(map) => match (map.get("height"), map.get("width")) {
            (Some(h), Some(w)) => Ok(CropSize {
                height: value_to_u32(h, "crop_size.height")?,
                width: value_to_u32(w, "crop_size.width")?,
            }),
            _ => Err(de::Error::custom(format!(
                "crop_size must contain 'height' and 'width', got {v}"
            ))),
        },
        _ => {
            let n = value_to_u32(&v, "crop_size")?;
            Ok(CropSize {
                height: n,
                width: n,
            })
        }
    }
}

/// A number (replicated to 3 channels) or a list of numbers.
fn de_per_channel<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
    struct PerChannel;
    impl<'de> Visitor<'de> for PerChannel {
        type Value = Vec<f64>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a number or a list of numbers")
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Vec<f64>, E> {
            Ok(vec![v; 3])
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Vec<f64>, E> {
            Ok(vec![v as f64; 3])
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Vec<f64>, E> {
            Ok(vec![v as f64; 3])
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<f64>, A::Error> {
            let mut out = Vec::new();
            while let Some(v) = seq.next_element::<f64>()? {
                out.push(v);
            }
            Ok(out)
        }
        fn visit_map<A: MapAccess<'de>>(self, _map: A) -> Result<Vec<f64>, A::Error> {
            Err(de::Error::custom(
                "expected a number or a list of numbers, got a map",
            ))
        }
    }
    d.deserialize_any(PerChannel)
}
