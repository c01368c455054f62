//! Every result line names the item it answers: its `source` (the path or
//! `s3://` URI as given) and its `prompt`.
//!
//! A result of a job sent by an earlier, interrupted run of the same output
//! can arrive before the input reaches that item again, so the source of
//! every job sent is also noted in `<output>.sources.jsonl` until the run
//! completes. On start only the entries without a result are kept.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ledger::Ledger;

/// What a result line says about its item, besides the worker's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Item {
    pub source: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prompt: String,
}

/// `body` (a JSON object) with `source` and, when not empty, `prompt` put
/// first; the worker's fields keep their order. Anything that is not a JSON
/// object, or already names a source, is returned as is.
pub fn annotate(body: &[u8], item: &Item) -> Vec<u8> {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(body) else {
        return body.to_vec();
    };
    if map.contains_key("source") {
        return body.to_vec();
    }
    let text = String::from_utf8_lossy(body);
    let Some(rest) = text.trim_start().strip_prefix('{') else {
        return body.to_vec();
    };
    let json = |s: &str| serde_json::Value::String(s.to_string()).to_string();
    let mut out = format!("{{\"source\":{}", json(&item.source));
    if !item.prompt.is_empty() && !map.contains_key("prompt") {
        out.push_str(&format!(",\"prompt\":{}", json(&item.prompt)));
    }
    if !map.is_empty() {
        out.push(',');
    }
    out.push_str(rest);
    out.into_bytes()
}

/// `<output>.sources.jsonl`.
pub fn log_path(output: &Path) -> PathBuf {
    let mut name = output.as_os_str().to_owned();
    name.push(".sources.jsonl");
    PathBuf::from(name)
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    job_id: String,
    #[serde(flatten)]
    item: Item,
}

/// The sources of jobs sent and not yet answered.
pub struct SourceLog {
    path: PathBuf,
    file: BufWriter<File>,
    /// Sent by an earlier run, no result yet: by job id.
    pending: HashMap<String, Item>,
}

impl SourceLog {
    /// Reads what an earlier run left (keeping only jobs without a result
    /// in `ledger`) and rewrites the file with just those.
    pub fn open(output: &Path, ledger: &Ledger) -> io::Result<SourceLog> {
        let path = log_path(output);
        let mut pending = HashMap::new();
        match File::open(&path) {
            Ok(file) => {
                for line in BufReader::new(file).lines() {
                    // A torn last line is only a lost source, never an error.
                    let Ok(entry) = serde_json::from_str::<Entry>(&line?) else {
                        continue;
                    };
                    if ledger.get(&entry.job_id).is_none() {
                        pending.insert(entry.job_id, entry.item);
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut file = BufWriter::new(
            OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(&path)?,
        );
        for (job_id, item) in &pending {
            write_entry(&mut file, job_id, item)?;
        }
        file.flush()?;
        Ok(SourceLog {
            path,
            file,
            pending,
        })
    }

    /// Notes a job about to be sent (flushed before the publish, so its
    /// answer can always be named).
    pub fn note(&mut self, job_id: &str, item: &Item) -> io::Result<()> {
        write_entry(&mut self.file, job_id, item)?;
        self.file.flush()
    }

    /// The item of a job an earlier run sent, once.
    pub fn take_pending(&mut self, job_id: &str) -> Option<Item> {
        self.pending.remove(job_id)
    }

    /// Every job has its result: the file is no longer needed.
    pub fn remove(self) {
        drop(self.file);
        let _ = std::fs::remove_file(&self.path);
    }
}

fn write_entry(file: &mut impl Write, job_id: &str, item: &Item) -> io::Result<()> {
    let entry = Entry {
        job_id: job_id.to_string(),
        item: item.clone(),
    };
    let mut line = serde_json::to_vec(&entry).map_err(io::Error::other)?;
    line.push(b'\n');
    file.write_all(&line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(source: &str, prompt: &str) -> Item {
        Item {
            source: source.into(),
            prompt: prompt.into(),
        }
    }

    #[test]
    fn source_and_prompt_go_first() {
        let body = br#"{"version":1,"jobId":"a","status":"ok"}"#;
        let out = annotate(body, &item("cats/a \"1\".png", "What?"));
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with(r#"{"source":"cats/a \"1\".png","prompt":"What?","version":1"#));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["jobId"], "a");
        // No prompt, an empty object, a body that is not an object.
        assert_eq!(
            annotate(b"{}", &item("s3://b/k", "")),
            br#"{"source":"s3://b/k"}"#
        );
        assert_eq!(annotate(b"[1]", &item("x", "")), b"[1]");
        // Never twice.
        let once = annotate(body, &item("x", ""));
        assert_eq!(annotate(&once, &item("y", "")), once);
    }

    #[test]
    fn the_log_keeps_only_jobs_without_a_result() {
        let dir = tempfile::tempdir().unwrap();
        let output = dir.path().join("out.jsonl");
        std::fs::write(&output, "{\"jobId\":\"done\",\"status\":\"ok\"}\n").unwrap();
        let ledger = Ledger::open(&output).unwrap();
        let mut log = SourceLog::open(&output, &ledger).unwrap();
        log.note("done", &item("a.png", "")).unwrap();
        log.note("open", &item("b.png", "hi")).unwrap();
        drop(log);
        // A torn line at the end is skipped.
        let path = log_path(&output);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"jobId\":\"to").unwrap();
        drop(f);

        let mut log = SourceLog::open(&output, &ledger).unwrap();
        assert_eq!(log.take_pending("open"), Some(item("b.png", "hi")));
        assert_eq!(log.take_pending("open"), None);
        assert_eq!(log.take_pending("done"), None);
        let kept = std::fs::read_to_string(&path).unwrap();
        assert_eq!(kept.lines().count(), 1, "{kept}");
        log.remove();
        assert!(!path.exists());
    }
}
