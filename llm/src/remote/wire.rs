//! The three hosted APIs' wire formats: how a conversation and the plan schema become a
//! request body, and where the answer text and token counts sit in the response. Pure
//! JSON in, JSON out, so the shapes can be asserted without a network.
//!
//! Bodies that embed the plan schema are serialized from structs, not built as a
//! `serde_json::Value`: without serde_json's `preserve_order` a `Value` sorts keys, which
//! would undo the schema's order (reasoning first; see [`protocol::plan_schema`]).

use serde::Serialize;
use serde_json::{json, Map, Value};

use protocol::{plan_json_schema, PlanSchema};

use super::transport::{HttpCall, Secret};

/// What is sent: the prompt, and after a failed answer the repair turn (the bad answer
/// as the assistant's message, the validation errors as the user's reply).
pub struct Conversation<'a> {
    pub system: &'a str,
    pub user: &'a str,
    pub repair: Option<(&'a str, &'a str)>,
}

/// Sampling settings shared by every API.
#[derive(Debug, Clone)]
pub struct Sampling {
    pub model: String,
    pub temperature: f64,
    pub max_tokens: u32,
}

/// The answer text (a JSON document, not yet checked) and token counts when reported.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub text: String,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
}

/// How an API is asked for JSON. Only the OpenAI-compatible wire has further modes:
/// Gemini and Anthropic accept the portable schema as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonMode {
    /// The server constrains decoding to the schema (`response_format: json_schema`).
    Schema,
    /// `response_format: {"type": "json_object", "schema": …}` and the schema in the
    /// prompt, for servers that know only `json_object`: llama.cpp server and
    /// llama-cpp-python constrain decoding to that schema, others to any JSON object.
    ObjectSchema,
    /// `response_format: json_object` with the schema in the prompt text only, for
    /// servers that refuse the schema in either form; the answer is then checked (and
    /// repaired) like any other.
    Object,
}

impl JsonMode {
    /// How the mode is named in `PlanResponse::backend` (empty for the default).
    pub fn label(self) -> &'static str {
        match self {
            Self::Schema => "",
            Self::ObjectSchema => {
                "json_object mode with the schema: the server refused the json_schema response format"
            }
            Self::Object => {
                "json_object mode: the server refused the schema as json_schema and in json_object"
            }
        }
    }

    /// How the mode is named in an error.
    pub fn name(self) -> &'static str {
        match self {
            Self::Schema => "json_schema mode",
            Self::ObjectSchema => "json_object mode with the schema",
            Self::Object => "json_object mode",
        }
    }

    /// The mode to try when the server refuses this one's schema.
    pub fn next(self) -> Option<Self> {
        match self {
            Self::Schema => Some(Self::ObjectSchema),
            Self::ObjectSchema => Some(Self::Object),
            Self::Object => None,
        }
    }
}

/// One hosted API.
pub trait Wire: Send + Sync {
    /// Recorded as `PlanResponse::backend`.
    fn name(&self) -> &'static str;
    /// API root used when the config sets none.
    fn default_base_url(&self) -> &'static str;
    /// The request for `conv`, asking for JSON that follows `schema` in `mode`.
    fn request(
        &self,
        base_url: &str,
        key: &Secret,
        s: &Sampling,
        conv: &Conversation,
        schema: &PlanSchema,
        mode: JsonMode,
    ) -> HttpCall;
    /// The answer in a successful response body, or why there is none.
    fn answer(&self, body: &Value) -> Result<Answer, String>;
    /// Whether an error response (`status`, `body`) refuses the structured-output
    /// request itself, so [`JsonMode::Object`] may succeed where [`JsonMode::Schema`]
    /// failed. APIs without a fallback mode say no.
    fn refuses_schema(&self, _status: u16, _body: &str) -> bool {
        false
    }
}

fn tokens(v: &Value) -> Option<u64> {
    v.as_u64()
}

/// Serialized request text (a struct of ours never fails to serialize).
fn text<T: Serialize>(body: &T) -> String {
    serde_json::to_string(body).unwrap_or_default()
}

/// The instruction appended to the system prompt in the `json_object` modes: the server
/// may not enforce the schema, so the model is told it (without the layer enum —
/// the prompt lists the names, and 200 of them would double the request).
pub fn object_mode_note() -> String {
    format!(
        "\n\nThe server does not enforce the answer format: answer with exactly one JSON \
object and nothing else, keys in this order, following this JSON schema:\n{}",
        plan_json_schema(None).to_json()
    )
}

