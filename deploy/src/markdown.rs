//! Fenced code blocks and tables of a Markdown file (the README).

/// A fenced code block: its info string (`sh`, `sql`, ...) and its lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeBlock {
    pub lang: String,
    pub lines: Vec<String>,
}

pub fn code_blocks(text: &str) -> Vec<CodeBlock> {
    let mut blocks = Vec::new();
    let mut current: Option<CodeBlock> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if let Some(info) = trimmed.strip_prefix("```") {
            match current.take() {
                Some(block) => blocks.push(block),
                None => {
                    current = Some(CodeBlock {
                        lang: info.trim().to_owned(),
                        lines: Vec::new(),
                    })
                }
            }
        } else if let Some(block) = current.as_mut() {
            block.lines.push(line.to_owned());
        }
    }
    blocks
}

/// The shell commands of a code block: comments and blank lines dropped, `\` continuations
/// joined, a leading `$ ` prompt removed.
pub fn shell_commands(block: &CodeBlock) -> Vec<String> {
    let mut commands = Vec::new();
    let mut pending = String::new();
    for line in &block.lines {
        let line = line.trim();
        if pending.is_empty() && (line.is_empty() || line.starts_with('#')) {
            continue;
        }
        let line = line.strip_prefix("$ ").unwrap_or(line);
        if let Some(head) = line.strip_suffix('\\') {
            pending.push_str(head.trim_end());
            pending.push(' ');
        } else {
            pending.push_str(line);
            commands.push(std::mem::take(&mut pending));
        }
    }
    if !pending.is_empty() {
        commands.push(pending);
    }
    commands
}

/// The rows of every table: cells trimmed, header separator rows dropped.
pub fn table_rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .map(str::trim)
        .filter(|line| line.starts_with('|'))
        .map(|line| {
            line.trim_matches('|')
                .split('|')
                .map(|cell| cell.trim().to_owned())
                .collect::<Vec<_>>()
        })
        .filter(|cells| {
            !cells
                .iter()
                .all(|c| c.chars().all(|ch| matches!(ch, '-' | ':' | ' ')))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_commands_and_tables() {
        let text = "x\n```sh\n# note\n$ a --b \\\n   --c\nd\n```\n| k | v |\n|---|:-:|\n| `x` | 1 |\n```\nplain\n```\n";
        let blocks = code_blocks(text);
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0].lang, "sh");
        assert_eq!(shell_commands(&blocks[0]), ["a --b --c", "d"]);
        assert_eq!(blocks[1].lang, "");
        assert_eq!(
            table_rows(text),
            [
                vec!["k".to_string(), "v".into()],
                vec!["`x`".into(), "1".into()]
            ]
        );
    }
}
