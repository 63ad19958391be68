//! Tag lists, followed through `Link` pagination to the end.

use reqwest::{Method, header};

use super::client::{Client, Held, RegistryError};
use super::routes::Route;
use super::uploads::push_scope;
use crate::limits::{ENV_TAGS_PAGE_SIZE, MAX_LIST_PAGES, MAX_MANIFEST_BYTES, TAGS_PAGE_SIZE};

#[derive(serde::Deserialize)]
struct Page {
    #[serde(default)]
    tags: Option<Vec<String>>,
}

/// The `?…` part of a `Link: <…>; rel="next"` header, if the header names a next page.
fn next_query(link: &str) -> Option<String> {
    let (target, params) = link.split_once(';')?;
    if !params.contains("rel=\"next\"") && !params.contains("rel=next") {
        return None;
    }
    let target = target.trim().trim_start_matches('<').trim_end_matches('>');
    target.find('?').map(|i| target[i..].to_string())
}

impl Client {
    /// Every tag of `repo`, in the registry's order, asked for in pages of [`TAGS_PAGE_SIZE`] and
    /// followed through `Link` headers (at most [`MAX_LIST_PAGES`] pages).
    pub async fn list_tags(&self, repo: &str) -> Result<Vec<String>, RegistryError> {
        let route = Route::Tags {
            name: repo.to_string(),
        };
        let mut tags = Vec::new();
        let page = std::env::var(ENV_TAGS_PAGE_SIZE)
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&n| n > 0)
            .unwrap_or(TAGS_PAGE_SIZE);
        // Pages are asked for: distribution paginates (with `Link`) only when told `n`.
        let mut query = format!("?n={page}");
        for _ in 0..MAX_LIST_PAGES {
            let held = self.send(Method::GET, &route, &query, &[]).await?;
            let (page, next) = self.tags_page(held, repo).await?;
            tags.extend(page);
            match next {
                Some(q) if q != query => query = q,
                _ => return Ok(tags),
            }
        }
        Err(RegistryError::Config {
            host: self.host().to_string(),
            why: format!("{repo}: more than {MAX_LIST_PAGES} pages of tags"),
        })
    }

    /// Whether `repo` has no tag yet (one page of one tag asked for, with the push scope a push
    /// needs anyway), so a push may open each upload without asking about the blob first.
    pub async fn has_no_tags(&self, repo: &str) -> Result<bool, RegistryError> {
        let route = Route::Tags {
            name: repo.to_string(),
        };
        let url = self.url(&route, "?n=1").await?;
        let scope = push_scope(repo);
        match self
            .send_url(Method::GET, url, &scope, &[], None, self.permit().await)
            .await
        {
            Ok(held) => Ok(self.tags_page(held, repo).await?.0.is_empty()),
            Err(e) if e.is_not_found() => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// The tags of one answered page of `repo`'s list, and the query of the next page if its
    /// `Link` header names one.
    async fn tags_page(
        &self,
        held: Held,
        repo: &str,
    ) -> Result<(Vec<String>, Option<String>), RegistryError> {
        let url = held.resp.url().to_string();
        let next = held
            .resp
            .headers()
            .get(header::LINK)
            .and_then(|v| v.to_str().ok())
            .and_then(next_query);
        let body = self
            .read_body(
                held.resp,
                MAX_MANIFEST_BYTES,
                &format!("reading the tags of {repo}"),
            )
            .await?;
        let page: Page = serde_json::from_slice(&body).map_err(|e| RegistryError::Config {
            host: self.host().to_string(),
            why: format!("{url}: tag list does not parse: {e}"),
        })?;
        Ok((page.tags.unwrap_or_default(), next))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn link_headers() {
        assert_eq!(
            super::next_query("</v2/x/tags/list?last=b&n=2>; rel=\"next\"").as_deref(),
            Some("?last=b&n=2")
        );
        assert_eq!(
            super::next_query("</v2/x/tags/list?n=2>; rel=\"prev\""),
            None
        );
    }
}
