//! A tier's model allow-list: globs compiled once per cached credential, and the model
//! lists (`/api/tags`, `/v1/models`) cut down to what the caller may use.

use globset::{Glob, GlobSet, GlobSetBuilder};

/// A compiled model allow-list.
#[derive(Debug, Clone)]
pub struct ModelFilter {
    set: GlobSet,
}

impl ModelFilter {
    /// The filter for `patterns`; `None` when they allow every model.
    pub fn new(patterns: &[String]) -> Option<ModelFilter> {
        if patterns.iter().any(|p| p == "*") {
            return None;
        }
        let mut b = GlobSetBuilder::new();
        for p in patterns {
            // Patterns were checked on the way in; a bad one here allows nothing.
            if let Ok(g) = Glob::new(p) {
                b.add(g);
            }
        }
        let set = b.build().unwrap_or_else(|_| GlobSet::empty());
        Some(ModelFilter { set })
    }

    /// Whether `model` is allowed. `llama3` also matches a pattern written for
    /// `llama3:latest`, as Ollama treats them as the same model.
    pub fn allows(&self, model: &str) -> bool {
        self.set.is_match(model)
            || (!model.contains(':') && self.set.is_match(format!("{model}:latest")))
    }

    /// Removes from an Ollama (`{"models":[{"name":…}]}`) or OpenAI
    /// (`{"data":[{"id":…}]}`) model list every model this filter does not allow.
    pub fn retain_allowed(&self, doc: &mut serde_json::Value) {
        for (list, field) in [("models", "name"), ("data", "id")] {
            if let Some(items) = doc.get_mut(list).and_then(|v| v.as_array_mut()) {
                items.retain(|m| {
                    m.get(field)
                        .and_then(|n| n.as_str())
                        .is_some_and(|n| self.allows(n))
                });
            }
        }
    }
}
