//! Chat templates: render `{role, content}` messages through the model's own Jinja
//! template, as `transformers`' `apply_chat_template(..., add_generation_prompt=True)`
//! does, so prompts match what the instruct model was trained on.
//!
//! The environment mirrors the one `transformers` builds: `trim_blocks` and
//! `lstrip_blocks` on, loop controls, `tojson`, Python string/dict methods
//! (`.strip()`, `.items()`, ...) through minijinja-contrib's pycompat, and the two
//! globals HF templates call: `raise_exception(msg)` and `strftime_now(fmt)`.
//!
//! `strftime_now` deliberately formats a **fixed** date (26 July 2024, the default of
//! the Llama 3.1 template) rather than the clock: prompts, and with them every
//! evaluation of a pruning run, stay reproducible from one day to the next.

use std::path::Path;

use minijinja::{context, Environment, Error, ErrorKind};
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::load::Checkpoint;
use crate::{ModelConfig, ModelError, Result};

/// One chat turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// "system", "user" or "assistant".
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }

    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

const TEMPLATE_NAME: &str = "chat";

/// A compiled chat template with the special-token strings it may reference.
///
/// The rendered prompt already contains whatever special tokens the template writes
/// (e.g. `{{ bos_token }}`), so encode it without adding special tokens again.
#[derive(Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compile `source`; a syntax error is reported here rather than at first use.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned(TEMPLATE_NAME, source.to_string())
            .map_err(template_error)?;
        Ok(Self {
            env,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        })
    }

    /// The checkpoint's template with its bos/eos strings taken from the tokenizer;
    /// `None` when the checkpoint has no template (callers then use raw text).
    pub fn for_checkpoint(ckpt: &Checkpoint) -> Result<Option<Self>> {
        Self::from_parts(
            ckpt.chat_template.as_deref(),
            &ckpt.tokenizer,
            &ckpt.config,
            &ckpt.path,
        )
    }

    /// [`ChatTemplate::for_checkpoint`] from a checkpoint's parts (e.g. a
    /// [`crate::GgufHeader`]); `path` only labels errors.
    pub fn from_parts(
        source: Option<&str>,
        tokenizer: &Tokenizer,
        config: &ModelConfig,
        path: &Path,
    ) -> Result<Option<Self>> {
        let Some(source) = source else {
            return Ok(None);
        };
        let token = |id: Option<u32>| {
            id.and_then(|id| tokenizer.id_to_token(id))
                .unwrap_or_default()
        };
        let bos = token(config.bos_token_id);
        let eos = token(config.eos_token_id);
        Self::new(source, &bos, &eos)
            .map(Some)
            .map_err(|e| match e {
                ModelError::ChatTemplate { reason } => ModelError::ChatTemplate {
                    reason: format!("{}: {reason}", path.display()),
                },
                other => other,
            })
    }

    /// Render `messages` followed by the assistant header (`add_generation_prompt`).
    pub fn render(&self, messages: &[ChatMessage]) -> Result<String> {
        self.render_with(messages, true)
    }

    /// Render a finished conversation (its last turn included, no assistant header
    /// after it): text the model was trained on, e.g. for calibration.
    pub fn render_conversation(&self, messages: &[ChatMessage]) -> Result<String> {
        self.render_with(messages, false)
    }

    fn render_with(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(template_error)?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(template_error)
    }
}

fn template_error(e: Error) -> ModelError {
    // `{:#}` includes minijinja's source excerpt, which points at the failing line.
    let mut reason = e.to_string();
    if let Some(detail) = e.detail() {
        if !reason.contains(detail) {
            reason = format!("{reason}: {detail}");
        }
    }
    ModelError::ChatTemplate { reason }
}

fn raise_exception(message: String) -> std::result::Result<String, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// `strftime` over the fixed date Friday 2024-07-26 00:00:00 (see module docs).
fn strftime_now(format: String) -> std::result::Result<String, Error> {
    const MONTH: &str = "July";
    const WEEKDAY: &str = "Friday";
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str("26"),
            Some('e') => out.push_str("26"),
            Some('m') => out.push_str("07"),
            Some('Y') => out.push_str("2024"),
            Some('y') => out.push_str("24"),
            Some('B') => out.push_str(MONTH),
            Some('b') | Some('h') => out.push_str(&MONTH[..3]),
            Some('A') => out.push_str(WEEKDAY),
            Some('a') => out.push_str(&WEEKDAY[..3]),
            Some('H') | Some('M') | Some('S') => out.push_str("00"),
            Some('j') => out.push_str("208"),
            Some('F') => out.push_str("2024-07-26"),
            Some('%') => out.push('%'),
            other => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!(
                        "strftime_now: unsupported directive %{}",
                        other.unwrap_or(' ')
                    ),
                ))
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ChatML template of SmolLM2-Instruct, as stored in its GGUF metadata.
    const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn chatml_renders_exactly() {
        let t = ChatTemplate::new(SMOLLM2, "<|im_start|>", "<|im_end|>").unwrap();
        let out = t.render(&[ChatMessage::user("What is 2+2?")]).unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
             <|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
        );
        let out = t
            .render(&[ChatMessage::system("Be brief."), ChatMessage::user("Hi")])
            .unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let out = t
            .render_conversation(&[ChatMessage::user("Hi"), ChatMessage::assistant("Hello")])
            .unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
             <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n"
        );
    }

    #[test]
    fn hf_environment_features_work() {
        // trim_blocks/lstrip_blocks, bos_token, .strip(), loop controls, tojson,
        // strftime_now and namespace(): the constructs real HF templates use.
        let src = "{{ bos_token }}\n{% set ns = namespace(n=0) %}\n{% for m in messages %}\n    {% if m.role == 'system' %}{% continue %}{% endif %}\n{% set ns.n = ns.n + 1 %}\n[{{ m.role }}:{{ m.content.strip() }}]\n{% endfor %}\n{{ ns.n }} {{ 'x' | tojson }} {{ strftime_now('%d %b %Y') }}{{ eos_token }}";
        let t = ChatTemplate::new(src, "<s>", "</s>").unwrap();
        let out = t
            .render(&[
                ChatMessage::system("ignored"),
                ChatMessage::user("  hi  "),
                ChatMessage::assistant("yo\n"),
            ])
            .unwrap();
        assert_eq!(
            out,
            "<s>\n[user:hi]\n[assistant:yo]\n2 \"x\" 26 Jul 2024</s>"
        );
    }

    #[test]
    fn raise_exception_and_syntax_errors_are_model_errors() {
        let t = ChatTemplate::new(
            "{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}ok",
            "",
            "",
        )
        .unwrap();
        assert_eq!(t.render(&[ChatMessage::user("a")]).unwrap(), "ok");
        match t.render(&[ChatMessage::assistant("a")]) {
            Err(ModelError::ChatTemplate { reason }) => {
                assert!(reason.contains("first must be user"), "{reason}")
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            ChatTemplate::new("{% for %}", "", ""),
            Err(ModelError::ChatTemplate { .. })
        ));
    }

    #[test]
    fn strftime_stub_is_fixed() {
        assert_eq!(
            strftime_now("%A %d %B %Y %H:%M %%".into()).unwrap(),
            "Friday 26 July 2024 00:00 %"
        );
        assert!(strftime_now("%Q".into()).is_err());
    }
}
