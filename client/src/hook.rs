//! `chkptctl hook`: a tagged checkpoint from an AI agent's hook.
//!
//! An agent runs its hooks around every prompt and tool call and waits for them, so a hook
//! must be quick and must never fail the agent: whatever goes wrong (no daemon, a folder that
//! is not watched, input it cannot read, a daemon that does not answer in time), it prints one
//! line to stderr and exits 0. It prints nothing on stdout: Claude Code adds a
//! `UserPromptSubmit` hook's stdout to the conversation.
//!
//! A save that finds nothing changed costs nothing: the daemon adds the tags to the latest
//! snapshot as a note instead of recording an empty one.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chkpt_proto::v1;
use serde_json::Value;

use crate::connect::{Client, Error};

/// The agent tag's key (the daemon's retention treats these checkpoints as automatic).
pub const AGENT_TAG: &str = "agent";
/// The longest hook input read (a `PostToolUse` carries the tool's whole response).
const MAX_INPUT: u64 = 64 << 20;
/// The longest message kept from a prompt's first line, in characters.
const PROMPT_CHARS: usize = 80;

/// When in an agent's turn a checkpoint is taken; the `phase` tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    /// The session started.
    Start,
    /// A prompt was submitted, before the agent works on it.
    Prompt,
    /// Before a tool runs.
    PreTool,
    /// After a tool ran.
    PostTool,
    /// The agent finished its turn.
    Stop,
}

impl Phase {
    /// The tag value; the daemon's `session:ID^` reads `post-tool` and `stop` as "after the
    /// agent acted".
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Start => "start",
            Phase::Prompt => "prompt",
            Phase::PreTool => "pre-tool",
            Phase::PostTool => "post-tool",
            Phase::Stop => "stop",
        }
    }
}

/// What a hook knows about the moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// The agent, e.g. `claude-code`.
    pub agent: String,
    /// The agent's session id.
    pub session: String,
    /// The phase; none for an event the hook does not know.
    pub phase: Option<Phase>,
    /// The event's own name when it is not a known phase.
    pub event: String,
    /// The tool about to run or that ran.
    pub tool: String,
    /// The prompt's first line.
    pub prompt: String,
    /// The agent's working directory: the workspace to checkpoint.
    pub cwd: Option<PathBuf>,
}

impl Facts {
    /// Reads a Claude Code hook's JSON input.
    pub fn from_claude_code(input: &str) -> Result<Facts, String> {
        let v: Value =
            serde_json::from_str(input).map_err(|e| format!("hook input is not JSON: {e}"))?;
        let text = |key: &str| v.get(key).and_then(Value::as_str).unwrap_or("").to_owned();
        let event = text("hook_event_name");
        let phase = match event.as_str() {
            "SessionStart" => Some(Phase::Start),
            "UserPromptSubmit" => Some(Phase::Prompt),
            "PreToolUse" => Some(Phase::PreTool),
            "PostToolUse" | "PostToolUseFailure" => Some(Phase::PostTool),
            "Stop" | "SubagentStop" => Some(Phase::Stop),
            _ => None,
        };
        let cwd = text("cwd");
        Ok(Facts {
            agent: "claude-code".into(),
            session: text("session_id"),
            phase,
            event,
            tool: text("tool_name"),
            prompt: first_line(&text("prompt")),
            cwd: (!cwd.is_empty()).then(|| PathBuf::from(cwd)),
        })
    }

    /// The snapshot's message.
    pub fn message(&self) -> String {
        let tool = if self.tool.is_empty() {
            "a tool"
        } else {
            &self.tool
        };
        match self.phase {
            Some(Phase::Start) => format!("{} session start", self.agent),
            Some(Phase::Prompt) if self.prompt.is_empty() => "prompt".to_owned(),
            Some(Phase::Prompt) => format!("prompt: {}", self.prompt),
            Some(Phase::PreTool) => format!("before {tool}"),
            Some(Phase::PostTool) => format!("after {tool}"),
            Some(Phase::Stop) => format!("{} finished its turn", self.agent),
            None if self.event.is_empty() => format!("{} hook", self.agent),
            None => format!("{} {}", self.agent, self.event),
        }
    }

