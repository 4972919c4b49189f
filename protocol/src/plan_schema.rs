//! The plan's JSON schema, as sent to LLM backends for structured output and shown in
//! the prompt.
//!
//! Two properties matter to the servers and models that read it:
//!
//! - **Portable subset.** llama.cpp server (its json-schema-to-grammar converter), vLLM
//!   (xgrammar, outlines, llguidance), Ollama and OpenAI strict mode each accept a
//!   different subset of JSON Schema. The schema uses only what all of them accept:
//!   `type`, `properties`, `required`, `additionalProperties: false`, `items` and a
//!   string `enum`. No numeric bounds on `delta`: the critic's `delta_bounds` rule and
//!   [`crate::Plan::validate`] enforce `[DELTA_MIN, DELTA_MAX]`, and a llama.cpp server
//!   refused the request outright over them. [`PlanSchema::object_mode`] is the one
//!   exception, for the servers that take the schema inside a `json_object` response
//!   format (the llama.cpp family, whose converter accepts more).
//! - **Key order.** Constrained decoders emit properties in the order the schema lists
//!   them, and the paper's order — `reasoning`, then `stop_pruning`, then
//!   `layer_decisions`; `layer` before `delta` — is what makes a model think before it
//!   decides. serde_json is built without `preserve_order` (its maps sort keys), so a
//!   schema built with `json!` came out alphabetical and models wrote their decisions
//!   first. The schema is therefore a tree of plain structs: serde serializes struct
//!   fields in declaration order whatever the map type, so the order is fixed here,
//!   locally, and the workspace's map type (which resume bit-identity and every stored
//!   JSON file depend on) stays as it is. Wire bodies that embed it must be serialized
//!   from structs too (a `serde_json::Value` would sort it again).

use serde::Serialize;

/// The plan's JSON schema. Serialize it (`serde_json::to_string`) for the wire or the
/// prompt; [`PlanSchema::to_value`] gives a `Value` for inspection, in which keys are
/// sorted again.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanSchema {
    #[serde(rename = "type")]
    kind: &'static str,
    properties: PlanProperties,
    required: [&'static str; 3],
    #[serde(rename = "additionalProperties")]
    additional_properties: bool,
    /// The run is below its target: a plan must prune something and must not stop.
    /// Not part of the schema text; [`PlanSchema::object_mode`] turns it into keywords.
    #[serde(skip)]
    progress_required: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
struct PlanProperties {
    reasoning: Typed,
    stop_pruning: StopFlag,
    layer_decisions: DecisionList,
}

/// `{"type": "boolean"}`, or `{"type": "boolean", "enum": [false]}` when a stop is
/// ruled out.
#[derive(Debug, Clone, PartialEq, Serialize)]
struct StopFlag {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(rename = "enum", skip_serializing_if = "Option::is_none")]
    only: Option<[bool; 1]>,
}

