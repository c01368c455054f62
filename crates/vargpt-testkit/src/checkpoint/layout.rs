//! Where every tensor goes: which file, at which byte, under which safetensors
//! header. Planned before anything is written, so the files can be filled in
//! parallel at fixed offsets (and the plan checked without writing 18 GB).

use super::spec::CheckpointSpec;
use super::CheckpointError;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use vargpt_model::TensorSpec;

/// A tensor's stored element type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredDtype {
    F32,
    F16,
    Bf16,
    I64,
}

impl StoredDtype {
    pub fn size(self) -> usize {
        match self {
            Self::F16 | Self::Bf16 => 2,
            Self::F32 => 4,
            Self::I64 => 8,
        }
    }
    /// The safetensors header name.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::Bf16 => "BF16",
            Self::I64 => "I64",
        }
    }
    fn float(name: &str) -> Self {
        match name {
            "f16" => Self::F16,
            "bf16" => Self::Bf16,
            _ => Self::F32,
        }
    }
    /// Appends `values` as little-endian bytes of this type.
    pub(crate) fn encode(self, values: &[f32], out: &mut Vec<u8>) {
        match self {
            Self::F32 => out.extend(values.iter().flat_map(|v| v.to_le_bytes())),
            Self::F16 => out.extend(
                values
                    .iter()
                    .flat_map(|v| half::f16::from_f32(*v).to_le_bytes()),
            ),
            Self::Bf16 => out.extend(
                values
                    .iter()
                    .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()),
            ),
            Self::I64 => out.extend(values.iter().flat_map(|v| (*v as i64).to_le_bytes())),
        }
    }
}

/// One tensor's place.
#[derive(Debug, Clone)]
pub struct Placed {
    pub spec: TensorSpec,
    pub dtype: StoredDtype,
    /// Index into [`Layout::files`].
    pub file: usize,
    /// Byte offset of the data in its file (header included).
    pub offset: usize,
    pub bytes: usize,
}

/// One safetensors file: its name, header (length prefix included) and size.
#[derive(Debug, Clone)]
pub struct ShardFile {
    pub name: String,
    pub header: Vec<u8>,
    pub len: usize,
}

/// Every file and tensor of a checkpoint.
#[derive(Debug, Clone)]
pub struct Layout {
    pub files: Vec<ShardFile>,
    /// In the published (manifest) order.
    pub tensors: Vec<Placed>,
    /// With an index file (`model-0000i-of-0000n.safetensors`) or one `model.safetensors`.
    pub sharded: bool,
}

impl Layout {
    /// Bytes of tensor data (the index's `total_size`).
    pub fn total_bytes(&self) -> usize {
        self.tensors.iter().map(|t| t.bytes).sum()
    }

    /// `model.safetensors.index.json`.
    pub fn index_json(&self) -> Value {
        let weight_map: BTreeMap<&str, &str> = self
            .tensors
            .iter()
            .map(|t| (t.spec.name.as_str(), self.files[t.file].name.as_str()))
            .collect();
        json!({"metadata": {"total_size": self.total_bytes()}, "weight_map": weight_map})
    }
}

/// Plans the files of `spec`: tensors go into shards in the published order, a
/// new shard starting where the next tensor would pass `shard_bytes`.
pub fn layout(spec: &CheckpointSpec) -> Result<Layout, CheckpointError> {
    spec.validate()?;
    let (_, specs) = spec.tensors()?;
    let float = StoredDtype::float(&spec.dtype);
    let mut groups: Vec<Vec<(TensorSpec, StoredDtype, usize)>> = vec![vec![]];
    let mut size = 0;
    for s in specs {
        let dtype = if s.integer { StoredDtype::I64 } else { float };
        let bytes = s.shape.iter().product::<usize>() * dtype.size();
        if let Some(max) = spec.shard_bytes {
            if size > 0 && size + bytes > max {
                groups.push(vec![]);
                size = 0;
            }
        }
        size += bytes;
        groups.last_mut().expect("a shard").push((s, dtype, bytes));
    }
    let n = groups.len();
    let sharded = spec.shard_bytes.is_some();
    let mut files = Vec::with_capacity(n);
    let mut tensors = Vec::new();
    for (fi, group) in groups.into_iter().enumerate() {
        let name = if sharded {
            format!("model-{:05}-of-{n:05}.safetensors", fi + 1)
        } else {
            "model.safetensors".to_string()
        };
        // The safetensors crate's order (widest elements first, then by name) and
        // header text, so a file is byte for byte what `serialize_to_file` writes;
        // every tensor is aligned to its element size.
        let mut order: Vec<usize> = (0..group.len()).collect();
        order.sort_by(|&a, &b| {
            let (x, y) = (&group[a], &group[b]);
            y.1.size().cmp(&x.1.size()).then(x.0.name.cmp(&y.0.name))
        });
        let mut text = String::from(r#"{"__metadata__":{"format":"pt"}"#);
        let mut rel = vec![0; group.len()];
        let mut at = 0;
        for &i in &order {
            let (s, dtype, bytes) = &group[i];
            rel[i] = at;
            let name = serde_json::to_string(&s.name).expect("a string serialises");
            let shape = serde_json::to_string(&s.shape).expect("a shape serialises");
            let end = at + bytes;
            let d = dtype.name();
            text += &format!(
                r#",{name}:{{"dtype":"{d}","shape":{shape},"data_offsets":[{at},{end}]}}"#
            );
            at = end;
        }
        text.push('}');
        let mut text = text.into_bytes();
        text.resize(text.len().next_multiple_of(8), b' ');
        let mut head = (text.len() as u64).to_le_bytes().to_vec();
        head.extend(text);
        let data_start = head.len();
        for (i, (s, dtype, bytes)) in group.into_iter().enumerate() {
            tensors.push(Placed {
                spec: s,
                dtype,
                file: fi,
                offset: data_start + rel[i],
                bytes,
            });
        }
        files.push(ShardFile {
            name,
            len: data_start + at,
            header: head,
        });
    }
    Ok(Layout {
        files,
        tensors,
        sharded,
    })
}