    /// The snapshot's tags: agent, session, phase, tool (those known).
    pub fn tags(&self) -> Vec<v1::Tag> {
        let phase = match self.phase {
            Some(p) => p.as_str().to_owned(),
            None => self.event.clone(),
        };
        [
            (AGENT_TAG, self.agent.as_str()),
            ("session", self.session.as_str()),
            ("phase", phase.as_str()),
            ("tool", self.tool.as_str()),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| v1::Tag {
            key: k.to_owned(),
            // Tag values are at most 256 bytes and hold no control characters.
            value: clip(&v.replace(char::is_control, " "), 256),
        })
        .collect()
    }
}

/// The first non-empty line, at most [`PROMPT_CHARS`] characters.
fn first_line(text: &str) -> String {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let mut out: String = line.chars().take(PROMPT_CHARS).collect();
    if line.chars().count() > PROMPT_CHARS {
        out.push('…');
    }
    out
}

/// `text` cut to at most `max` bytes on a character boundary.
fn clip(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// Reads the hook's standard input (bounded).
pub fn read_stdin() -> Result<String, String> {
    let mut input = String::new();
    std::io::stdin()
        .take(MAX_INPUT)
        .read_to_string(&mut input)
        .map_err(|e| format!("cannot read the hook input: {e}"))?;
    Ok(input)
}

/// Takes the checkpoint, within `timeout` in all. Every failure is one line for stderr.
pub async fn checkpoint(
    socket: &Path,
    facts: &Facts,
    fallback_cwd: &Path,
    timeout: Duration,
) -> Result<v1::SaveResponse, String> {
    let cwd = facts.cwd.as_deref().unwrap_or(fallback_cwd);
    let workspace = std::path::absolute(cwd)
        .map_err(|e| format!("cannot resolve {}: {e}", cwd.display()))?
        .to_string_lossy()
        .into_owned();
    let req = v1::SaveRequest {
        workspace,
        message: facts.message(),
        pin: false,
        tags: facts.tags(),
        allow_empty: false,
    };
    let call = async {
        let mut client = Client::connect(socket).await?;
        client.save(req).await
    };
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(saved)) => Ok(saved),
        Ok(Err(e)) => Err(describe(&e)),
        Err(_) => Err(format!(
            "chkptd did not answer within {} ms; no checkpoint waited for (the daemon may \
             still take it)",
            timeout.as_millis()
        )),
    }
}

/// The error as the hook's one line.
fn describe(e: &Error) -> String {
    e.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claude_code_input_becomes_facts_tags_and_a_message() {
        let f = Facts::from_claude_code(
            r#"{"session_id":"abc-123","transcript_path":"/t.jsonl","cwd":"/w/p",
                "hook_event_name":"PreToolUse","tool_name":"Bash",
                "tool_input":{"command":"rm -rf build"}}"#,
        )
        .unwrap();
        assert_eq!(f.phase, Some(Phase::PreTool));
        assert_eq!(f.cwd.as_deref(), Some(Path::new("/w/p")));
        assert_eq!(f.message(), "before Bash");
        let tags: Vec<String> = f
            .tags()
            .iter()
            .map(|t| format!("{}={}", t.key, t.value))
            .collect();
        assert_eq!(
            tags,
            [
                "agent=claude-code",
                "session=abc-123",
                "phase=pre-tool",
                "tool=Bash"
            ]
        );
        let p = Facts::from_claude_code(
            r#"{"session_id":"s","cwd":"/w","hook_event_name":"UserPromptSubmit",
                "prompt":"\n  Fix the flaky test in ci.rs  \nthen run it\u0007"}"#,
        )
        .unwrap();
        assert_eq!(p.message(), "prompt: Fix the flaky test in ci.rs");
        assert!(p.tags().iter().all(|t| t.key != "tool"));
        let long = format!(
            r#"{{"hook_event_name":"UserPromptSubmit","prompt":"{}"}}"#,
            "é".repeat(200)
        );
        let l = Facts::from_claude_code(&long).unwrap();
        assert_eq!(l.prompt.chars().count(), PROMPT_CHARS + 1);
        let odd = Facts::from_claude_code(r#"{"hook_event_name":"Notification"}"#).unwrap();
        assert_eq!(odd.phase, None);
        assert_eq!(odd.message(), "claude-code Notification");
        assert!(Facts::from_claude_code("not json").is_err());
    }
}
