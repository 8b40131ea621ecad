//! `deploy/k8s`'s kustomizations, built the way `kubectl apply -k` builds them, for the tests
//! (no kubectl or kustomize here). Only what the manifests use is supported, and anything
//! else is an error rather than silently skipped: `resources` (files and directories),
//! `namespace`, `images`, `replicas`, `configMapGenerator` (literals; `behavior: merge`),
//! and `patches` with an inline JSON 6902 patch (`add`, `replace`, `remove`) and a
//! kind + name target. Generated ConfigMaps keep their names (kustomize would add a hash of
//! the content, and rewrite the references to it the same way).

use std::collections::BTreeMap;
use std::path::Path;

use serde_norway::{Mapping, Value};

use crate::DeployError;

const SUPPORTED: [&str; 8] = [
    "apiVersion",
    "kind",
    "resources",
    "namespace",
    "images",
    "replicas",
    "configMapGenerator",
    "patches",
];

/// The objects `kubectl apply -k dir` would create.
pub fn build(dir: &Path) -> Result<Vec<Value>, DeployError> {
    let file = dir.join("kustomization.yaml");
    let doc = read_yaml(&file)?
        .into_iter()
        .next()
        .ok_or_else(|| invalid(&file, "empty"))?;
    let kustomization = doc
        .as_mapping()
        .ok_or_else(|| invalid(&file, "not a mapping"))?;
    for key in kustomization.keys() {
        let key = key.as_str().unwrap_or_default();
        if !SUPPORTED.contains(&key) {
            return Err(invalid(&file, &format!("unsupported field {key}")));
        }
    }
    let mut objects = Vec::new();
    for resource in sequence(&doc["resources"]) {
        let path = dir.join(
            resource
                .as_str()
                .ok_or_else(|| invalid(&file, "resource"))?,
        );
        if path.is_dir() {
            objects.extend(build(&path)?);
        } else {
            objects.extend(read_yaml(&path)?);
        }
    }
    for generator in sequence(&doc["configMapGenerator"]) {
        generate_config_map(&file, generator, &mut objects)?;
    }
    for patch in sequence(&doc["patches"]) {
        apply_patch(&file, patch, &mut objects)?;
    }
    for replicas in sequence(&doc["replicas"]) {
        let name = replicas["name"].as_str();
        let count = replicas["count"].as_u64();
        let target = objects
            .iter_mut()
            .find(|o| o["kind"] == "Deployment" && o["metadata"]["name"].as_str() == name)
            .ok_or_else(|| invalid(&file, &format!("replicas: no Deployment {name:?}")))?;
        target["spec"]["replicas"] = Value::from(count.ok_or_else(|| invalid(&file, "count"))?);
    }
    for image in sequence(&doc["images"]) {
        let name = image["name"]
            .as_str()
            .ok_or_else(|| invalid(&file, "images"))?;
        let mut found = false;
        for object in &mut objects {
            for container in containers_mut(object) {
                let current = container["image"].as_str().unwrap_or_default().to_owned();
                let (base, tag) = split_image(&current);
                if base != name {
                    continue;
                }
                let new_name = image["newName"].as_str().unwrap_or(base);
                let new_tag = image["newTag"].as_str().or(tag);
                container["image"] = Value::from(match new_tag {
                    Some(tag) => format!("{new_name}:{tag}"),
                    None => new_name.to_owned(),
                });
                found = true;
            }
        }
        if !found {
            return Err(invalid(&file, &format!("images: no container uses {name}")));
        }
    }
    if let Some(namespace) = doc["namespace"].as_str() {
        for object in &mut objects {
            if object["kind"] != "Namespace" {
                object["metadata"]["namespace"] = Value::from(namespace);
            }
        }
    }
    Ok(objects)
}

/// The object of `kind` named `name`.
pub fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"].as_str() == Some(name))
}

/// A ConfigMap's data as a map.
pub fn config_map_data(object: &Value) -> BTreeMap<String, String> {
    object["data"]
        .as_mapping()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), crate::compose::scalar(v)?)))
                .collect()
        })
        .unwrap_or_default()
}

