use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OperationAction {
    Create,
    Start,
    Stop,
    Kill,
    Reboot,
    Pause,
    Resume,
    Edit,
    Delete,
    AttachDisk,
    DetachDisk,
    /// Growing a disk of a running VM (the volume API starts it).
    ResizeDisk,
    SnapshotCreate,
    SnapshotRevert,
    SnapshotDelete,
    /// Importing a disk image (`target` names it); not tied to a VM.
    ImportImage,
    /// Importing a file or URL as a volume.
    ImportVolume,
    /// Exporting a volume to a file.
    ExportVolume,
    /// Copying a volume (or making a linked clone of it).
    CloneVolume,
    /// Adding a NIC to a VM (hot-plugged when it runs).
    AddNic,
    /// Removing a NIC from a VM (hot-unplugged when it runs).
    RemoveNic,
    /// Started by the daemon itself: a restart after a crash, per the VM's restart policy.
    Restart,
}

impl OperationAction {
    pub fn as_str(self) -> &'static str {
        match self {
            OperationAction::Create => "create",
            OperationAction::Start => "start",
            OperationAction::Stop => "stop",
            OperationAction::Kill => "kill",
            OperationAction::Reboot => "reboot",
            OperationAction::Pause => "pause",
            OperationAction::Resume => "resume",
            OperationAction::Edit => "edit",
            OperationAction::Delete => "delete",
            OperationAction::AttachDisk => "attach-disk",
            OperationAction::DetachDisk => "detach-disk",
            OperationAction::ResizeDisk => "resize-disk",
            OperationAction::SnapshotCreate => "snapshot-create",
            OperationAction::SnapshotRevert => "snapshot-revert",
            OperationAction::SnapshotDelete => "snapshot-delete",
            OperationAction::ImportImage => "import-image",
            OperationAction::ImportVolume => "import-volume",
            OperationAction::ExportVolume => "export-volume",
            OperationAction::CloneVolume => "clone-volume",
            OperationAction::AddNic => "add-nic",
            OperationAction::RemoveNic => "remove-nic",
            OperationAction::Restart => "restart",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OperationStatus {
    Pending,
    Running,
    Succeeded,
    Failed,
    /// Stopped on request before it finished; it left nothing behind.
    Cancelled,
}

impl OperationStatus {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            OperationStatus::Succeeded | OperationStatus::Failed | OperationStatus::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OperationStatus::Pending => "pending",
            OperationStatus::Running => "running",
            OperationStatus::Succeeded => "succeeded",
            OperationStatus::Failed => "failed",
            OperationStatus::Cancelled => "cancelled",
        }
    }
}

/// A unit of work the reconciler carries out for a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Operation {
    pub id: String,
    /// The VM the operation works on; empty for host-level work (image imports, exports).
    pub vm: String,
    /// What a host-level operation works on, e.g. `image/debian12` or `volume/default/data1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// The project of what it works on: who may see and cancel it.
    #[serde(default = "crate::vm::default_project")]
    pub project: String,
    /// How far a long operation (import, export, full clone) has got, in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<f64>,
    /// What a finished host-level operation produced (the image, the exported file...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    pub action: OperationAction,
    pub status: OperationStatus,
    /// Why the operation failed, in words that say what to do next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The class of the failure, as an API error's code: `conflict` or `quota_exceeded` when
    /// the worker found the request could not be carried out (it lost a race), otherwise
    /// `operation_failed`. Records written before codes were kept have none: see
    /// [`Operation::error_code`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<crate::ErrorCode>,
    /// Force flag of stop/delete, and the stop timeout, as the request gave them.
    #[serde(default)]
    pub force: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// Unix time in milliseconds.
    pub created_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
}

impl Operation {
    /// The code a failed operation answers its request with (`operation_failed` when the
    /// record has none).
    pub fn error_code(&self) -> crate::ErrorCode {
        self.error_code.unwrap_or(crate::ErrorCode::OperationFailed)
    }

    /// The API error a failed operation ends its request with: its code, and `context: error`.
    pub fn failure(&self, context: &str) -> crate::ApiError {
        let error = self.error.as_deref().unwrap_or("the operation failed");
        crate::ApiError::new(self.error_code(), format!("{context}: {error}"))
    }
}

/// Returned with 202 when a request asked not to wait (`?wait=false`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Accepted {
    pub operation: Operation,
}

/// What kind of thing an event reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Something the daemon did or saw (started, re-adopted, disk attached, ...).
    #[default]
    Info,
    /// The VM's observed state changed; `state` is the new one.
    State,
    /// An operation was created, started or finished; `operation` names it.
    Operation,
    /// Something went wrong without being asked for: a crash, a guest panic, a restart loop.
    Alert,
    /// Only in a stream: the subscriber was too slow and `missed` events were dropped for it.
    Lagged,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Info => "info",
            EventKind::State => "state",
            EventKind::Operation => "operation",
            EventKind::Alert => "alert",
            EventKind::Lagged => "lagged",
        }
    }
}

/// Something that happened to a VM (started, crashed, restarted, re-adopted...), newest last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    /// Unix time in milliseconds.
    pub at_ms: u64,
    /// The VM; empty for host-level events.
    pub vm: String,
    pub message: String,
    #[serde(default)]
    pub kind: EventKind,
    /// For `state` events: the new observed state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<crate::VmState>,
    /// For `operation` events: its id, action and status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<OperationAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<OperationStatus>,
    /// For `lagged` events: how many events the subscriber missed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missed: Option<u64>,
    /// The project of what the event is about (the VM's, the operation's, the network's),
    /// fixed when it happened: who may see it. Events recorded before projects were kept have
    /// none and are shown only to callers who see every project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
}

impl Event {
    /// A plain event of `kind` about `vm`.
    pub fn new(
        kind: EventKind,
        vm: impl Into<String>,
        message: impl Into<String>,
        at_ms: u64,
    ) -> Self {
        Event {
            at_ms,
            vm: vm.into(),
            message: message.into(),
            kind,
            state: None,
            operation: None,
            action: None,
            status: None,
            missed: None,
            project: None,
        }
    }

    /// The same event, about an object of `project`.
    pub fn in_project(mut self, project: Option<String>) -> Self {
        self.project = project;
        self
    }
}
