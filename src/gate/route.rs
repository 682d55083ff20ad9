//! The first room of a request: what its path is. Paths that could hide a route (dot
//! segments, empty segments, encoded dots or slashes) are refused, and the route is that
//! of the percent-decoded path, as Ollama's router sees it.

use hyper::Method;

/// What a path is, for routing and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Health,
    Login,
    Admin,
    /// Ollama's model management: admin tier only.
    Management,
    /// `/api/tags`, `/v1/models`, `GET /api/ps`: filtered to the caller's models; they
    /// neither spend nor wait for the caller's budget.
    Models,
    /// `GET /v1/models/{id}`: answered only for a model the caller may use.
    Model,
    /// `/`, `/api/version`, `/api/show`: about the server or a model, not generation;
    /// outside the budget too.
    Info,
    /// Everything else, forwarded after authentication.
    Proxy,
}

impl Route {
    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Route::Health => "health",
            Route::Login => "login",
            Route::Admin => "admin",
            Route::Management => "management",
            Route::Models => "models",
            Route::Model => "model",
            Route::Info => "info",
            Route::Proxy => "proxy",
        }
    }
}

/// Classifies a path. `None`: a path no client of Ollama sends (dot segments, empty
/// segments, encoded dots, slashes or backslashes, malformed escapes), refused so that
/// no spelling can slip a management or admin route past the checks. The route is that
/// of the percent-decoded path, because that is what Ollama's router matches:
/// `/api/pul%6c` is `/api/pull`.
pub fn classify(method: &Method, path: &str) -> Option<Route> {
    if !plain_path(path.as_bytes()) {
        return None;
    }
    let decoded = percent_decoded(path)?;
    let route = match decoded.as_ref() {
        "/healthz" => Route::Health,
        "/auth/login" => Route::Login,
        "/api/pull" | "/api/push" | "/api/create" | "/api/copy" | "/api/delete" => {
            Route::Management
        }
        // The Ollama server's own account (ollama.com sign-in and its keys): only an
        // admin may act as the server.
        "/api/signin" | "/api/signout" | "/api/me" => Route::Management,
        p if p.starts_with("/api/user/") => Route::Management,
        // Ollama's experimental routes (web search and fetch) act as the server's
        // ollama.com account too.
        p if p.starts_with("/api/experimental/") || p == "/api/experimental" => Route::Management,
        "/api/tags" | "/v1/models" => Route::Models,
        "/api/ps" if method == Method::GET => Route::Models,
        p if p.starts_with("/v1/models/") && method == Method::GET => Route::Model,
        "/" | "/api/version" | "/api/show" => Route::Info,
        p if p == "/admin" || p.starts_with("/admin/") => Route::Admin,
        p if p.starts_with("/api/blobs/") || p == "/api/blobs" => Route::Management,
        _ => Route::Proxy,
    };
    Some(route)
}

/// The generation routes (Ollama's and its OpenAI-compatible ones), where the model is
/// named in a JSON body that the gate reads. With [`Route::Models`], [`Route::Model`]
/// and [`Route::Info`] they are the routes the gate knows how to check a model on:
/// a caller whose tier restricts models may use only these, so that a route Ollama
/// adds later (naming its model some other way) cannot slip the allow-list.
pub fn checkable(path: &str) -> bool {
    let Some(decoded) = percent_decoded(path) else {
        return false;
    };
    matches!(
        decoded.as_ref(),
        "/api/generate"
            | "/api/chat"
            | "/api/embed"
            | "/api/embeddings"
            | "/v1/chat/completions"
            | "/v1/completions"
            | "/v1/embeddings"
            | "/v1/responses"
    )
}

/// Whether `path` starts with `/` and has no empty, `.` or `..` segment, no backslash
/// and no escaped dot, slash or backslash (`%2e`, `%2f`, `%5c`). One pass: it runs on
/// every request.
fn plain_path(path: &[u8]) -> bool {
    if path.first() != Some(&b'/') {
        return false;
    }
    let dots = |seg: &[u8]| seg == b"." || seg == b"..";
    let mut seg_start = 1;
    for (i, &b) in path.iter().enumerate().skip(1) {
        match b {
            b'/' => {
                let seg = &path[seg_start..i];
                if seg.is_empty() || dots(seg) {
                    return false;
                }
                seg_start = i + 1;
            }
            b'\\' => return false,
            b'%' => {
                if let Some(hex) = path.get(i + 1..i + 3)
                    && (hex.eq_ignore_ascii_case(b"2e")
                        || hex.eq_ignore_ascii_case(b"2f")
                        || hex.eq_ignore_ascii_case(b"5c"))
                {
                    return false;
                }
            }
            _ => {}
        }
    }
    !dots(&path[seg_start..])
}

