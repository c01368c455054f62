//! Memory-mapped checkpoint access, checked against the published layout.
//!
//! [`Weights::open`] maps `model.safetensors` or the shards listed in
//! `model.safetensors.index.json`, then compares every stored tensor with the
//! manifest of [`crate::manifest`]: unknown names, wrong shapes, unsupported
//! dtypes and missing needed tensors are errors naming the tensor. Tensors are
//! only materialised (and converted to the compute dtype) when a module asks.

use crate::error::{ModelError, Result};
use crate::manifest::TensorSpec;
use crate::safetensors_mmap::MappedSafetensors;
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

pub struct Weights {
    st: MappedSafetensors,
    specs: HashMap<String, TensorSpec>,
    dtype: DType,
    /// Dtype of the big linear-layer weights; may differ from the compute dtype
    /// (f16/bf16 weights with f32 activations on CPU halve the bytes streamed).
    linear_dtype: DType,
    device: Device,
    /// Bytes of all stored tensors (for reporting and memory checks).
    stored_bytes: usize,
}

/// Checkpoint files of a model directory: the shards of the index, or the single file.
pub fn checkpoint_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|source| ModelError::Io {
            path: index.clone(),
            source,
        })?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::Config {
            path: index.clone(),
            message: e.to_string(),
        })?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| ModelError::Config {
                path: index.clone(),
                message: "no `weight_map` object".into(),
            })?;
        let files: BTreeSet<&str> = map.values().filter_map(|f| f.as_str()).collect();
        let mut out = Vec::new();
        for f in files {
            if f.contains('/') || f.contains("..") {
                return Err(ModelError::Config {
                    path: index.clone(),
                    message: format!("shard name {f:?} is not a plain file name"),
                });
            }
            out.push(dir.join(f));
        }
        return Ok(out);
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    Err(ModelError::Checkpoint(format!(
        "no model.safetensors or model.safetensors.index.json in {}",
        dir.display()
    )))
}

fn is_float(d: safetensors::Dtype) -> bool {
    matches!(
        d,
        safetensors::Dtype::F32 | safetensors::Dtype::F16 | safetensors::Dtype::BF16
    )
}

impl Weights {
    /// Maps the checkpoint of `dir` and validates it against `specs`.
    pub fn open(dir: &Path, specs: Vec<TensorSpec>, dtype: DType, device: &Device) -> Result<Self> {
        let files = checkpoint_files(dir)?;
        for f in &files {
            if !f.exists() {
                return Err(ModelError::Checkpoint(format!(
                    "shard {} is missing",
                    f.display()
                )));
            }
        }
        let st = MappedSafetensors::open(&files)?;
        let specs: HashMap<String, TensorSpec> =
            specs.into_iter().map(|s| (s.name.clone(), s)).collect();
        let mut stored_bytes = 0;
        let mut present = BTreeSet::new();
        for (name, entry) in st.entries() {
            let spec = specs
                .get(name)
                .ok_or_else(|| ModelError::UnknownTensor { name: name.clone() })?;
            if entry.shape != spec.shape {
                return Err(ModelError::ShapeMismatch {
                    name: name.clone(),
                    expected: spec.shape.clone(),
                    found: entry.shape.clone(),
                });
            }
            let ok = if spec.integer {
                matches!(
                    entry.dtype,
                    safetensors::Dtype::I64 | safetensors::Dtype::I32
                )
            } else {
                is_float(entry.dtype)
            };
            if !ok {
                return Err(ModelError::BadDtype {
                    name: name.clone(),
                    dtype: format!("{:?}", entry.dtype),
                });
            }
            stored_bytes += entry.len_bytes();
            present.insert(name.clone());
        }
        let mut missing: Vec<&String> = specs
            .values()
            .filter(|s| s.needed && !present.contains(&s.name))
            .map(|s| &s.name)
            .collect();
        missing.sort();
        if let Some(name) = missing.first() {
            return Err(ModelError::MissingTensor {
                name: (*name).clone(),
            });
        }
        Ok(Self {
            st,
            specs,
            dtype,
            linear_dtype: dtype,
            device: device.clone(),
            stored_bytes,
        })
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn linear_dtype(&self) -> DType {
        self.linear_dtype
    }
    /// Keeps linear-layer weights in `dtype` (the rest stays in the compute dtype).
    pub fn set_linear_dtype(&mut self, dtype: DType) {
        self.linear_dtype = dtype;
    }
    pub fn device(&self) -> &Device {
        &self.device
    }
    pub fn stored_bytes(&self) -> usize {
        self.stored_bytes
    }

    /// Loads `name` in the compute dtype on the compute device.
    pub fn get(&self, name: &str) -> Result<Tensor> {
        self.get_as(name, self.dtype)
    }

    /// Loads `name` converted to `dtype` (e.g. f32 for tensors kept in full precision).
    pub fn get_as(&self, name: &str, dtype: DType) -> Result<Tensor> {
        self.get_on(name, dtype, &self.device)
    }

    /// Loads `name` as `dtype` onto `device` (tensor-parallel ranks each have their own).
    pub fn get_on(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        if !self.specs.contains_key(name) {
            return Err(ModelError::UnknownTensor { name: name.into() });
        }
        let t = self.st.load(name, None)?;
        Ok(t.to_dtype(dtype)?.to_device(device)?)
    }

    /// Loads rows/columns `[start, start+len)` of `name` along `dim` (tensor-parallel shards).
    pub fn get_narrow(
        &self,
        name: &str,
        dim: usize,
        start: usize,
        len: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let shape = self.st.entry(name)?.shape.clone();
        if dim >= shape.len() || start + len > shape[dim] {
            return Err(ModelError::Checkpoint(format!(
                "{name}: slice {start}..{} of dim {dim} out of range {shape:?}",
                start + len
            )));
        }
        // Rows of dim 0 are read alone, so each rank touches only its part of the file.
        let t = if dim == 0 {
            self.st.load(name, Some((start, len)))?
        } else {
            self.st
                .load(name, None)?
                .narrow(dim, start, len)?
                .contiguous()?
        };
        Ok(t.to_dtype(dtype)?.to_device(device)?)
    }

    /// Stored shape of `name`.
    pub fn shape_of(&self, name: &str) -> Result<Vec<usize>> {
        Ok(self.st.entry(name)?.shape.clone())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.st.entry(name).is_ok()
    }
}

/// A view of [`Weights`] under a name prefix, in the style of candle's `VarBuilder`,
/// loading onto one device (a tensor-parallel rank's).
#[derive(Clone)]
pub struct Vb<'a> {
    weights: &'a Weights,
    prefix: String,
    device: Device,
}