/// `(name, tag)` of an image reference (a port in the registry is not a tag).
pub fn split_image(image: &str) -> (&str, Option<&str>) {
    match image.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, Some(tag)),
        _ => (image, None),
    }
}

fn containers_mut(object: &mut Value) -> Vec<&mut Value> {
    match object["spec"]["template"]["spec"]["containers"].as_sequence_mut() {
        Some(list) => list.iter_mut().collect(),
        None => Vec::new(),
    }
}

fn generate_config_map(
    file: &Path,
    generator: &Value,
    objects: &mut Vec<Value>,
) -> Result<(), DeployError> {
    let name = generator["name"]
        .as_str()
        .ok_or_else(|| invalid(file, "configMapGenerator without a name"))?;
    for key in generator.as_mapping().into_iter().flat_map(Mapping::keys) {
        if !matches!(key.as_str(), Some("name" | "literals" | "behavior")) {
            return Err(invalid(
                file,
                &format!("configMapGenerator {name}: unsupported {key:?}"),
            ));
        }
    }
    let mut data = Mapping::new();
    for literal in sequence(&generator["literals"]) {
        let text = literal.as_str().unwrap_or_default();
        let (key, value) = text
            .split_once('=')
            .ok_or_else(|| invalid(file, &format!("literal {text:?} is not KEY=VALUE")))?;
        data.insert(Value::from(key), Value::from(value));
    }
    let existing = objects
        .iter_mut()
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"].as_str() == Some(name));
    match (generator["behavior"].as_str().unwrap_or("create"), existing) {
        ("create", None) => {
            let mut object = Mapping::new();
            object.insert("apiVersion".into(), "v1".into());
            object.insert("kind".into(), "ConfigMap".into());
            let mut metadata = Mapping::new();
            metadata.insert("name".into(), name.into());
            object.insert("metadata".into(), Value::Mapping(metadata));
            object.insert("data".into(), Value::Mapping(data));
            objects.push(Value::Mapping(object));
        }
        ("merge", Some(existing)) => {
            let target = existing["data"]
                .as_mapping_mut()
                .ok_or_else(|| invalid(file, "merge into a ConfigMap without data"))?;
            for (key, value) in data {
                target.insert(key, value);
            }
        }
        ("replace", Some(existing)) => existing["data"] = Value::Mapping(data),
        (behavior, existing) => {
            return Err(invalid(
                file,
                &format!(
                    "configMapGenerator {name}: behavior {behavior} with{} an existing one",
                    if existing.is_some() { "" } else { "out" }
                ),
            ));
        }
    }
    Ok(())
}

fn apply_patch(file: &Path, patch: &Value, objects: &mut [Value]) -> Result<(), DeployError> {
    let kind = patch["target"]["kind"].as_str();
    let name = patch["target"]["name"].as_str();
    let text = patch["patch"]
        .as_str()
        .ok_or_else(|| invalid(file, "patches: only an inline `patch` is supported"))?;
    let operations: Value = serde_norway::from_str(text).map_err(|source| DeployError::Yaml {
        path: format!("{} (patch)", file.display()),
        source,
    })?;
    let target = objects
        .iter_mut()
        .find(|o| o["kind"].as_str() == kind && o["metadata"]["name"].as_str() == name)
        .ok_or_else(|| invalid(file, &format!("patch target {kind:?} {name:?} not found")))?;
    for operation in sequence(&operations) {
        let op = operation["op"].as_str().unwrap_or_default();
        let path = operation["path"].as_str().unwrap_or_default();
        let (parent, last) = path
            .rsplit_once('/')
            .ok_or_else(|| invalid(file, &format!("patch path {path:?}")))?;
        let mut node = &mut *target;
        for part in parent.split('/').skip(1) {
            node = match part.parse::<usize>() {
                Ok(index) if node.is_sequence() => node
                    .get_mut(index)
                    .ok_or_else(|| invalid(file, &format!("patch path {path:?}")))?,
                _ => node
                    .get_mut(part)
                    .ok_or_else(|| invalid(file, &format!("patch path {path:?}")))?,
            };
        }
        match (op, node) {
            ("add" | "replace", Value::Mapping(map)) => {
                map.insert(Value::from(last), operation["value"].clone());
            }
            ("add", Value::Sequence(list)) if last == "-" => list.push(operation["value"].clone()),
            ("remove", Value::Mapping(map)) => {
                map.remove(last)
                    .ok_or_else(|| invalid(file, &format!("remove {path:?}: not there")))?;
            }
            (op, _) => return Err(invalid(file, &format!("patch op {op} at {path:?}"))),
        }
    }
    Ok(())
}

