//! `docker-compose.yml` as docker compose reads it: YAML, with `${VAR}` references resolved from
//! the `.env` file next to it.

use std::collections::BTreeMap;
use std::path::Path;

use serde_norway::Value;

use crate::DeployError;

/// A compose file with its `.env`.
pub struct Compose {
    pub doc: Value,
    pub env: BTreeMap<String, String>,
}

impl Compose {
    /// Reads `docker-compose.yml` and `.env` from `dir`.
    pub fn load(dir: &Path) -> Result<Compose, DeployError> {
        let text = read(&dir.join("docker-compose.yml"))?;
        let doc = serde_norway::from_str(&text).map_err(|source| DeployError::Yaml {
            path: "docker-compose.yml".into(),
            source,
        })?;
        let env = parse_dotenv(&read(&dir.join(".env"))?);
        Ok(Compose { doc, env })
    }

    /// Service names, in file order.
    pub fn service_names(&self) -> Vec<String> {
        self.doc["services"]
            .as_mapping()
            .map(|m| {
                m.keys()
                    .filter_map(|k| k.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn service(&self, name: &str) -> &Value {
        &self.doc["services"][name]
    }

    /// A service's environment (map or `KEY=VALUE` list form), interpolated from `.env`.
    pub fn environment(&self, service: &str) -> Result<BTreeMap<String, String>, DeployError> {
        let raw = &self.service(service)["environment"];
        let mut out = BTreeMap::new();
        if let Some(map) = raw.as_mapping() {
            for (key, value) in map {
                let key = scalar(key).ok_or_else(|| invalid(service, "environment key"))?;
                let value = scalar(value).unwrap_or_default();
                out.insert(key, interpolate(&value, &self.env)?);
            }
        } else if let Some(list) = raw.as_sequence() {
            for item in list {
                let item = item
                    .as_str()
                    .ok_or_else(|| invalid(service, "environment"))?;
                let (key, value) = item.split_once('=').unwrap_or((item, ""));
                out.insert(key.to_owned(), interpolate(value, &self.env)?);
            }
        }
        Ok(out)
    }

    /// `depends_on` as service → condition (`service_started` for the short list form).
    pub fn depends_on(&self, service: &str) -> BTreeMap<String, String> {
        let raw = &self.service(service)["depends_on"];
        let mut out = BTreeMap::new();
        if let Some(list) = raw.as_sequence() {
            for item in list.iter().filter_map(Value::as_str) {
                out.insert(item.to_owned(), "service_started".to_owned());
            }
        } else if let Some(map) = raw.as_mapping() {
            for (key, value) in map {
                if let Some(key) = key.as_str() {
                    let condition = value["condition"].as_str().unwrap_or("service_started");
                    out.insert(key.to_owned(), condition.to_owned());
                }
            }
        }
        out
    }

    /// Bind mounts of a service: (host path as written, container path).
    pub fn bind_mounts(&self, service: &str) -> Vec<(String, String)> {
        self.volumes(service)
            .into_iter()
            .filter(|(source, _)| source.starts_with('.') || source.starts_with('/'))
            .collect()
    }

    /// Named volumes of a service: (volume, container path).
    pub fn named_volumes(&self, service: &str) -> Vec<(String, String)> {
        self.volumes(service)
            .into_iter()
            .filter(|(source, _)| !(source.starts_with('.') || source.starts_with('/')))
            .collect()
    }

    fn volumes(&self, service: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for item in self.service(service)["volumes"]
            .as_sequence()
            .into_iter()
            .flatten()
        {
            if let Some(short) = item.as_str() {
                let mut parts = short.split(':');
                if let (Some(source), Some(target)) = (parts.next(), parts.next()) {
                    out.push((source.to_owned(), target.to_owned()));
                }
            } else if let (Some(source), Some(target)) =
                (item["source"].as_str(), item["target"].as_str())
            {
                out.push((source.to_owned(), target.to_owned()));
            }
        }
        out
    }

    /// Published ports: (host port, container port), interpolated.
    pub fn ports(&self, service: &str) -> Result<Vec<(u16, u16)>, DeployError> {
        let mut out = Vec::new();
        for item in self.service(service)["ports"]
            .as_sequence()
            .into_iter()
            .flatten()
        {
            let text = interpolate(&scalar(item).unwrap_or_default(), &self.env)?;
            let parts: Vec<&str> = text.split(':').collect();
            let [.., host, container] = parts[..] else {
                return Err(invalid(service, &format!("port {text}")));
            };
            match (host.parse(), container.parse()) {
                (Ok(host), Ok(container)) => out.push((host, container)),
                _ => return Err(invalid(service, &format!("port {text}"))),
            }
        }
        Ok(out)
    }

    /// Every `${VAR...}` the file refers to (escaped `$$` excluded).
    pub fn referenced_variables(&self) -> Vec<String> {
        let text = serde_norway::to_string(&self.doc).unwrap_or_default();
        variables(&text)
    }
}

fn invalid(service: &str, what: &str) -> DeployError {
    DeployError::Invalid(format!("service {service}: unreadable {what}"))
}

fn read(path: &Path) -> Result<String, DeployError> {
    std::fs::read_to_string(path).map_err(|source| DeployError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// A YAML scalar as the string docker compose would pass on.
pub fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `KEY=VALUE` lines; `#` comments and blank lines skipped, optional quotes removed.
pub fn parse_dotenv(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| {
            let value = value.trim();
            let unquoted = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(value);
            (key.trim().to_owned(), unquoted.to_owned())
        })
        .collect()
}

/// Resolves `$$`, `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}` and
/// `${VAR?error}` like docker compose; a required variable that is missing is an error.
pub fn interpolate(text: &str, env: &BTreeMap<String, String>) -> Result<String, DeployError> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| DeployError::Invalid(format!("unclosed ${{ in {text:?}")))?;
            out.push_str(&resolve(&body[..end], env)?);
            rest = &body[end + 1..];
        } else {
            let len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            if len == 0 {
                out.push('$');
            } else {
                out.push_str(env.get(&after[..len]).map_or("", String::as_str));
            }
            rest = &after[len..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn resolve(expression: &str, env: &BTreeMap<String, String>) -> Result<String, DeployError> {
    let name_len = expression
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(expression.len());
    let (name, modifier) = expression.split_at(name_len);
    let value = env.get(name);
    let set_and_nonempty = value.is_some_and(|v| !v.is_empty());
    let resolved = if let Some(default) = modifier.strip_prefix(":-") {
        if set_and_nonempty {
            value.cloned()
        } else {
            Some(default.to_owned())
        }
    } else if let Some(default) = modifier.strip_prefix('-') {
        Some(value.cloned().unwrap_or_else(|| default.to_owned()))
    } else if let Some(message) = modifier.strip_prefix(":?") {
        if !set_and_nonempty {
            return Err(DeployError::Invalid(format!(
                "{name} is required: {message}"
            )));
        }
        value.cloned()
    } else if let Some(message) = modifier.strip_prefix('?') {
        if value.is_none() {
            return Err(DeployError::Invalid(format!(
                "{name} is required: {message}"
            )));
        }
        value.cloned()
    } else if modifier.is_empty() {
        Some(value.cloned().unwrap_or_default())
    } else {
        return Err(DeployError::Invalid(format!(
            "unsupported interpolation ${{{expression}}}"
        )));
    };
    Ok(resolved.unwrap_or_default())
}

/// Names of the variables `text` refers to (`${NAME...}` and `$NAME`, not `$$`).
pub fn variables(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            rest = tail;
            continue;
        }
        let body = after.strip_prefix('{').unwrap_or(after);
        let len = body
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(body.len());
        if len > 0 {
            names.push(body[..len].to_owned());
        }
        rest = &body[len..];
    }
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn interpolation_follows_docker_compose() {
        let env = env(&[("PORT", "3000"), ("EMPTY", "")]);
        let cases = [
            ("${PORT}", "3000"),
            ("$PORT/x", "3000/x"),
            ("a $$HOSTNAME b", "a $HOSTNAME b"),
            ("${MISSING:-9}", "9"),
            ("${EMPTY:-9}", "9"),
            ("${EMPTY-9}", ""),
            ("${PORT:?set it}", "3000"),
            ("127.0.0.1:${PORT:?x}:3000", "127.0.0.1:3000:3000"),
            ("cost $ 5", "cost $ 5"),
        ];
        for (text, expected) in cases {
            assert_eq!(interpolate(text, &env).unwrap(), expected, "{text}");
        }
        let error = interpolate("${MISSING:?set MISSING in .env}", &env).unwrap_err();
        assert!(error.to_string().contains("MISSING"), "{error}");
        assert!(interpolate("${EMPTY:?x}", &env).is_err());
        assert!(interpolate("${EMPTY?x}", &env).is_ok());
    }

    #[test]
    fn variables_skip_escaped_dollars() {
        assert_eq!(
            variables("${A:?x} $B $$C ${D:-1} $$ {E}"),
            ["A", "B", "D"].map(String::from)
        );
    }

    #[test]
    fn dotenv_skips_comments_and_unquotes() {
        let parsed = parse_dotenv("# c\n\nA=1\nB = \"two words\"\nC='x=y'\n  # d\n");
        assert_eq!(parsed, env(&[("A", "1"), ("B", "two words"), ("C", "x=y")]));
    }

    #[test]
    fn environment_map_and_list_forms() {
        let doc: Value = serde_norway::from_str(
            "services:\n  a:\n    environment:\n      X: ${P}\n      N: 1\n      B: true\n  b:\n    environment: [\"Y=${P:-d}\", \"Z\"]\n",
        )
        .unwrap();
        let compose = Compose {
            doc,
            env: env(&[("P", "p")]),
        };
        assert_eq!(
            compose.environment("a").unwrap(),
            env(&[("X", "p"), ("N", "1"), ("B", "true")])
        );
        assert_eq!(
            compose.environment("b").unwrap(),
            env(&[("Y", "p"), ("Z", "")])
        );
    }
}
