//! Every setting in force, as `SHOW CONFIG` and `check-config` print it:
//! each key of the file with its value or its default, passwords hidden,
//! and what the settings left unset resolve to (the database capture and
//! the target use, the users the proxy logs in as).

use super::Config;

/// What a password is shown as.
fn hidden(set: bool) -> String {
    if set { "(set)" } else { "(unset)" }.to_owned()
}

impl Config {
    /// Every setting as `(key, value)`, keys as the file spells them
    /// (`capture.log_dir`, `users.0.name`), sorted within their section;
    /// unset optional settings show what they resolve to.
    pub fn effective(&self) -> Vec<(String, String)> {
        let mut rows = Vec::new();
        match toml::Value::try_from(self) {
            Ok(value) => flatten("", &value, &mut rows),
            Err(e) => rows.push(("error".to_owned(), format!("cannot list the settings: {e}"))),
        }
        for (key, value) in rows.iter_mut() {
            if key.rsplit('.').next() == Some("password") {
                *value = hidden(true);
            }
        }
        let mut derived = |key: &str, value: String| {
            if !rows.iter().any(|(k, _)| k == key) {
                rows.push((key.to_owned(), value));
            }
        };
        let client = |what: &str| format!("(the client's {what})");
        derived("source.database", client("database"));
        derived("source.user", client("user name"));
        derived(
            "source.password",
            "(unset: the client's password, when [[users]] holds it in clear text)".to_owned(),
        );
        derived(
            "capture.database",
            match self.capture_database() {
                Some(d) => format!("{d} (from source.database)"),
                None => "(unset: CAPTURE START <database> names it)".to_owned(),
            },
        );
        derived(
            "capture.user",
            match self.control_user() {
                Some(u) => format!("{u} (from source.user)"),
                None => "(unset: set capture.user or source.user)".to_owned(),
            },
        );
        derived(
            "capture.password",
            if self.source.password.is_some() {
                "(from source.password)".to_owned()
            } else {
                hidden(false)
            },
        );
        if let Some(target) = &self.target {
            derived(
                "target.database",
                match self.capture_database() {
                    Some(d) => format!("{d} (from capture.database)"),
                    None => "(unset: set target.database)".to_owned(),
                },
            );
            derived(
                "target.user",
                match self.control_user() {
                    Some(u) => format!("{u} (from capture.user)"),
                    None => "(unset: set target.user or capture.user)".to_owned(),
                },
            );
            if target.password.is_none() {
                derived("target.password", hidden(false));
            }
        } else {
            derived("target", "(none: add a [target] section to migrate)".to_owned());
        }
        derived(
            "cutover.target_log_dir",
            format!("{} (capture.log_dir/target)", self.target_log_dir().display()),
        );
        derived("source.sslrootcert", "(unset)".to_owned());
        if self.target.is_some() {
            derived("target.sslrootcert", "(unset)".to_owned());
        }
        if self.tls.is_none() {
            derived("tls", "(off: clients that ask for TLS are told no)".to_owned());
        }
        derived("catchup.mapping", "(none: same tables and columns by name)".to_owned());
        derived("metrics.listen", "(off)".to_owned());
        // An empty section whose keys are listed anyway says nothing more.
        let listed: Vec<String> = rows.iter().map(|(k, _)| k.clone()).collect();
        rows.retain(|(k, v)| v != "(none)" || !listed.iter().any(|l| l.starts_with(&format!("{k}."))));
        let section = |k: &str| {
            let top = k.split('.').next().unwrap_or(k);
            ORDER.iter().position(|s| *s == top).unwrap_or(ORDER.len())
        };
        rows.sort_by(|(a, _), (b, _)| section(a).cmp(&section(b)).then_with(|| a.cmp(b)));
        rows
    }
}

/// Sections in the order the README's config reference gives them.
const ORDER: &[&str] = &[
    "listen",
    "admin_database",
    "source",
    "target",
    "tls",
    "auth",
    "users",
    "limits",
    "metrics",
    "capture",
    "catchup",
    "cutover",
];

