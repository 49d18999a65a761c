//! The CLI's calls to a running agent's HTTP API: one client, answers decoded as JSON, errors that
//! say what to check.

use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::de::DeserializeOwned;

/// How long a CLI call waits for the agent (training waits longer: [`TRAIN_TIMEOUT`]).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `augur models train` waits for the agent's answer.
pub const TRAIN_TIMEOUT: Duration = Duration::from_secs(600);

/// A running agent's API at `--api`.
#[derive(Debug)]
pub struct Agent {
    base: reqwest::Url,
}

/// The error body every failing endpoint answers with.
#[derive(Debug, serde::Deserialize)]
struct ErrorBody {
    error: String,
}

impl Agent {
    pub fn new(api: &str) -> anyhow::Result<Self> {
        let base = reqwest::Url::parse(api).with_context(|| {
            format!("--api {api:?} is not a URL (for example http://127.0.0.1:7070)")
        })?;
        Ok(Self { base })
    }

    /// The URL of `path` (which may carry its own query), with `query` pairs appended (encoded).
    pub fn url(&self, path: &str, query: &[(&str, &str)]) -> anyhow::Result<reqwest::Url> {
        let mut url = self.base.join(path)?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        Ok(url)
    }

    /// GETs `path` and decodes the answer.
    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> anyhow::Result<T> {
        let url = self.url(path, query)?;
        decode(
            url.clone(),
            send(reqwest::Method::GET, url, Some(CLIENT_TIMEOUT)).await?,
        )
        .await
    }

    /// POSTs to `path` (no body) and decodes the answer, waiting up to `timeout`.
    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        timeout: Duration,
    ) -> anyhow::Result<T> {
        let url = self.url(path, &[])?;
        decode(
            url.clone(),
            send(reqwest::Method::POST, url, Some(timeout)).await?,
        )
        .await
    }

    /// POSTs `body` as JSON to `path` and decodes the answer.
    pub async fn post_json<B: serde::Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        let url = self.url(path, &[])?;
        let client = crate::net::http_client(Some(CLIENT_TIMEOUT))?;
        let resp = client.post(url.clone()).json(body).send().await.with_context(|| {
            format!("cannot reach the augur agent at {url}: is it running (`augur agent`) and is --api right?")
        })?;
        decode(url, resp).await
    }

    /// GETs a stream (server-sent events): the response, once its status says success.
    pub async fn stream(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> anyhow::Result<reqwest::Response> {
        let url = self.url(path, query)?;
        let resp = send(reqwest::Method::GET, url.clone(), None).await?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body: Option<ErrorBody> = resp.json().await.ok();
            bail!(
                "{url}: {status}: {}",
                body.map_or_else(String::new, |b| b.error)
            );
        }
        Ok(resp)
    }
}

async fn send(
    method: reqwest::Method,
    url: reqwest::Url,
    timeout: Option<Duration>,
) -> anyhow::Result<reqwest::Response> {
    let client = crate::net::http_client(timeout)?;
    client.request(method, url.clone()).send().await.with_context(|| {
        format!("cannot reach the augur agent at {url}: is it running (`augur agent`) and is --api right?")
    })
}

async fn decode<T: DeserializeOwned>(
    url: reqwest::Url,
    resp: reqwest::Response,
) -> anyhow::Result<T> {
    let status = resp.status();
    let body = resp
        .bytes()
        .await
        .with_context(|| format!("{url}: the answer was cut off"))?;
    if !status.is_success() {
        let why = serde_json::from_slice::<ErrorBody>(&body)
            .map_or_else(|_| String::from_utf8_lossy(&body).into_owned(), |b| b.error);
        bail!("{url}: {status}: {why}");
    }
    serde_json::from_slice(&body).with_context(|| {
        format!("{url} answered with JSON this augur does not understand (is the agent another version?)")
    })
}
