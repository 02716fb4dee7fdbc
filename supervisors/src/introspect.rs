//! Introspection: OTP's `which_children` and `count_children`, and the whole tree as data for
//! the CLI, the HTTP API and the live view.

use serde::Serialize;

use crate::path::ActorPath;
use crate::spec::{ChildKind, Restart};

/// Where a child is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChildState {
    /// Running.
    Running,
    /// Exited; a restart is scheduled (waiting out a backoff or retrying a failed start).
    Restarting,
    /// Exited and not restarted (a transient child that ended normally, an ignored exit, or
    /// terminated by `terminate_child`); kept so it can be restarted by hand.
    Terminated,
}

/// One child, as `which_children` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct ChildInfo {
    /// The child's id within its supervisor.
    pub id: String,
    /// The child's stable path.
    pub path: ActorPath,
    /// Worker or supervisor.
    pub kind: ChildKind,
    /// Restart type.
    pub restart: Restart,
    /// Where it is in its life.
    pub state: ChildState,
    /// Restarts of this child so far.
    pub restarts: u32,
    /// The last exit reason, if it ever exited.
    pub last_exit: Option<String>,
    /// Milliseconds since the current incarnation started (0 if not running).
    pub uptime_ms: u64,
    /// ractor's id of the running incarnation.
    #[serde(skip)]
    pub actor: Option<ractor::ActorCell>,
}

/// OTP's `count_children`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ChildCounts {
    /// All children the supervisor knows (running or not).
    pub specs: usize,
    /// Running children.
    pub active: usize,
    /// Children that are supervisors.
    pub supervisors: usize,
    /// Children that are workers.
    pub workers: usize,
}

/// A node of the supervision tree as data.
#[derive(Debug, Clone, Serialize)]
pub struct TreeNode {
    /// Path of this node.
    pub path: ActorPath,
    /// Worker or supervisor.
    pub kind: ChildKind,
    /// The strategy, for supervisors.
    pub strategy: Option<String>,
    /// Running, restarting or terminated.
    pub state: ChildState,
    /// Restarts of this node by its supervisor.
    pub restarts: u32,
    /// The last exit reason, if any.
    pub last_exit: Option<String>,
    /// Milliseconds since the current incarnation started.
    pub uptime_ms: u64,
    /// Children, in start order.
    pub children: Vec<TreeNode>,
}

impl TreeNode {
    /// Number of nodes in this subtree, itself included.
    pub fn size(&self) -> usize {
        1 + self.children.iter().map(TreeNode::size).sum::<usize>()
    }

    /// The node at `path`, if it is in this subtree.
    pub fn find(&self, path: &str) -> Option<&TreeNode> {
        if self.path.as_str() == path {
            return Some(self);
        }
        self.children.iter().find_map(|c| c.find(path))
    }

    /// An indented text rendering, one node a line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.render_into(&mut out, 0);
        out
    }

    fn render_into(&self, out: &mut String, depth: usize) {
        use std::fmt::Write;
        let _ = write!(
            out,
            "{:indent$}{}",
            "",
            self.path.leaf(),
            indent = depth * 2
        );
        if let Some(s) = &self.strategy {
            let _ = write!(out, " ({s})");
        }
        let _ = write!(out, " [{:?}", self.state);
        if self.restarts > 0 {
            let _ = write!(out, ", {} restarts", self.restarts);
        }
        if let Some(e) = &self.last_exit {
            let _ = write!(out, ", last exit: {e}");
        }
        out.push_str("]\n");
        for c in &self.children {
            c.render_into(out, depth + 1);
        }
    }
}