fn flatten(prefix: &str, value: &toml::Value, rows: &mut Vec<(String, String)>) {
    let join = |k: &str| {
        if prefix.is_empty() {
            k.to_owned()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match value {
        toml::Value::Table(t) if prefix.is_empty() || !t.is_empty() => {
            for (k, v) in t {
                flatten(&join(k), v, rows);
            }
        }
        toml::Value::Array(a) if a.iter().all(|v| v.is_table()) && !a.is_empty() => {
            for (i, v) in a.iter().enumerate() {
                flatten(&join(&i.to_string()), v, rows);
            }
        }
        toml::Value::Table(_) => rows.push((prefix.to_owned(), "(none)".to_owned())),
        toml::Value::String(s) => rows.push((prefix.to_owned(), s.clone())),
        other => rows.push((prefix.to_owned(), other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys the README's configuration reference documents, as the
    /// file spells them (`users.name` for `[[users]] name`).
    fn documented() -> std::collections::BTreeSet<String> {
        let readme = include_str!("../../../README.md");
        let start = readme
            .find("\n## Configuration reference")
            .expect("the README has a configuration reference");
        let rest = &readme[start + 1..];
        let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
        let mut keys = std::collections::BTreeSet::new();
        for line in rest[..end].lines().filter(|l| l.starts_with("| `")) {
            let first = line.split('|').nth(1).unwrap_or_default();
            for quoted in first.split('`').skip(1).step_by(2) {
                let key = quoted.replace("[[users]] ", "users.").replace(['[', ']'], "");
                keys.insert(key);
            }
        }
        keys
    }

    #[test]
    fn every_config_key_is_in_the_readme() {
        let text = "[source]\nhost = \"db1\"\n[target]\nhost = \"db2\"\n\
                    [[users]]\nname = \"app\"\n[auth]\nmethod = \"trust\"\n[metrics]\nlisten = \"127.0.0.1:9187\"\n\
                    [capture.policies]\nddl = \"warn\"\n";
        let c = Config::parse(text, "t").unwrap();
        let documented = documented();
        let missing: Vec<String> = c
            .effective()
            .into_iter()
            .map(|(k, _)| {
                let parts: Vec<&str> = k.split('.').collect();
                match parts.as_slice() {
                    ["users", _, field] => format!("users.{field}"),
                    ["capture", "policies", ..] => "capture.policies".to_owned(),
                    _ => k,
                }
            })
            // A section shown as one row when absent (`tls`) counts as
            // documented by its keys.
            .filter(|k| !documented.contains(k) && !documented.iter().any(|d| d.starts_with(&format!("{k}."))))
            .collect();
        assert!(
            missing.is_empty(),
            "config keys missing from the README's configuration reference: {missing:?}"
        );
    }

    #[test]
    fn every_setting_is_listed_with_passwords_hidden_and_defaults_resolved() {
        let text = "[source]\nhost = \"db1\"\nuser = \"app\"\npassword = \"secret\"\ndatabase = \"shop\"\n\
                    [target]\nhost = \"db2\"\n\
                    [[users]]\nname = \"app\"\npassword = \"hunter2\"\n\
                    [auth]\nmethod = \"scram-sha-256\"\n";
        let c = Config::parse(text, "t").unwrap();
        let rows = c.effective();
        let get = |k: &str| {
            rows.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
                .unwrap_or_else(|| panic!("{k} missing from {rows:?}"))
        };
        assert_eq!(get("source.host"), "db1");
        assert_eq!(get("source.password"), "(set)");
        assert_eq!(get("users.0.name"), "app");
        assert_eq!(get("users.0.password"), "(set)");
        assert_eq!(get("capture.database"), "shop (from source.database)");
        assert_eq!(get("target.database"), "shop (from capture.database)");
        assert_eq!(get("target.user"), "app (from capture.user)");
        assert_eq!(get("catchup.workers"), "4");
        assert_eq!(get("limits.max_clients"), c.limits.max_clients.to_string());
        assert!(get("cutover.target_log_dir").contains("target"));
        assert!(
            !rows.iter().any(|(_, v)| v.contains("secret") || v.contains("hunter2")),
            "{rows:?}"
        );
        let first: Vec<&str> = rows.iter().map(|(k, _)| k.split('.').next().unwrap()).collect();
        let source = first.iter().position(|s| *s == "source").unwrap();
        let cutover = first.iter().position(|s| *s == "cutover").unwrap();
        assert!(source < cutover, "{first:?}");
    }
}
