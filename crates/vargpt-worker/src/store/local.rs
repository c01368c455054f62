//! A local-directory store for the embedded mode: generated images are
//! written under an output folder; `s3://bucket/key` inputs are read from
//! `{input_root}/{bucket}/{key}` (the same layout as s3s-fs).

use std::path::{Component, Path, PathBuf};

use async_trait::async_trait;

use crate::pipeline::{ImageStore, StoreError, StoredObject};

pub struct LocalStore {
    input_root: Option<PathBuf>,
    out_dir: PathBuf,
}

/// The bucket name results report for locally stored images.
pub const LOCAL_BUCKET: &str = "local";

impl LocalStore {
    pub fn new(input_root: Option<PathBuf>, out_dir: PathBuf) -> Self {
        LocalStore {
            input_root,
            out_dir,
        }
    }
}

/// Joins `rel` under `root`, refusing anything that could leave it.
fn contained(root: &Path, rel: &str) -> Option<PathBuf> {
    let rel = Path::new(rel);
    let safe = rel.components().all(|c| matches!(c, Component::Normal(_)));
    (safe && !rel.as_os_str().is_empty()).then(|| root.join(rel))
}

#[async_trait]
impl ImageStore for LocalStore {
    async fn fetch(
        &self,
        bucket: &str,
        key: &str,
        max_bytes: usize,
    ) -> Result<Vec<u8>, StoreError> {
        let what = format!("s3://{bucket}/{key}");
        let root = self
            .input_root
            .as_ref()
            .ok_or_else(|| StoreError::NotFound(format!("{what} (no --store-root given)")))?;
        let path = contained(root, &format!("{bucket}/{key}"))
            .ok_or_else(|| StoreError::NotFound(what.clone()))?;
        let meta = match tokio::fs::metadata(&path).await {
            Ok(m) if m.is_file() => m,
            Ok(_) => return Err(StoreError::NotFound(what)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(what))
            }
            Err(e) => return Err(StoreError::Refused(format!("{what}: {e}"))),
        };
        if meta.len() > max_bytes as u64 {
            return Err(StoreError::TooLarge {
                size: meta.len(),
                limit: max_bytes,
            });
        }
        tokio::fs::read(&path)
            .await
            .map_err(|e| StoreError::Refused(format!("{what}: {e}")))
    }

    async fn put_png(
        &self,
        key: &str,
        png: Vec<u8>,
        _sha256_hex: &str,
    ) -> Result<StoredObject, StoreError> {
        let path = contained(&self.out_dir, key)
            .ok_or_else(|| StoreError::Refused(format!("bad key {key:?}")))?;
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| StoreError::Refused(e.to_string()))?;
        }
        // Write then rename, so a crash never leaves half a PNG under the key.
        let tmp = path.with_extension("png.part");
        tokio::fs::write(&tmp, &png)
            .await
            .map_err(|e| StoreError::Refused(e.to_string()))?;
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(|e| StoreError::Refused(e.to_string()))?;
        let abs = std::path::absolute(&path).unwrap_or(path);
        Ok(StoredObject {
            bucket: LOCAL_BUCKET.into(),
            key: key.into(),
            url: format!("file://{}", abs.display()),
        })
    }

    async fn check(&self) -> Result<(), StoreError> {
        tokio::fs::create_dir_all(&self.out_dir)
            .await
            .map_err(|e| StoreError::Refused(format!("{}: {e}", self.out_dir.display())))
    }

    fn describe(&self) -> String {
        format!("directory {}", self.out_dir.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip_and_containment() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("in/b")).unwrap();
        std::fs::write(dir.path().join("in/b/x.png"), b"12345").unwrap();
        let s = LocalStore::new(Some(dir.path().join("in")), dir.path().join("out"));
        s.check().await.unwrap();
        assert_eq!(s.fetch("b", "x.png", 10).await.unwrap(), b"12345");
        assert!(matches!(
            s.fetch("b", "x.png", 4).await,
            Err(StoreError::TooLarge { .. })
        ));
        assert!(matches!(
            s.fetch("b", "nope.png", 10).await,
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            s.fetch("b", "../b/x.png", 10).await,
            Err(StoreError::NotFound(_))
        ));
        let o = s.put_png("images/j.png", vec![1, 2], "").await.unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("out/images/j.png")).unwrap(),
            vec![1, 2]
        );
        assert!(o.url.starts_with("file://"));
    }
}