/// `{"type": …}` and nothing else.
#[derive(Debug, Clone, PartialEq, Serialize)]
struct Typed {
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
struct DecisionList {
    #[serde(rename = "type")]
    kind: &'static str,
    items: DecisionSchema,
    #[serde(rename = "minItems", skip_serializing_if = "Option::is_none")]
    min_items: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
struct DecisionSchema {
    #[serde(rename = "type")]
    kind: &'static str,
    properties: DecisionProperties,
    required: [&'static str; 2],
    #[serde(rename = "additionalProperties")]
    additional_properties: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
struct DecisionProperties {
    layer: LayerName,
    delta: Typed,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
struct LayerName {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(rename = "enum", skip_serializing_if = "Option::is_none")]
    names: Option<Vec<String>>,
}

/// Property names of a plan, in the order the schema lists (and models write) them.
pub const PLAN_KEYS: [&str; 3] = ["reasoning", "stop_pruning", "layer_decisions"];
/// Property names of one layer decision, in order.
pub const DECISION_KEYS: [&str; 2] = ["layer", "delta"];

impl PlanSchema {
    /// The layer names of the `enum`, when the schema restricts them.
    pub fn layers(&self) -> Option<&[String]> {
        self.properties
            .layer_decisions
            .items
            .properties
            .layer
            .names
            .as_deref()
    }

    /// Marks a request below its target: [`PlanSchema::object_mode`] then requires at
    /// least one decision and `stop_pruning: false`.
    pub fn with_progress_required(mut self, required: bool) -> Self {
        self.progress_required = required;
        self
    }

    /// The schema sent inside a `json_object` response format. A server that takes it
    /// there (llama.cpp server, llama-cpp-python) converts it with llama.cpp's
    /// json-schema-to-grammar, which also accepts `minItems` and a boolean `enum`; below
    /// the target they rule out the two answers the critic can only veto — an empty
    /// decision list, and a stop with nothing to keep — which a 0.5B model served there
    /// gave for every replan of an iteration until the run ended `no_acceptable_plan`.
    /// A server that refuses them falls back to plain `json_object` mode like any other
    /// refusal.
    pub fn object_mode(&self) -> PlanSchema {
        let mut s = self.clone();
        if self.progress_required {
            s.properties.stop_pruning.only = Some([false]);
            s.properties.layer_decisions.min_items = Some(1);
        }
        s
    }

    /// Compact JSON text, keys in schema order.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The schema as a `Value` (keys sorted: for inspection and for converters such as
    /// Gemini's, which restore the order from `required`).
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

/// JSON schema of [`crate::Plan`]. `layers`, when given, restricts `layer` to an enum
/// of those names: callers pass only the layers the constraints allow (a model picks
/// from the enum, and a layer the critic would drop is a wasted decision).
pub fn plan_json_schema(layers: Option<&[&str]>) -> PlanSchema {
    let string = |names| LayerName {
        kind: "string",
        names,
    };
    PlanSchema {
        kind: "object",
        properties: PlanProperties {
            reasoning: Typed { kind: "string" },
            stop_pruning: StopFlag {
                kind: "boolean",
                only: None,
            },
            layer_decisions: DecisionList {
                kind: "array",
                min_items: None,
                items: DecisionSchema {
                    kind: "object",
                    properties: DecisionProperties {
                        layer: string(layers.map(|n| n.iter().map(ToString::to_string).collect())),
                        delta: Typed { kind: "number" },
                    },
                    required: DECISION_KEYS,
                    additional_properties: false,
                },
            },
        },
        required: PLAN_KEYS,
        additional_properties: false,
        progress_required: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_in_the_papers_order() {
        let text = plan_json_schema(Some(&["x", "y"])).to_json();
        assert_eq!(
            text,
            r#"{"type":"object","properties":{"reasoning":{"type":"string"},"stop_pruning":{"type":"boolean"},"layer_decisions":{"type":"array","items":{"type":"object","properties":{"layer":{"type":"string","enum":["x","y"]},"delta":{"type":"number"}},"required":["layer","delta"],"additionalProperties":false}}},"required":["reasoning","stop_pruning","layer_decisions"],"additionalProperties":false}"#
        );
    }

    #[test]
    fn object_mode_requires_progress_below_the_target_only() {
        let s = plan_json_schema(Some(&["x"]));
        assert_eq!(s.object_mode(), s);
        let tight = s.clone().with_progress_required(true);
        // The strict schema stays portable; only the json_object copy is tightened.
        assert_eq!(tight.to_json(), s.to_json());
        assert_eq!(
            tight.object_mode().to_json(),
            r#"{"type":"object","properties":{"reasoning":{"type":"string"},"stop_pruning":{"type":"boolean","enum":[false]},"layer_decisions":{"type":"array","items":{"type":"object","properties":{"layer":{"type":"string","enum":["x"]},"delta":{"type":"number"}},"required":["layer","delta"],"additionalProperties":false},"minItems":1}},"required":["reasoning","stop_pruning","layer_decisions"],"additionalProperties":false}"#
        );
    }

    #[test]
    fn only_the_portable_subset_is_used() {
        let text = plan_json_schema(None)
            .with_progress_required(true)
            .to_json();
        for kw in [
            "minimum",
            "maximum",
            "exclusiveMinimum",
            "exclusiveMaximum",
            "multipleOf",
            "minItems",
            "maxItems",
            "pattern",
            "format",
            "$ref",
            "enum",
        ] {
            assert!(!text.contains(kw), "{kw} in {text}");
        }
        let s = plan_json_schema(Some(&["x"]));
        assert_eq!(s.layers(), Some(&["x".to_string()][..]));
        let v = s.to_value();
        let item = &v["properties"]["layer_decisions"]["items"]["properties"];
        assert_eq!(item["layer"]["enum"], serde_json::json!(["x"]));
        assert_eq!(item["delta"], serde_json::json!({"type": "number"}));
    }
}
