//! `--table out.csv`: the run as one CSV table (RFC 4180, UTF-8, a header
//! row) that `pandas.read_csv` and Hugging Face `datasets.load_dataset("csv")`
//! read as is: one row per job (the last result of an id wins, as on
//! resume), in the order of the output file.
//!
//! Provenance columns come from the result's optional `provenance` object;
//! results of workers that do not send it leave them empty.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use serde_json::Value;

/// The columns, in order.
pub const COLUMNS: &[&str] = &[
    "source",
    "job_id",
    "kind",
    "prompt",
    "text",
    "image_uri",
    "status",
    "error_code",
    "error_message",
    "model_id",
    "model_revision",
    "dtype",
    "device",
    "tensor_parallel",
    "worker_version",
    "seed",
    "params",
];

/// Writes the table of the JSONL `output` to `table` (through a temporary
/// file, so a reader never sees half a table). Returns the number of rows.
pub fn write_table(output: &Path, table: &Path) -> io::Result<usize> {
    // First pass: the line of each id's last result.
    let mut last: HashMap<String, usize> = HashMap::new();
    for_each_result(output, |n, value| {
        if let Some(id) = job_id(value) {
            last.insert(id.to_string(), n);
        }
    })?;
    let mut tmp_name = table.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp_name);
    let mut out = BufWriter::new(File::create(&tmp)?);
    write_row(&mut out, COLUMNS.iter().map(|c| c.to_string()))?;
    let mut rows = 0;
    let mut failed = None;
    for_each_result(output, |n, value| {
        let is_last = job_id(value).is_some_and(|id| last.get(id) == Some(&n));
        if is_last && failed.is_none() {
            match write_row(&mut out, row(value)) {
                Ok(()) => rows += 1,
                Err(e) => failed = Some(e),
            }
        }
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    out.flush()?;
    drop(out);
    std::fs::rename(&tmp, table)?;
    Ok(rows)
}

/// Calls `f(line number, result)` for each line of `path` that is a JSON object.
fn for_each_result(path: &Path, mut f: impl FnMut(usize, &Value)) -> io::Result<()> {
    let reader = BufReader::new(File::open(path)?);
    for (n, line) in reader.split(b'\n').enumerate() {
        if let Ok(value @ Value::Object(_)) = serde_json::from_slice::<Value>(&line?) {
            f(n, &value);
        }
    }
    Ok(())
}

fn job_id(value: &Value) -> Option<&str> {
    value
        .get("jobId")
        .or_else(|| value.get("job_id"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// One result as the cells of [`COLUMNS`].
pub fn row(v: &Value) -> Vec<String> {
    let text = |path: &str| cell(v.pointer(path));
    let prov = |field: &str| cell(v.pointer(&format!("/provenance/{field}")));
    let image_uri = match (v.pointer("/image/url"), v.pointer("/image/bucket")) {
        (Some(Value::String(url)), _) if !url.is_empty() => url.clone(),
        (_, Some(Value::String(bucket))) if !bucket.is_empty() => {
            format!("s3://{bucket}/{}", text("/image/key"))
        }
        _ => String::new(),
    };
    let model_id = match prov("modelId") {
        id if id.is_empty() => text("/modelId"),
        id => id,
    };
    let params = match v.pointer("/provenance/params") {
        Some(p @ Value::Object(_)) => p.to_string(),
        other => cell(other),
    };
    vec![
        text("/source"),
        job_id(v).unwrap_or_default().to_string(),
        text("/kind"),
        text("/prompt"),
        text("/text"),
        image_uri,
        text("/status"),
        text("/error/code"),
        text("/error/message"),
        model_id,
        prov("modelRevision"),
        prov("dtype"),
        prov("device"),
        prov("tensorParallel"),
        prov("workerVersion"),
        prov("seed"),
        params,
    ]
}

/// A JSON value as a cell: strings as they are, numbers and booleans as
/// JSON, null or missing as empty, objects and arrays as JSON text.
fn cell(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

fn write_row(out: &mut impl Write, cells: impl IntoIterator<Item = String>) -> io::Result<()> {
    let mut line = String::new();
    for (i, c) in cells.into_iter().enumerate() {
        if i > 0 {
            line.push(',');
        }
        line.push_str(&quote(&c));
    }
    line.push_str("\r\n");
    out.write_all(line.as_bytes())
}

/// RFC 4180: a field with a comma, quote or line break is quoted, its
/// quotes doubled.
pub fn quote(field: &str) -> String {
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_quoted_only_when_needed() {
        assert_eq!(quote("plain"), "plain");
        assert_eq!(quote("a,b"), "\"a,b\"");
        assert_eq!(quote("say \"hi\"\nbye"), "\"say \"\"hi\"\"\nbye\"");
    }

    #[test]
    fn a_result_with_provenance_fills_every_column() {
        let v: Value = serde_json::from_str(
            r#"{"source":"s3://d/a.png","prompt":"a cat","jobId":"j1","kind":"generate_image",
                "status":"ok","modelId":"raw","image":{"bucket":"out","key":"images/j1.png","url":""},
                "provenance":{"modelId":"org/vargpt","modelRevision":"abc123","dtype":"bf16",
                "device":"cuda:0","tensorParallel":2,"workerVersion":"0.1.0+g1234","seed":"42",
                "params":{"cfgScale":1.5}}}"#,
        )
        .unwrap();
        let r = row(&v);
        assert_eq!(r.len(), COLUMNS.len());
        let col = |name: &str| r[COLUMNS.iter().position(|c| *c == name).unwrap()].clone();
        assert_eq!(col("source"), "s3://d/a.png");
        assert_eq!(col("image_uri"), "s3://out/images/j1.png");
        assert_eq!(col("model_id"), "org/vargpt");
        assert_eq!(col("tensor_parallel"), "2");
        assert_eq!(col("seed"), "42");
        assert_eq!(col("params"), r#"{"cfgScale":1.5}"#);
        assert_eq!(col("error_code"), "");
    }

    #[test]
    fn the_last_result_of_an_id_wins_and_text_survives_quoting() {
        let dir = tempfile::tempdir().unwrap();
        let output = dir.path().join("out.jsonl");
        std::fs::write(
            &output,
            concat!(
                r#"{"source":"a.png","jobId":"a","status":"error","error":{"code":"inference_failed","message":"boom"}}"#,
                "\n",
                r#"{"source":"b.png","jobId":"b","status":"ok","text":"two, \"quoted\"\nlines","modelId":"m"}"#,
                "\n",
                "not json\n",
                r#"{"source":"a.png","jobId":"a","status":"ok","text":"fine"}"#,
                "\n",
            ),
        )
        .unwrap();
        let table = dir.path().join("out.csv");
        assert_eq!(write_table(&output, &table).unwrap(), 2);
        let csv = std::fs::read_to_string(&table).unwrap();
        assert!(csv.starts_with("source,job_id,kind,prompt,text,"), "{csv}");
        assert!(
            csv.contains("b.png,b,,,\"two, \"\"quoted\"\"\nlines\",,ok,,,m,"),
            "{csv}"
        );
        assert!(csv.contains("a.png,a,,,fine,,ok,"), "{csv}");
        assert!(!csv.contains("boom"), "{csv}");
        // b comes before a: a's last line is later in the file.
        assert!(csv.find("b.png").unwrap() < csv.find("a.png").unwrap());
    }
}