fn sequence(value: &Value) -> impl Iterator<Item = &Value> {
    value.as_sequence().into_iter().flatten()
}

fn read_yaml(path: &Path) -> Result<Vec<Value>, DeployError> {
    let text = std::fs::read_to_string(path).map_err(|source| DeployError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let mut documents = Vec::new();
    for document in serde_norway::Deserializer::from_str(&text) {
        let value = <Value as serde::Deserialize>::deserialize(document).map_err(|source| {
            DeployError::Yaml {
                path: path.display().to_string(),
                source,
            }
        })?;
        if !value.is_null() {
            documents.push(value);
        }
    }
    Ok(documents)
}

fn invalid(file: &Path, what: &str) -> DeployError {
    DeployError::Invalid(format!("{}: {what}", file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn an_overlay_merges_config_renames_images_and_patches() {
        let root = std::env::temp_dir().join(format!("kustomize-{}", std::process::id()));
        let (base, overlay) = (root.join("base"), root.join("overlay"));
        std::fs::create_dir_all(&base).unwrap();
        std::fs::create_dir_all(&overlay).unwrap();
        write(
            &base,
            "kustomization.yaml",
            "resources: [app.yaml]\nconfigMapGenerator:\n  - name: cfg\n    literals: [A=1, B=2]\n",
        );
        write(
            &base,
            "app.yaml",
            "kind: Deployment\nmetadata: {name: app}\nspec:\n  replicas: 1\n  template:\n    spec:\n      containers:\n        - {name: c, image: app}\n---\nkind: Service\nmetadata: {name: svc}\n",
        );
        write(
            &overlay,
            "kustomization.yaml",
            "namespace: ns\nresources: [../base]\nimages:\n  - {name: app, newName: reg/app, newTag: \"1.2\"}\nreplicas:\n  - {name: app, count: 3}\nconfigMapGenerator:\n  - {name: cfg, behavior: merge, literals: [B=3, C=4]}\npatches:\n  - target: {kind: Deployment, name: app}\n    patch: |\n      - {op: add, path: /spec/template/spec/containers/0/args, value: [\"-x\"]}\n",
        );
        let objects = build(&overlay).unwrap();
        let app = find(&objects, "Deployment", "app").unwrap();
        assert_eq!(app["spec"]["replicas"].as_u64(), Some(3));
        let container = &app["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["image"].as_str(), Some("reg/app:1.2"));
        assert_eq!(container["args"][0].as_str(), Some("-x"));
        assert_eq!(app["metadata"]["namespace"].as_str(), Some("ns"));
        let data = config_map_data(find(&objects, "ConfigMap", "cfg").unwrap());
        assert_eq!(
            data.into_iter().collect::<Vec<_>>(),
            [("A", "1"), ("B", "3"), ("C", "4")].map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        assert!(find(&objects, "Service", "svc").is_some());

        // What it does not know, it refuses.
        write(
            &overlay,
            "kustomization.yaml",
            "resources: [../base]\ncommonLabels: {a: b}\n",
        );
        let error = build(&overlay).unwrap_err().to_string();
        assert!(error.contains("commonLabels"), "{error}");
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn image_tags_and_registry_ports_are_told_apart() {
        assert_eq!(split_image("reg:5000/app"), ("reg:5000/app", None));
        assert_eq!(
            split_image("reg:5000/app:1.0"),
            ("reg:5000/app", Some("1.0"))
        );
        assert_eq!(split_image("app"), ("app", None));
    }
}
