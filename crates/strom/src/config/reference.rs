//! docs/CONFIGURATION.md, generated from the config types: the node's TOML keys are read from
//! the `NodeConfig` structs in `config.rs` (field, type, doc comment) with their defaults from
//! `NodeConfig::default()`, and the topic keys from `strom_metadata::config::TOPIC_CONFIGS`.
//! The test fails when the committed file differs; `UPDATE_EXPECT=1 cargo test -p strom
//! config_reference` rewrites it.

use std::collections::BTreeMap;
use std::fmt::Write;

use strom_metadata::config::{REFUSED_TOPIC_CONFIGS, TOPIC_CONFIGS};

use super::NodeConfig;

/// One documented field of a config struct.
struct Field {
    name: String,
    ty: syn::Type,
    doc: String,
}

/// The doc comment of an item or field, its lines joined by spaces.
fn doc_of(attrs: &[syn::Attribute]) -> String {
    let mut lines = Vec::new();
    for attr in attrs {
        if let syn::Meta::NameValue(nv) = &attr.meta {
            if nv.path.is_ident("doc") {
                if let syn::Expr::Lit(syn::ExprLit { lit: syn::Lit::Str(s), .. }) = &nv.value {
                    lines.push(s.value().trim().to_string());
                }
            }
        }
    }
    lines.join(" ")
}

/// The structs of `config.rs` by name, with their fields.
fn structs(source: &str) -> BTreeMap<String, Vec<Field>> {
    let file = syn::parse_file(source).expect("config.rs parses");
    let mut out = BTreeMap::new();
    for item in file.items {
        let syn::Item::Struct(s) = item else { continue };
        let syn::Fields::Named(named) = s.fields else { continue };
        let fields = named
            .named
            .into_iter()
            .map(|f| Field {
                name: f.ident.expect("named field").to_string(),
                ty: f.ty,
                doc: doc_of(&f.attrs),
            })
            .collect();
        out.insert(s.ident.to_string(), fields);
    }
    out
}