/// The OpenAI chat-completions body. `response_format` is
/// `{"type": "json_schema", "json_schema": {…}}` or `{"type": "json_object"}` (with
/// `"schema": {…}` in [`JsonMode::ObjectSchema`]).
#[derive(Serialize)]
struct ChatBody<'a> {
    model: &'a str,
    messages: Vec<Value>,
    temperature: f64,
    max_tokens: u32,
    response_format: ResponseFormat<'a>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ResponseFormat<'a> {
    JsonSchema {
        json_schema: NamedSchema<'a>,
    },
    JsonObject {
        #[serde(skip_serializing_if = "Option::is_none")]
        schema: Option<&'a PlanSchema>,
    },
}

#[derive(Serialize)]
struct NamedSchema<'a> {
    name: &'static str,
    strict: bool,
    schema: &'a PlanSchema,
}

/// Phrases of error bodies that refuse the structured-output request, lower-cased.
/// Recorded bodies (llm/tests/fixtures/): llama.cpp server's "JSON schema conversion
/// failed", vLLM's "JSON schema contains features not supported by xgrammar",
/// OpenAI's "Invalid schema for response_format"; older servers that know only
/// `json_object` name `response_format` or `json_schema` (the first two: the phrases
/// that also make a 500 a refusal).
const SCHEMA_REFUSALS: [&str; 4] = ["response_format", "json_schema", "schema", "grammar"];

/// OpenAI chat completions with a strict `json_schema` response format. The same
/// request works against vLLM, llama.cpp server, Ollama, LM Studio and Gemini's
/// OpenAI-compatible endpoint; the key is optional because local servers need none. A
/// server that refuses the schema anyway ([`Wire::refuses_schema`]) is asked again in
/// [`JsonMode::Object`].
pub struct OpenAi;

impl Wire for OpenAi {
    fn name(&self) -> &'static str {
        "openai"
    }
    fn default_base_url(&self) -> &'static str {
        "https://api.openai.com/v1"
    }
    fn request(
        &self,
        base_url: &str,
        key: &Secret,
        s: &Sampling,
        conv: &Conversation,
        schema: &PlanSchema,
        mode: JsonMode,
    ) -> HttpCall {
        let object_schema = schema.object_mode();
        let (system, response_format) = match mode {
            JsonMode::Schema => (
                conv.system.to_string(),
                ResponseFormat::JsonSchema {
                    json_schema: NamedSchema {
                        name: "plan",
                        strict: true,
                        schema,
                    },
                },
            ),
            JsonMode::ObjectSchema => (
                format!("{}{}", conv.system, object_mode_note()),
                ResponseFormat::JsonObject {
                    schema: Some(&object_schema),
                },
            ),
            JsonMode::Object => (
                format!("{}{}", conv.system, object_mode_note()),
                ResponseFormat::JsonObject { schema: None },
            ),
        };
        let mut messages = vec![
            json!({"role": "system", "content": system}),
            json!({"role": "user", "content": conv.user}),
        ];
        if let Some((bad, errors)) = conv.repair {
            messages.push(json!({"role": "assistant", "content": bad}));
            messages.push(json!({"role": "user", "content": errors}));
        }
        let mut headers = Vec::new();
        if let Some(k) = key.expose() {
            headers.push(("authorization", format!("Bearer {k}")));
        }
        HttpCall {
            url: format!("{}/chat/completions", base_url.trim_end_matches('/')),
            headers,
            body: text(&ChatBody {
                model: &s.model,
                messages,
                temperature: s.temperature,
                max_tokens: s.max_tokens,
                response_format,
            }),
        }
    }
    /// A 400 (422 from FastAPI-based servers) whose body names the response format,
    /// the schema or the grammar built from it; or a 500 whose body names the response
    /// format or `json_schema` (llama-cpp-python's server answers a `response_format` it
    /// does not know with a 500 validation error; llama.cpp server answered a schema it
    /// could not convert with a 500 before it moved to 400). Other errors (context too
    /// long, unknown model, a crashed worker) would fail in `json_object` mode as well.
    fn refuses_schema(&self, status: u16, body: &str) -> bool {
        let body = body.to_lowercase();
        match status {
            400 | 422 => SCHEMA_REFUSALS.iter().any(|p| body.contains(p)),
            500 => SCHEMA_REFUSALS[..2].iter().any(|p| body.contains(p)),
            _ => false,
        }
    }
    fn answer(&self, body: &Value) -> Result<Answer, String> {
        let msg = &body["choices"][0]["message"];
        if let Some(r) = msg["refusal"].as_str() {
            return Err(format!("the model refused: {r}"));
        }
        let text = msg["content"]
            .as_str()
            .ok_or("no choices[0].message.content in the response")?;
        Ok(Answer {
            text: text.to_string(),
            input_tokens: tokens(&body["usage"]["prompt_tokens"]),
            output_tokens: tokens(&body["usage"]["completion_tokens"]),
        })
    }
}

