//! The output file and the resume bookkeeping built on it.
//!
//! The output is JSONL, one result per line as received, appended and
//! flushed line by line. It is also the only record of what is done: on
//! start the file is read back, every `jobId` in it is done (the last line of
//! an id wins), and a torn last line left by a crash is cut off.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// How a job ended, as far as the output file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    Ok,
    /// The result line, kept for the failures file.
    Failed {
        code: String,
        line: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("cannot open the output {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot write the output {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// The output file, opened for appending, and what it already holds.
pub struct Ledger {
    path: PathBuf,
    file: File,
    done: HashMap<String, Recorded>,
    /// Bytes of a torn last line that were cut off on open.
    pub repaired_bytes: u64,
    /// Complete lines that are not results (kept, ignored).
    pub unreadable_lines: u64,
}

impl Ledger {
    /// Opens (creating it and its folder if needed) and reads back `path`.
    pub fn open(path: &Path) -> Result<Ledger, LedgerError> {
        let open_err = |source| LedgerError::Open {
            path: path.display().to_string(),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(open_err)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(open_err)?;
        let mut ledger = Ledger {
            path: path.to_path_buf(),
            file: file.try_clone().map_err(open_err)?,
            done: HashMap::new(),
            repaired_bytes: 0,
            unreadable_lines: 0,
        };
        let good_len = ledger.read_back(&mut file).map_err(open_err)?;
        let len = file.metadata().map_err(open_err)?.len();
        if good_len < len {
            // A crash in the middle of a write: drop the partial line so the
            // next append starts on a line of its own.
            file.set_len(good_len).map_err(open_err)?;
            ledger.repaired_bytes = len - good_len;
        }
        Ok(ledger)
    }

    /// Reads every line; returns the length of the file up to the end of the
    /// last line that is complete.
    fn read_back(&mut self, file: &mut File) -> io::Result<u64> {
        file.seek(SeekFrom::Start(0))?;
        let mut reader = BufReader::new(file);
        let mut buf = Vec::new();
        let mut good_len = 0u64;
        loop {
            buf.clear();
            let n = reader.read_until(b'\n', &mut buf)?;
            if n == 0 {
                return Ok(good_len);
            }
            let complete = buf.ends_with(b"\n");
            let parsed = serde_json::from_slice::<serde_json::Value>(&buf).ok();
            match (parsed, complete) {
                (Some(value), _) => {
                    self.note(&value, String::from_utf8_lossy(&buf).trim_end());
                    if !complete {
                        // A whole result without its newline: keep it, and
                        // give it the newline it lacks.
                        self.file.write_all(b"\n")?;
                    }
                    good_len += n as u64 + u64::from(!complete);
                }
                (None, true) => {
                    if !buf.iter().all(u8::is_ascii_whitespace) {
                        self.unreadable_lines += 1;
                    }
                    good_len += n as u64;
                }
                (None, false) => return Ok(good_len),
            }
        }
    }

    fn note(&mut self, value: &serde_json::Value, line: &str) {
        let field = |a: &str, b: &str| {
            value
                .get(a)
                .or_else(|| value.get(b))
                .and_then(|v| v.as_str())
        };
        let Some(id) = field("jobId", "job_id").filter(|id| !id.is_empty()) else {
            self.unreadable_lines += 1;
            return;
        };
        let recorded = if field("status", "status") == Some("ok") {
            Recorded::Ok
        } else {
            let code = value
                .pointer("/error/code")
                .and_then(|v| v.as_str())
                .unwrap_or("unknown");
            Recorded::Failed {
                code: code.to_string(),
                line: line.to_string(),
            }
        };
        self.done.insert(id.to_string(), recorded);
    }

    /// Has `id` a result (ok, or failed unless `retry_failed`)?
    pub fn is_done(&self, id: &str, retry_failed: bool) -> bool {
        match self.done.get(id) {
            Some(Recorded::Ok) => true,
            Some(Recorded::Failed { .. }) => !retry_failed,
            None => false,
        }
    }

    pub fn get(&self, id: &str) -> Option<&Recorded> {
        self.done.get(id)
    }

    /// Appends one result line (made single-line if it is not) and flushes it.
    pub fn record(&mut self, body: &[u8]) -> Result<Recorded, LedgerError> {
        let write_err = |source| LedgerError::Write {
            path: self.path.display().to_string(),
            source,
        };
        let value: serde_json::Value = serde_json::from_slice(body)
            .map_err(|e| write_err(io::Error::new(io::ErrorKind::InvalidData, e)))?;
        let mut line = if body.contains(&b'\n') || body.contains(&b'\r') {
            serde_json::to_vec(&value).unwrap_or_default()
        } else {
            body.to_vec()
        };
        let text = String::from_utf8_lossy(&line).into_owned();
        line.push(b'\n');
        // One write per line: a crash leaves at most one torn line, at the end.
        self.file.write_all(&line).map_err(write_err)?;
        self.file.flush().map_err(write_err)?;
        self.note(&value, &text);
        let id = value
            .get("jobId")
            .or_else(|| value.get("job_id"))
            .and_then(|v| v.as_str())
            .unwrap_or("");
        Ok(self.done.get(id).cloned().unwrap_or(Recorded::Ok))
    }

    /// Jobs with a result in the file.
    pub fn len(&self) -> usize {
        self.done.len()
    }

    pub fn is_empty(&self) -> bool {
        self.done.is_empty()
    }

    /// The ids whose last result failed, with their code.
    pub fn failures(&self) -> impl Iterator<Item = (&str, &str, &str)> {
        self.done.iter().filter_map(|(id, r)| match r {
            Recorded::Failed { code, line } => Some((id.as_str(), code.as_str(), line.as_str())),
            Recorded::Ok => None,
        })
    }

    /// `<output>.failures.jsonl`.
    pub fn failures_path(&self) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(".failures.jsonl");
        PathBuf::from(name)
    }

    /// Rewrites the failures file from the output's current state (the
    /// failed result lines, sorted by job id), or removes a stale one when
    /// nothing failed. Returns the number of failures.
    pub fn write_failures_file(&self) -> io::Result<usize> {
        let path = self.failures_path();
        let mut failures: Vec<_> = self.failures().collect();
        if failures.is_empty() {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => return Ok(0),
            }
        }
        failures.sort_unstable();
        let tmp = path.with_extension("jsonl.tmp");
        {
            let mut out = io::BufWriter::new(File::create(&tmp)?);
            for (_, _, line) in &failures {
                out.write_all(line.as_bytes())?;
                out.write_all(b"\n")?;
            }
            out.flush()?;
        }
        std::fs::rename(&tmp, &path)?;
        Ok(failures.len())
    }

    /// Ids in the file, for tests and reports.
    pub fn ids(&self) -> HashSet<&str> {
        self.done.keys().map(String::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK_A: &str = r#"{"version":1,"jobId":"a","status":"ok","text":"x"}"#;
    const FAIL_B: &str = r#"{"version":1,"jobId":"b","status":"error","error":{"code":"invalid_image","message":"m"}}"#;
    const OK_B: &str = r#"{"version":1,"jobId":"b","status":"ok"}"#;

    fn output_with(content: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out/results.jsonl");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, content).unwrap();
        (dir, path)
    }

    #[test]
    fn reads_back_done_and_failed_jobs() {
        let (_dir, path) = output_with(&format!("{OK_A}\n{FAIL_B}\n\n"));
        let ledger = Ledger::open(&path).unwrap();
        assert!(ledger.is_done("a", false));
        assert!(ledger.is_done("b", false));
        assert!(
            !ledger.is_done("b", true),
            "--retry-failed re-sends failures"
        );
        assert!(ledger.is_done("a", true));
        assert!(!ledger.is_done("c", false));
        assert_eq!(
            ledger.failures().map(|f| f.1).collect::<Vec<_>>(),
            ["invalid_image"]
        );
        assert_eq!(ledger.repaired_bytes, 0);
    }

    #[test]
    fn a_torn_last_line_is_cut_and_appends_start_clean() {
        let (_dir, path) = output_with(&format!("{OK_A}\n{{\"version\":1,\"jobId\":\"b\",\"sta"));
        let mut ledger = Ledger::open(&path).unwrap();
        assert_eq!(ledger.repaired_bytes, 29);
        assert!(!ledger.is_done("b", false));
        ledger.record(OK_B.as_bytes()).unwrap();
        drop(ledger);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{OK_A}\n{OK_B}\n")
        );
    }

    #[test]
    fn a_complete_last_line_without_newline_is_kept() {
        let (_dir, path) = output_with(OK_A);
        let mut ledger = Ledger::open(&path).unwrap();
        assert!(ledger.is_done("a", false));
        ledger.record(OK_B.as_bytes()).unwrap();
        drop(ledger);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{OK_A}\n{OK_B}\n")
        );
    }

    #[test]
    fn garbage_in_the_middle_is_counted_not_fatal() {
        let (_dir, path) = output_with(&format!("{OK_A}\nnot json\n{{\"no\":\"id\"}}\n{FAIL_B}\n"));
        let ledger = Ledger::open(&path).unwrap();
        assert_eq!(ledger.unreadable_lines, 2);
        assert_eq!(ledger.len(), 2);
    }

    #[test]
    fn later_results_override_and_failures_file_follows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        let mut ledger = Ledger::open(&path).unwrap();
        ledger.record(OK_A.as_bytes()).unwrap();
        let recorded = ledger.record(FAIL_B.as_bytes()).unwrap();
        assert!(matches!(recorded, Recorded::Failed { ref code, .. } if code == "invalid_image"));
        assert_eq!(ledger.write_failures_file().unwrap(), 1);
        let failures_path = dir.path().join("r.jsonl.failures.jsonl");
        assert_eq!(
            std::fs::read_to_string(&failures_path).unwrap(),
            format!("{FAIL_B}\n")
        );
        // A retry succeeded: the failures file goes away.
        assert_eq!(ledger.record(OK_B.as_bytes()).unwrap(), Recorded::Ok);
        assert_eq!(ledger.write_failures_file().unwrap(), 0);
        assert!(!failures_path.exists());
        drop(ledger);
        let reopened = Ledger::open(&path).unwrap();
        assert_eq!(reopened.get("b"), Some(&Recorded::Ok));
    }

    #[test]
    fn multi_line_bodies_are_written_on_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        let mut ledger = Ledger::open(&path).unwrap();
        ledger
            .record(b"{\n  \"jobId\": \"p\",\n  \"status\": \"ok\"\n}")
            .unwrap();
        assert!(ledger.record(b"not json").is_err());
        drop(ledger);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1);
        assert!(text.contains("\"jobId\":\"p\""), "{text}");
    }
}