/// `path` with its `%XX` escapes decoded (bytes that are not UTF-8 replaced, as no route
/// has any), or `None` for a malformed escape, which Ollama refuses too.
pub fn percent_decoded(path: &str) -> Option<std::borrow::Cow<'_, str>> {
    if !path.contains('%') {
        return Some(std::borrow::Cow::Borrowed(path));
    }
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hi = char::from(hex[0]).to_digit(16)?;
            let lo = char::from(hex[1]).to_digit(16)?;
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(std::borrow::Cow::Owned(
        String::from_utf8_lossy(&out).into_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkable_routes_are_the_generation_routes_however_spelled() {
        assert!(checkable("/api/chat"));
        assert!(checkable("/api/c%68at"));
        assert!(checkable("/v1/chat/completions"));
        assert!(!checkable("/v1/audio/transcriptions"));
        assert!(!checkable("/api/new-thing"));
        assert!(!checkable("/api/chat%"));
    }

    #[test]
    fn paths_that_could_hide_a_route_are_refused() {
        for p in [
            "//admin/keys",
            "/api/../admin/keys",
            "/api/%2e%2e/pull",
            "/api/./pull",
            "/x%2Fy",
            "/a\\b",
            "api",
        ] {
            assert_eq!(classify(&Method::GET, p), None, "{p}");
        }
        assert_eq!(
            classify(&Method::POST, "/api/pull"),
            Some(Route::Management)
        );
        assert_eq!(
            classify(&Method::POST, "/api/blobs/sha256:abc"),
            Some(Route::Management)
        );
        assert_eq!(classify(&Method::GET, "/api/tags"), Some(Route::Models));
        assert_eq!(classify(&Method::POST, "/api/tags"), Some(Route::Models));
        assert_eq!(classify(&Method::GET, "/api/ps"), Some(Route::Models));
        assert_eq!(classify(&Method::GET, "/v1/models/x"), Some(Route::Model));
        assert_eq!(
            classify(&Method::POST, "/api/experimental/web_search"),
            Some(Route::Management)
        );
        assert_eq!(
            classify(&Method::POST, "/api/signout"),
            Some(Route::Management)
        );
        assert_eq!(
            classify(&Method::DELETE, "/api/user/keys/x"),
            Some(Route::Management)
        );
        assert_eq!(classify(&Method::POST, "/api/chat"), Some(Route::Proxy));
        assert_eq!(classify(&Method::GET, "/admin/keys"), Some(Route::Admin));
    }

    /// The one-pass check agrees with the plain statement of the rule on every path
    /// of up to five characters drawn from the ones that matter.
    #[test]
    fn plain_path_matches_the_rule() {
        fn rule(p: &str) -> bool {
            let escaped = p.as_bytes().windows(3).any(|w| {
                w[0] == b'%'
                    && [&b"2e"[..], b"2f", b"5c"]
                        .iter()
                        .any(|e| w[1..].eq_ignore_ascii_case(e))
            });
            p.starts_with('/')
                && !p.contains("//")
                && !p.contains('\\')
                && !p.split('/').any(|seg| seg == "." || seg == "..")
                && !escaped
        }
        let alphabet = ['/', '.', '%', '2', 'e', 'F', '5', 'c', '\\', 'a'];
        let mut paths = vec![String::new()];
        for _ in 0..5 {
            let longer: Vec<String> = paths
                .iter()
                .flat_map(|p| alphabet.iter().map(move |c| format!("{p}{c}")))
                .collect();
            for p in &longer {
                assert_eq!(plain_path(p.as_bytes()), rule(p), "{p:?}");
            }
            paths = longer;
        }
    }

    /// Found by `fuzz/` (credential_header): Ollama routes on the percent-decoded path,
    /// so an escaped letter must not turn a filtered or admin-only route into a plain
    /// proxy one.
    #[test]
    fn escaped_spellings_get_the_route_ollama_sees() {
        for (method, p, want) in [
            (Method::GET, "/v%31/models", Some(Route::Models)),
            (Method::GET, "/api/tag%73", Some(Route::Models)),
            (Method::POST, "/api/pul%6c", Some(Route::Management)),
            (Method::POST, "/%61pi/%70ush", Some(Route::Management)),
            (Method::POST, "/api/blob%73/x", Some(Route::Management)),
            (Method::GET, "/a%64min/keys", Some(Route::Admin)),
            // Decoded once, as Ollama does: `%256c` is the literal `%6c`.
            (Method::POST, "/api/pul%256c", Some(Route::Proxy)),
            (Method::POST, "/api/chat%", None),
            (Method::POST, "/api/chat%4", None),
            (Method::POST, "/api/chat%zz", None),
            (Method::POST, "/api/chat%C3%A9", Some(Route::Proxy)),
        ] {
            assert_eq!(classify(&method, p), want, "{method} {p}");
        }
    }
}