/// The last path segment of a type and its generic arguments.
fn segment(ty: &syn::Type) -> Option<(String, Vec<syn::Type>)> {
    let syn::Type::Path(p) = ty else { return None };
    let last = p.path.segments.last()?;
    let args = match &last.arguments {
        syn::PathArguments::AngleBracketed(a) => a
            .args
            .iter()
            .filter_map(|a| match a {
                syn::GenericArgument::Type(t) => Some(t.clone()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    Some((last.ident.to_string(), args))
}

/// How a value of `ty` is written in the TOML file.
fn toml_type(ty: &syn::Type) -> String {
    let Some((name, args)) = segment(ty) else { return "?".into() };
    match name.as_str() {
        "bool" => "boolean".into(),
        "String" => "string".into(),
        "PathBuf" => "path".into(),
        "u8" | "u16" | "u32" | "u64" | "usize" | "i8" | "i16" | "i32" | "i64" => "integer".into(),
        "f32" | "f64" => "float".into(),
        "Vec" => format!("list of {}", args.first().map(toml_type).unwrap_or_default()),
        "Option" => args.first().map(toml_type).unwrap_or_default(),
        other => other.into(),
    }
}

/// The Kafka property a doc comment names first (`` `log.segment.bytes` ``), if it starts so.
fn kafka_name_in(doc: &str) -> Option<String> {
    let rest = doc.strip_prefix('`')?;
    let name = &rest[..rest.find('`')?];
    let plain =
        name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ".<>-".contains(c));
    plain.then(|| name.to_string())
}

/// The doc comment without a leading `` `kafka.name` `` and its separator.
fn description(doc: &str) -> String {
    let text = match kafka_name_in(doc) {
        Some(name) => doc[name.len() + 2..].trim_start_matches([':', '.', ' ']).to_string(),
        None => doc.to_string(),
    };
    let text = text.trim();
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// The default of the key at `path` in the serialised defaults.
fn default_at(defaults: &toml::Value, path: &[&str]) -> String {
    let mut value = defaults;
    for part in path {
        match value.get(part) {
            Some(v) => value = v,
            None => return "(unset)".into(),
        }
    }
    match value {
        toml::Value::String(s) if s.is_empty() => "(empty)".into(),
        toml::Value::String(s) => format!("`{s}`"),
        toml::Value::Array(items) => {
            let items: Vec<String> = items.iter().map(|i| i.to_string()).collect();
            format!("`[{}]`", items.join(", "))
        }
        other => format!("`{other}`"),
    }
}

/// Table cells must not break the table.
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

struct Row {
    key: String,
    kafka: String,
    ty: String,
    default: String,
    doc: String,
}

/// Walks `NodeConfig` and its sections, one row per leaf key. A field without a doc comment
/// is an error: the reference must explain every key.
fn node_rows(structs: &BTreeMap<String, Vec<Field>>, defaults: &toml::Value) -> Vec<Row> {
    fn walk(
        structs: &BTreeMap<String, Vec<Field>>,
        defaults: &toml::Value,
        struct_name: &str,
        path: &mut Vec<String>,
        rows: &mut Vec<Row>,
    ) {
        let fields = structs.get(struct_name).unwrap_or_else(|| panic!("no struct {struct_name}"));
        for field in fields {
            path.push(field.name.clone());
            let (outer, args) = segment(&field.ty).unwrap_or_default();
            if structs.contains_key(&outer) {
                walk(structs, defaults, &outer, path, rows);
            } else if outer == "BTreeMap" && args.len() == 2 {
                // A table per named item: `listener.name.<NAME>.max_connections`.
                let (inner, _) = segment(&args[1]).unwrap_or_default();
                path.push("<NAME>".into());
                walk(structs, defaults, &inner, path, rows);
                path.pop();
            } else {
                assert!(
                    !description(&field.doc).is_empty(),
                    "config field {} has no description in its doc comment: the configuration \
                     reference needs one",
                    path.join(".")
                );
                let key = path.join(".");
                let kafka = kafka_name_in(&field.doc).unwrap_or_else(|| key.replace('_', "."));
                let parts: Vec<&str> = path.iter().map(String::as_str).collect();
                rows.push(Row {
                    key,
                    kafka,
                    ty: toml_type(&field.ty),
                    default: default_at(defaults, &parts),
                    doc: description(&field.doc),
                });
            }
            path.pop();
        }
    }
    let mut rows = Vec::new();
    walk(structs, defaults, "NodeConfig", &mut Vec::new(), &mut rows);
    rows
}

/// The whole reference document.
pub(super) fn render(config_source: &str) -> String {
    let structs = structs(config_source);
    let defaults = toml::Value::try_from(NodeConfig::default()).expect("defaults serialise");
    let mut out = String::new();
    out.push_str(
        "# Configuration reference\n\n\
         Generated from the config types (`crates/strom/src/config.rs` for the node,\n\
         `crates/metadata/src/config.rs` for topics) by the `config_reference` test of the\n\
         `strom` crate, which fails when this file is stale. Regenerate it with\n\
         `UPDATE_EXPECT=1 cargo test -p strom config_reference`; do not edit it by hand.\n\n\
         ## Node configuration\n\n\
         `strom start --config FILE` reads a TOML file (`config/single.toml` is an example); every\n\
         key is optional and unknown keys are refused. A key in a section is written in that\n\
         section: `log.segment_bytes` is `segment_bytes` under `[log]`. The Kafka column names\n\
         the broker property it corresponds to (DescribeConfigs of a broker shows it by that\n\
         name). Node keys are static: they are read at start, and a change needs a restart.\n\n\
         | Key | Kafka name | Type | Default | Description |\n\
         |---|---|---|---|---|\n",
    );
    for row in node_rows(&structs, &defaults) {
        let _ = writeln!(
            out,
            "| `{}` | `{}` | {} | {} | {} |",
            row.key,
            row.kafka,
            row.ty,
            cell(&row.default),
            cell(&row.doc)
        );
    }
    out.push_str(
        "\n## Topic configuration\n\n\
         Set per topic at creation (`strom topic create --config KEY=VALUE`, CreateTopics) or\n\
         later (`strom topic alter-config`, AlterConfigs, IncrementalAlterConfigs). Every topic\n\
         key is dynamic: a change takes effect on every broker without a restart. A topic\n\
         without an override takes the node key named in the last column, else the default.\n\n\
         | Key | Type | Default | Node key (synonym) | Description |\n\
         |---|---|---|---|---|\n",
    );
    for def in TOPIC_CONFIGS {
        let _ = writeln!(
            out,
            "| `{}` | {} | `{}` | {} | {} |",
            def.name,
            def.kind.name(),
            def.default,
            def.broker_synonym.map(|s| format!("`{s}`")).unwrap_or_default(),
            cell(def.doc)
        );
    }
    out.push_str(
        "\n### Kafka topic keys strom refuses\n\n\
         CreateTopics and AlterConfigs answer INVALID_CONFIG for these, with the reason.\n\n\
         | Key | Why |\n|---|---|\n",
    );
    for (name, why) in REFUSED_TOPIC_CONFIGS {
        let _ = writeln!(out, "| `{name}` | {} |", cell(why));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn config_reference_is_current() {
        let source = include_str!("../config.rs");
        let doc = super::render(source);
        expect_test::expect_file!["../../../../docs/CONFIGURATION.md"].assert_eq(&doc);
    }
}
