//! A Dockerfile as a list of instructions, each in its build stage.

/// One instruction, continuation lines joined and comments removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// Upper-case keyword: `FROM`, `RUN`, `COPY`, ...
    pub keyword: String,
    /// Everything after the keyword, on one line.
    pub args: String,
    /// Index of the stage (`FROM`) it belongs to.
    pub stage: usize,
}

/// A build stage: `FROM image [AS name]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    pub image: String,
    pub name: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Dockerfile {
    pub stages: Vec<Stage>,
    pub instructions: Vec<Instruction>,
}

impl Dockerfile {
    pub fn parse(text: &str) -> Dockerfile {
        let mut file = Dockerfile::default();
        let mut pending = String::new();
        for line in text.lines() {
            let trimmed = line.trim();
            if trimmed.starts_with('#') || (trimmed.is_empty() && pending.is_empty()) {
                continue;
            }
            if let Some(head) = trimmed.strip_suffix('\\') {
                pending.push_str(head.trim());
                pending.push(' ');
                continue;
            }
            pending.push_str(trimmed);
            let logical = std::mem::take(&mut pending);
            let (keyword, args) = logical
                .split_once(char::is_whitespace)
                .unwrap_or((&logical, ""));
            let keyword = keyword.to_ascii_uppercase();
            let args = args.trim().to_owned();
            if keyword == "FROM" {
                let words: Vec<&str> = args.split_whitespace().collect();
                let name = match words.as_slice() {
                    [_, as_, name] if as_.eq_ignore_ascii_case("as") => Some(name.to_string()),
                    _ => None,
                };
                file.stages.push(Stage {
                    image: words.first().map(|w| w.to_string()).unwrap_or_default(),
                    name,
                });
            }
            file.instructions.push(Instruction {
                keyword,
                args,
                stage: file.stages.len().saturating_sub(1),
            });
        }
        file
    }

    /// The index of the stage called `name`.
    pub fn stage(&self, name: &str) -> Option<usize> {
        self.stages
            .iter()
            .position(|s| s.name.as_deref() == Some(name))
    }

    /// The stage a stage is built `FROM` when that is another stage of this file.
    pub fn parent(&self, stage: usize) -> Option<usize> {
        self.stage(&self.stages.get(stage)?.image)
    }

    /// Instructions of `stage` and of the stages it is built from, oldest first.
    pub fn lineage(&self, stage: usize) -> Vec<&Instruction> {
        let mut chain = vec![stage];
        while let Some(parent) = self.parent(*chain.last().unwrap_or(&stage)) {
            if chain.contains(&parent) {
                break;
            }
            chain.push(parent);
        }
        chain.reverse();
        chain
            .iter()
            .flat_map(|s| self.instructions.iter().filter(move |i| i.stage == *s))
            .collect()
    }

    pub fn with_keyword<'a>(&'a self, keyword: &'a str) -> impl Iterator<Item = &'a Instruction> {
        self.instructions
            .iter()
            .filter(move |i| i.keyword == keyword)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stages_continuations_and_comments() {
        let file = Dockerfile::parse(
            "# top\nFROM rust:1 AS build\nRUN a \\\n    # inside\n    && b\n\nFROM build AS app\nUSER x\nfrom debian\nCMD [\"y\"]\n",
        );
        assert_eq!(
            file.stages,
            [
                Stage {
                    image: "rust:1".into(),
                    name: Some("build".into())
                },
                Stage {
                    image: "build".into(),
                    name: Some("app".into())
                },
                Stage {
                    image: "debian".into(),
                    name: None
                },
            ]
        );
        let run = file.with_keyword("RUN").next().unwrap();
        assert_eq!((run.args.as_str(), run.stage), ("a && b", 0));
        let lineage: Vec<&str> = file.lineage(1).iter().map(|i| i.keyword.as_str()).collect();
        assert_eq!(lineage, ["FROM", "RUN", "FROM", "USER"]);
        assert_eq!(file.with_keyword("CMD").next().unwrap().stage, 2);
    }
}