/// Gemini `generateContent` with `responseMimeType: application/json` and a
/// `responseSchema` (the paper's backend). The key goes in a header, never the URL.
pub struct Gemini;

/// `responseSchema` is an OpenAPI subset: upper-case type names, no
/// `additionalProperties`, and `propertyOrdering` so `reasoning` is written first
/// (Gemini otherwise orders properties alphabetically, putting the decision before the
/// analysis that should inform it). The order is taken from `required`.
pub fn gemini_schema(schema: &Value) -> Value {
    match schema {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                match k.as_str() {
                    "additionalProperties" => {}
                    "type" => {
                        out.insert(k.clone(), json!(v.as_str().unwrap_or("").to_uppercase()));
                    }
                    "properties" => {
                        let props: Map<String, Value> = v
                            .as_object()
                            .map(|p| {
                                p.iter()
                                    .map(|(n, s)| (n.clone(), gemini_schema(s)))
                                    .collect()
                            })
                            .unwrap_or_default();
                        out.insert(k.clone(), Value::Object(props));
                    }
                    _ => {
                        out.insert(k.clone(), gemini_schema(v));
                    }
                }
            }
            if let (Some(req), true) = (m.get("required"), m.contains_key("properties")) {
                out.insert("propertyOrdering".into(), req.clone());
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(gemini_schema).collect()),
        other => other.clone(),
    }
}

