//! HTML: the text a reader sees, without markup, with html5gum's tokenizer (character
//! references decoded; the contents of `script`, `style` and `template` left out). The
//! `<title>` goes into the metadata too.

use std::fs::File;
use std::io::Write;

use html5gum::{Token, Tokenizer};
use serde_json::{Map, Value, json};

use super::{Sink, read_all};

/// Elements whose text is not shown.
const HIDDEN: [&[u8]; 4] = [b"script", b"style", b"template", b"noscript"];
/// Elements that end a line of text.
const BLOCKS: [&[u8]; 20] = [
    b"p",
    b"div",
    b"br",
    b"li",
    b"tr",
    b"td",
    b"th",
    b"h1",
    b"h2",
    b"h3",
    b"h4",
    b"h5",
    b"h6",
    b"section",
    b"article",
    b"header",
    b"footer",
    b"pre",
    b"blockquote",
    b"title",
];

pub(super) fn extract<W: Write>(file: &File, sink: &mut Sink<W>) -> Result<Value, String> {
    let bytes = read_all(file)?;
    let source = String::from_utf8_lossy(&bytes);
    let (text, title) = text_of(&source);
    let mut metadata = Map::new();
    if let Some(title) = title {
        metadata.insert("title".into(), json!(title));
    }
    sink.whole_text(text);
    Ok(Value::Object(metadata))
}

/// The visible text and the title.
fn text_of(source: &str) -> (String, Option<String>) {
    let mut text = String::new();
    let mut title: Option<String> = None;
    let mut hidden_depth = 0usize;
    let mut in_title = false;
    for token in Tokenizer::new(source).flatten() {
        match token {
            Token::StartTag(tag) => {
                let name = tag.name.as_slice();
                if HIDDEN.contains(&name) && !tag.self_closing {
                    hidden_depth += 1;
                }
                if name == b"title" {
                    in_title = true;
                }
                if BLOCKS.contains(&name) {
                    line_break(&mut text);
                }
            }
            Token::EndTag(tag) => {
                let name = tag.name.as_slice();
                if HIDDEN.contains(&name) {
                    hidden_depth = hidden_depth.saturating_sub(1);
                }
                if name == b"title" {
                    in_title = false;
                }
                if BLOCKS.contains(&name) {
                    line_break(&mut text);
                }
            }
            Token::String(string) if hidden_depth == 0 => {
                let string = String::from_utf8_lossy(&string);
                if in_title {
                    title
                        .get_or_insert_with(String::new)
                        .push_str(string.trim());
                }
                text.push_str(&string);
            }
            _ => {}
        }
    }
    let title = title.filter(|title| !title.is_empty());
    (tidy(&text), title)
}

fn line_break(text: &mut String) {
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
}

/// Runs of blanks become one space, blank lines go.
fn tidy(text: &str) -> String {
    text.lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_scripts_and_styles_are_left_out() {
        let (text, title) = text_of(
            "<!DOCTYPE html><html><head><title>The  Report</title><style>p{color:red}</style>\
             <script>var secret = 1;</script></head><body><h1>Figures</h1><p>Apples &amp; \
             pears&nbsp;now</p><!-- hidden comment --><div>next<br>line</div></body></html>",
        );
        assert_eq!(title.as_deref(), Some("The  Report"));
        assert_eq!(text, "The Report\nFigures\nApples & pears now\nnext\nline");
    }
}
