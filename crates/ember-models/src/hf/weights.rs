//! Reading Hugging Face `safetensors` checkpoints: one file or a sharded index, memory-mapped,
//! each tensor converted to f32 only when the model takes it.
use super::{snapshot_at, HfError, Mapping};
use burn::tensor::TensorData;
use burn_store::{TensorSnapshot, TensorSnapshotError};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata, SafeTensors};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// One shard: its memory map and where its tensor data starts.
struct Shard {
    path: PathBuf,
    map: Mmap,
    data_start: usize,
    metadata: Metadata,
}

/// The tensors of a checkpoint directory, by name.
pub struct Checkpoint {
    shards: Vec<Rc<Shard>>,
    /// Tensor name → shard index.
    index: BTreeMap<String, usize>,
}

impl Checkpoint {
    /// Opens `dir/model.safetensors`, or the shards listed by `dir/model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Checkpoint, HfError> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index_path.is_file() {
            let text = std::fs::read_to_string(&index_path).map_err(|e| file_err(&index_path, e.to_string()))?;
            let index: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| file_err(&index_path, format!("not JSON: {e}")))?;
            let map = index["weight_map"].as_object().ok_or_else(|| file_err(&index_path, "no weight_map".into()))?;
            let mut files: Vec<PathBuf> = map.values().filter_map(|f| f.as_str()).map(|f| dir.join(f)).collect();
            files.sort();
            files.dedup();
            files
        } else if single.is_file() {
            vec![single]
        } else {
            return Err(file_err(dir, "no model.safetensors or model.safetensors.index.json".into()));
        };
        let mut shards = Vec::new();
        let mut index = BTreeMap::new();
        for path in files {
            let file = std::fs::File::open(&path).map_err(|e| file_err(&path, e.to_string()))?;
            // Safety: the checkpoint is only read, and is expected not to change while loading.
            let map = unsafe { Mmap::map(&file) }.map_err(|e| file_err(&path, e.to_string()))?;
            let (header, metadata) =
                SafeTensors::read_metadata(&map).map_err(|e| file_err(&path, format!("not a safetensors file: {e}")))?;
            for name in metadata.tensors().keys() {
                index.insert(name.clone(), shards.len());
            }
            shards.push(Rc::new(Shard { path, map, data_start: 8 + header, metadata }));
        }
        Ok(Checkpoint { shards, index })
    }

    /// Every tensor name.
    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.index.keys()
    }

    /// The shape of tensor `name`, if present.
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let shard = &self.shards[*self.index.get(name)?];
        shard.metadata.info(name).map(|i| i.shape.clone())
    }

    /// Tensor `name` as f32 values, row-major, with its shape.
    pub fn read_f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>), String> {
        let shard = self.index.get(name).map(|&i| self.shards[i].clone()).ok_or_else(|| format!("missing tensor {name}"))?;
        read(&shard, name)
    }

    /// Names in the checkpoint that `used` does not mention.
    pub fn unused(&self, used: &[String]) -> Vec<String> {
        self.index.keys().filter(|n| !used.contains(n)).cloned().collect()
    }

    /// A lazy snapshot of the ember parameter `mapping.ember` with shape `shape`, or why not.
    pub(crate) fn snapshot(&self, mapping: &Mapping, shape: &[usize]) -> Result<TensorSnapshot, String> {
        let mut parts = Vec::new();
        for name in &mapping.hf {
            let Some(&i) = self.index.get(name) else { return Err(format!("missing tensor {name} (for {})", mapping.ember)) };
            let info = self.shards[i].metadata.info(name).expect("indexed");
            parts.push((name.clone(), self.shards[i].clone(), info.shape.clone()));
        }
        // Concatenation is along HF's output dimension (dim 0); after a transpose it is Burn's dim 1.
        let rows: usize = parts.iter().map(|p| p.2[0]).sum();
        let rest: Vec<usize> = parts[0].2[1..].to_vec();
        if let Some(p) = parts.iter().find(|p| p.2[1..] != rest[..]) {
            return Err(format!("tensor {} has shape {:?}, unlike {} {:?}", p.0, p.2, parts[0].0, parts[0].2));
        }
        let mut hf_shape = vec![rows];
        hf_shape.extend(&rest);
        let ember_shape: Vec<usize> = match (mapping.transpose, hf_shape.as_slice()) {
            (true, [o, i]) => vec![*i, *o],
            _ => hf_shape.clone(),
        };
        if ember_shape != shape {
            let found: Vec<String> = parts.iter().map(|p| format!("{} has shape {:?}", p.0, p.2)).collect();
            let joined = if parts.len() > 1 { format!(" (together {hf_shape:?})") } else { String::new() };
            return Err(format!(
                "tensor {}{joined}, but the config needs {:?} (for {})",
                found.join(", "),
                if mapping.transpose { vec![shape[1], shape[0]] } else { shape.to_vec() },
                mapping.ember,
            ));
        }
        let transpose = mapping.transpose;
        let data = move || -> Result<TensorData, TensorSnapshotError> {
            let mut values = Vec::with_capacity(ember_shape.iter().product());
            for (name, shard, _) in &parts {
                let (v, _) = read(shard, name).map_err(TensorSnapshotError::IoError)?;
                values.extend(v);
            }
            if transpose {
                values = transposed(&values, hf_shape[0], hf_shape[1]);
            }
            Ok(TensorData::new(values, ember_shape.clone()))
        };
        Ok(snapshot_at(&mapping.ember, shape.to_vec(), Rc::new(data)))
    }
}

fn file_err(path: &Path, message: String) -> HfError {
    HfError::File { path: path.to_path_buf(), message }
}

/// Tensor `name` of `shard` as f32.
fn read(shard: &Shard, name: &str) -> Result<(Vec<f32>, Vec<usize>), String> {
    let info = shard.metadata.info(name).ok_or_else(|| format!("missing tensor {name}"))?;
    let (start, end) = info.data_offsets;
    let bytes = shard
        .map
        .get(shard.data_start + start..shard.data_start + end)
        .ok_or_else(|| format!("{}: tensor {name} runs past the end of the file", shard.path.display()))?;
    let values: Vec<f32> = match info.dtype {
        Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        Dtype::BF16 => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::F64 => bytes.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32).collect(),
        other => return Err(format!("{}: tensor {name} has dtype {other:?} (f32, bf16, f16 or f64 expected)", shard.path.display())),
    };
    Ok((values, info.shape.clone()))
}

/// `[rows, cols]` row-major → `[cols, rows]`.
pub(crate) fn transposed(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}
