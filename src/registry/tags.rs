//! Tag lists, following `Link` pagination.

use reqwest::{Method, header};

use super::client::{Client, RegistryError, read_capped};
use super::routes::Route;
use crate::limits::MAX_MANIFEST_BYTES;

impl Client {
    /// Every tag of a repository, following pagination.
    pub async fn tags(&self, repo: &str) -> Result<Vec<String>, RegistryError> {
        #[derive(serde::Deserialize)]
        struct TagList {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let route = Route::Tags {
            name: repo.to_string(),
        };
        let mut out = Vec::new();
        let mut query = String::new();
        loop {
            let held = self.send(Method::GET, &route, &query, &[]).await?;
            let next = next_link(&held.resp);
            let url = held.resp.url().to_string();
            let body = read_capped(held.resp, MAX_MANIFEST_BYTES)
                .await
                .map_err(|source| RegistryError::Transport {
                    method: Method::GET,
                    url: url.clone(),
                    source,
                })?;
            let list: TagList =
                serde_json::from_slice(&body).map_err(|e| RegistryError::Config {
                    host: self.host().to_string(),
                    why: format!("tags list of {repo} is not JSON: {e}"),
                })?;
            out.extend(list.tags.unwrap_or_default());
            match next {
                Some(q) => query = q,
                None => return Ok(out),
            }
        }
    }
}

/// The query part of a `Link: <...?n=..&last=..>; rel="next"` header.
fn next_link(resp: &reqwest::Response) -> Option<String> {
    let link = resp.headers().get(header::LINK)?.to_str().ok()?;
    let target = link
        .split(';')
        .next()?
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>');
    target.find('?').map(|i| target[i..].to_string())
}
