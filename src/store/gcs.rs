//! Google Cloud Storage through its native API, with a service account JSON or the
//! application-default chain; `--endpoint-url` points it at an emulator.

use std::sync::Arc;

use object_store::gcp::GoogleCloudStorageBuilder;

use super::raw::{GcsJson, Raw};
use super::s3::{client_options, reqwest_client, retry_config};
use super::{Result, Source, Store, StoreError, StoreErrorKind, StoreOptions};

const DEFAULT_BASE_URL: &str = "https://storage.googleapis.com";

pub(super) fn open(source: &Source, opts: &StoreOptions) -> Result<Store> {
    let key_text = match &opts.service_account_file {
        None if opts.service_account_key.is_some() => opts.service_account_key.clone(),
        Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
            StoreError::new(
                StoreErrorKind::Config,
                format!("service account file {}: {e}", path.display()),
            )
        })?),
        None => None,
    };
    // A key file may name its own endpoint (emulators do): honour it for markers too.
    let key_base = key_text
        .as_deref()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
        .and_then(|v| v.get("gcs_base_url")?.as_str().map(str::to_string));
    let base_url = opts
        .endpoint_url
        .clone()
        .or(key_base)
        .unwrap_or_else(|| DEFAULT_BASE_URL.to_string())
        .trim_end_matches('/')
        .to_string();
    let allow_http = base_url.starts_with("http://");
    let mut builder = GoogleCloudStorageBuilder::new()
        .with_bucket_name(&source.bucket)
        .with_client_options(client_options(opts, allow_http))
        .with_retry(retry_config(opts))
        .with_skip_signature(opts.no_sign_request);
    if opts.endpoint_url.is_some() {
        builder = builder.with_base_url(&base_url);
    }
    if let Some(text) = key_text {
        builder = builder.with_service_account_key(text);
    } else if let Ok(path) = std::env::var("GOOGLE_APPLICATION_CREDENTIALS") {
        builder = builder.with_application_credentials(path);
    }
    let gcs = builder
        .build()
        .map_err(|e| StoreError::new(StoreErrorKind::Config, e.to_string()))?;
    let credentials = (!opts.no_sign_request).then(|| gcs.credentials().clone());
    let markers = Raw::Gcs(GcsJson {
        http: reqwest_client(opts, allow_http)?,
        base_url: base_url.clone(),
        bucket: source.bucket.clone(),
        credentials,
    });
    let description = format!("gs://{}/{} ({base_url})", source.bucket, source.prefix);
    Ok(Store::new(Arc::new(gcs), markers, false, description))
}