impl<'a> Vb<'a> {
    pub fn root(weights: &'a Weights) -> Self {
        Self::root_on(weights, weights.device().clone())
    }
    pub fn root_on(weights: &'a Weights, device: Device) -> Self {
        Self {
            weights,
            prefix: String::new(),
            device,
        }
    }
    pub fn pp(&self, s: impl std::fmt::Display) -> Self {
        Self {
            weights: self.weights,
            prefix: self.name(&s.to_string()),
            device: self.device.clone(),
        }
    }
    pub fn name(&self, leaf: &str) -> String {
        if self.prefix.is_empty() {
            leaf.to_string()
        } else {
            format!("{}.{leaf}", self.prefix)
        }
    }
    pub fn get(&self, leaf: &str) -> Result<Tensor> {
        self.weights
            .get_on(&self.name(leaf), self.weights.dtype(), &self.device)
    }
    /// Loads in f32 whatever the compute dtype (small tensors that need full precision).
    pub fn get_f32(&self, leaf: &str) -> Result<Tensor> {
        self.weights
            .get_on(&self.name(leaf), DType::F32, &self.device)
    }
    /// Rows/columns `[start, start+len)` along `dim` of `leaf`.
    pub fn get_narrow(&self, leaf: &str, dim: usize, start: usize, len: usize) -> Result<Tensor> {
        self.weights.get_narrow(
            &self.name(leaf),
            dim,
            start,
            len,
            self.weights.dtype(),
            &self.device,
        )
    }
    /// Like [`Vb::get_narrow`], in the linear-weight dtype.
    pub fn get_narrow_linear(
        &self,
        leaf: &str,
        dim: usize,
        start: usize,
        len: usize,
    ) -> Result<Tensor> {
        self.weights.get_narrow(
            &self.name(leaf),
            dim,
            start,
            len,
            self.weights.linear_dtype(),
            &self.device,
        )
    }
    /// A linear-layer weight, in the linear-weight dtype.
    pub fn get_linear(&self, leaf: &str) -> Result<Tensor> {
        self.weights
            .get_on(&self.name(leaf), self.weights.linear_dtype(), &self.device)
    }
    pub fn weights(&self) -> &'a Weights {
        self.weights
    }
    pub fn dtype(&self) -> DType {
        self.weights.dtype()
    }
    pub fn device(&self) -> &Device {
        &self.device
    }
}
