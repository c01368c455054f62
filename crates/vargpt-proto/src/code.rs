//! The stable error codes of the contract, in one place.

proto_enum! {
    /// Why a job failed; the `ErrorCode` enum of the `.proto`.
    pub enum ErrorCode: "ErrorCode" {
        Unspecified = 0 => "error_code_unspecified",
        MalformedJson = 1 => "malformed_json",
        InvalidSchema = 2 => "invalid_schema",
        UnsupportedVersion = 3 => "unsupported_version",
        MissingField = 4 => "missing_field",
        UnknownKind = 5 => "unknown_kind",
        InvalidId = 6 => "invalid_id",
        ParamOutOfRange = 7 => "param_out_of_range",
        InvalidField = 8 => "invalid_field",
        InvalidBase64 = 9 => "invalid_base64",
        InvalidImage = 10 => "invalid_image",
        ImageTooLarge = 11 => "image_too_large",
        PromptTooLong = 12 => "prompt_too_long",
        JobTooLarge = 13 => "job_too_large",
        InvalidImageUri = 14 => "invalid_image_uri",
        BucketNotAllowed = 15 => "bucket_not_allowed",
        ImageNotFound = 16 => "image_not_found",
        DeadlineExceeded = 17 => "deadline_exceeded",
        WorkerCrashed = 18 => "worker_crashed",
        InferenceFailed = 19 => "inference_failed",
        StorageUnavailable = 20 => "storage_unavailable",
        StorageError = 21 => "storage_error",
        Internal = 22 => "internal",
        JobTimeout = 23 => "job_timeout",
    }
}

impl ErrorCode {
    /// Transient failures are worth another attempt later (through the retry
    /// queue); every other code is final and the job is dead-lettered at once.
    pub fn is_transient(self) -> bool {
        matches!(self, ErrorCode::StorageUnavailable)
    }

    /// One line for docs and logs.
    pub fn describe(self) -> &'static str {
        use ErrorCode::*;
        match self {
            Unspecified => "no code (never sent)",
            MalformedJson => "the message body is not UTF-8 JSON",
            InvalidSchema => "valid JSON but not a Job: not an object, wrong value type, unknown field",
            UnsupportedVersion => "`version` is not 1",
            MissingField => "a required field is missing or empty (id, kind, prompt, image)",
            UnknownKind => "`kind` is not caption, vqa, chat or generate_image",
            InvalidId => "`id` is longer than 128 or has characters outside [A-Za-z0-9._:-]",
            ParamOutOfRange => "a sampling parameter is outside its limits or not finite",
            InvalidField => "a field is present where it is not allowed",
            InvalidBase64 => "`image.data` is not valid base64",
            InvalidImage => "the image bytes are not a decodable PNG / JPEG / WebP",
            ImageTooLarge => "the image breaks the byte or pixel limit",
            PromptTooLong => "the prompt breaks the byte limit or the model's token limit",
            JobTooLarge => "the message breaks the byte limit",
            InvalidImageUri => "`image.uri` is not s3://bucket/key",
            BucketNotAllowed => "`image.uri` names a bucket that is not on the allow-list",
            ImageNotFound => "`image.uri` names an object that does not exist",
            DeadlineExceeded => "the job's deadline passed before it was processed",
            WorkerCrashed => "the job was delivered the maximum number of times without finishing (it kills its worker)",
            InferenceFailed => "the engine failed on this input",
            StorageUnavailable => "object storage failed transiently, and every retry failed too",
            StorageError => "object storage refused the request (e.g. access denied)",
            Internal => "a bug in the worker",
            JobTimeout => "the job ran longer than the worker's time bound and was stopped",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_numbers_are_dense() {
        for (i, code) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(code.number(), i as i32);
            assert_eq!(ErrorCode::from_name(code.as_str()), Some(*code));
            let json = serde_json::to_string(code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            let back: ErrorCode = serde_json::from_str(&json).unwrap();
            assert_eq!(back, *code);
        }
        let by_number: ErrorCode = serde_json::from_str("16").unwrap();
        assert_eq!(by_number, ErrorCode::ImageNotFound);
        assert!(serde_json::from_str::<ErrorCode>("\"nope\"").is_err());
    }

    #[test]
    fn only_storage_outages_are_transient() {
        let transient: Vec<_> = ErrorCode::ALL.iter().filter(|c| c.is_transient()).collect();
        assert_eq!(transient, vec![&ErrorCode::StorageUnavailable]);
    }
}
