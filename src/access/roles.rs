//! Employee roles and what each may do on the admin API. One table, so a review can read every
//! permission at once; the admin server asks [`allowed`] before it does anything.

use serde::{Deserialize, Serialize};

/// A role a user can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Users, clients, policies; enabling keys (with a second admin).
    Admin,
    /// Keys on/off, policy reload.
    Operator,
    /// Approves or rejects held signing requests.
    Approver,
    /// Reads and verifies the audit log.
    Auditor,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 4] = [Role::Admin, Role::Operator, Role::Approver, Role::Auditor];

    /// The role's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Approver => "approver",
            Role::Auditor => "auditor",
        }
    }

    /// Parses a role name.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// Admin API methods and the roles that may call them. Stopping signing is open to admins and
/// operators (stopping is always safe); starting it again is admin-only and needs two of them.
pub const PERMISSIONS: &[(&str, &[Role])] = &[
    ("users.add", &[Role::Admin]),
    ("users.remove", &[Role::Admin]),
    ("users.list", &[Role::Admin]),
    ("clients.add", &[Role::Admin]),
    ("clients.list", &[Role::Admin]),
    ("clients.update", &[Role::Admin]),
    ("clients.rotate", &[Role::Admin]),
    ("clients.remove", &[Role::Admin]),
    ("policy.reload", &[Role::Admin, Role::Operator]),
    ("keys.status", &[Role::Admin, Role::Operator, Role::Auditor]),
    ("keys.disable", &[Role::Admin, Role::Operator]),
    ("keys.enable", &[Role::Admin]),
    ("approvals.list", &[Role::Approver, Role::Auditor]),
    ("approvals.approve", &[Role::Approver]),
    ("approvals.reject", &[Role::Approver]),
    ("audit.query", &[Role::Auditor, Role::Admin]),
    ("audit.verify", &[Role::Auditor, Role::Admin]),
    ("audit.stats", &[Role::Auditor, Role::Admin]),
    ("watermarks.repair", &[Role::Admin]),
    ("bitcoin.release_claim", &[Role::Admin]),
    (
        "bitcoin.transactions",
        &[Role::Admin, Role::Operator, Role::Auditor],
    ),
];

/// Whether a user holding `roles` may call `method` (unknown methods: nobody).
pub fn allowed(roles: &[Role], method: &str) -> bool {
    PERMISSIONS
        .iter()
        .find(|(m, _)| *m == method)
        .is_some_and(|(_, who)| who.iter().any(|r| roles.contains(r)))
}