impl Wire for Gemini {
    fn name(&self) -> &'static str {
        "gemini"
    }
    fn default_base_url(&self) -> &'static str {
        "https://generativelanguage.googleapis.com/v1beta"
    }
    fn request(
        &self,
        base_url: &str,
        key: &Secret,
        s: &Sampling,
        conv: &Conversation,
        schema: &PlanSchema,
        _mode: JsonMode,
    ) -> HttpCall {
        let mut contents = vec![json!({"role": "user", "parts": [{"text": conv.user}]})];
        if let Some((bad, errors)) = conv.repair {
            contents.push(json!({"role": "model", "parts": [{"text": bad}]}));
            contents.push(json!({"role": "user", "parts": [{"text": errors}]}));
        }
        let mut headers = Vec::new();
        if let Some(k) = key.expose() {
            headers.push(("x-goog-api-key", k.to_string()));
        }
        HttpCall {
            url: format!(
                "{}/models/{}:generateContent",
                base_url.trim_end_matches('/'),
                s.model
            ),
            headers,
            body: json!({
                "systemInstruction": {"parts": [{"text": conv.system}]},
                "contents": contents,
                "generationConfig": {
                    "temperature": s.temperature,
                    "maxOutputTokens": s.max_tokens,
                    "responseMimeType": "application/json",
                    "responseSchema": gemini_schema(&schema.to_value())
                }
            })
            .to_string(),
        }
    }
    fn answer(&self, body: &Value) -> Result<Answer, String> {
        let Some(cand) = body["candidates"].get(0) else {
            let why = body["promptFeedback"]["blockReason"]
                .as_str()
                .unwrap_or("no candidates in the response");
            return Err(format!("no answer: {why}"));
        };
        // Thinking models return their thoughts as separate parts; only answers count.
        let text: String = cand["content"]["parts"]
            .as_array()
            .map(|parts| {
                parts
                    .iter()
                    .filter(|p| p["thought"] != json!(true))
                    .filter_map(|p| p["text"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        if text.is_empty() {
            let why = cand["finishReason"].as_str().unwrap_or("empty content");
            return Err(format!("no answer text (finishReason {why})"));
        }
        let usage = &body["usageMetadata"];
        Ok(Answer {
            text,
            input_tokens: tokens(&usage["promptTokenCount"]),
            output_tokens: tokens(&usage["candidatesTokenCount"]),
        })
    }
}

/// Anthropic messages API. It has no JSON response mode, so the plan is obtained as
/// the input of a tool the model is forced to call (`tool_choice`), whose
/// `input_schema` is the plan schema.
pub struct Anthropic;

/// The forced tool's name.
pub const ANTHROPIC_TOOL: &str = "submit_plan";
/// Messages API version header value.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// The Anthropic messages body; the forced tool's `input_schema` is the plan schema.
#[derive(Serialize)]
struct MessagesBody<'a> {
    model: &'a str,
    max_tokens: u32,
    temperature: f64,
    system: &'a str,
    messages: Vec<Value>,
    tools: [Tool<'a>; 1],
    tool_choice: Value,
}

#[derive(Serialize)]
struct Tool<'a> {
    name: &'static str,
    description: &'static str,
    input_schema: &'a PlanSchema,
}

impl Wire for Anthropic {
    fn name(&self) -> &'static str {
        "anthropic"
    }
    fn default_base_url(&self) -> &'static str {
        "https://api.anthropic.com/v1"
    }
    fn request(
        &self,
        base_url: &str,
        key: &Secret,
        s: &Sampling,
        conv: &Conversation,
        schema: &PlanSchema,
        _mode: JsonMode,
    ) -> HttpCall {
        let mut messages = vec![json!({"role": "user", "content": conv.user})];
        if let Some((bad, errors)) = conv.repair {
            messages.push(json!({"role": "assistant", "content": bad}));
            messages.push(json!({"role": "user", "content": errors}));
        }
        let mut headers = vec![("anthropic-version", ANTHROPIC_VERSION.to_string())];
        if let Some(k) = key.expose() {
            headers.push(("x-api-key", k.to_string()));
        }
        HttpCall {
            url: format!("{}/messages", base_url.trim_end_matches('/')),
            headers,
            body: text(&MessagesBody {
                model: &s.model,
                max_tokens: s.max_tokens,
                // The messages API accepts [0, 1]; configs allow up to 2 for other APIs.
                temperature: s.temperature.min(1.0),
                system: conv.system,
                messages,
                tools: [Tool {
                    name: ANTHROPIC_TOOL,
                    description: "Submit the pruning plan for this iteration.",
                    input_schema: schema,
                }],
                tool_choice: json!({"type": "tool", "name": ANTHROPIC_TOOL}),
            }),
        }
    }
    fn answer(&self, body: &Value) -> Result<Answer, String> {
        let input = body["content"]
            .as_array()
            .and_then(|c| {
                c.iter()
                    .find(|b| b["type"] == "tool_use" && b["name"] == ANTHROPIC_TOOL)
            })
            .map(|b| &b["input"])
            .ok_or_else(|| {
                format!(
                    "no `{ANTHROPIC_TOOL}` tool call in the response (stop_reason {})",
                    body["stop_reason"]
                )
            })?;
        Ok(Answer {
            text: input.to_string(),
            input_tokens: tokens(&body["usage"]["input_tokens"]),
            output_tokens: tokens(&body["usage"]["output_tokens"]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemini_schema_is_openapi_shaped_and_ordered() {
        let s = gemini_schema(&plan_json_schema(Some(&["a"])).to_value());
        assert_eq!(s["type"], "OBJECT");
        assert!(s.get("additionalProperties").is_none());
        assert_eq!(
            s["propertyOrdering"],
            json!(["reasoning", "stop_pruning", "layer_decisions"])
        );
        let item = &s["properties"]["layer_decisions"]["items"];
        assert_eq!(item["type"], "OBJECT");
        assert!(item.get("additionalProperties").is_none());
        assert_eq!(item["properties"]["layer"]["enum"], json!(["a"]));
        assert_eq!(item["properties"]["delta"]["type"], "NUMBER");
        assert_eq!(item["propertyOrdering"], json!(["layer", "delta"]));
    }

    #[test]
    fn answers_are_found_or_explained() {
        let g = Gemini.answer(&json!({"promptFeedback": {"blockReason": "SAFETY"}}));
        assert_eq!(g, Err("no answer: SAFETY".into()));
        let g = Gemini
            .answer(&json!({"candidates": [{"content": {"parts": [
                {"text": "thinking", "thought": true}, {"text": "{\"a\":1}"}]}}],
                "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 3}}))
            .unwrap();
        assert_eq!((g.text.as_str(), g.output_tokens), ("{\"a\":1}", Some(3)));
        let o =
            OpenAi.answer(&json!({"choices": [{"message": {"content": null, "refusal": "no"}}]}));
        assert_eq!(o, Err("the model refused: no".into()));
        let a = Anthropic.answer(
            &json!({"content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn"}),
        );
        assert!(a.unwrap_err().contains("stop_reason \"end_turn\""));
    }
}
